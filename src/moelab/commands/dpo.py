"""`moelab dpo CONFIG.yaml [key=value ...] [--resume auto|CKPT]`: DPO on preference pairs."""

from __future__ import annotations

import argparse
import sys

from moelab.commands.train import print_last

METRICS = ("reward_margin", "reward_accuracy", "logp_chosen", "logp_rejected")


def _dpo(args: argparse.Namespace) -> int:
    from moelab.checkpoint.hf import CheckpointError
    from moelab.posttrain.config import DPOConfig, load_config
    from moelab.posttrain.data import DataError
    from moelab.posttrain.dpo import train_dpo

    cfg = load_config(DPOConfig, args.config, args.overrides)
    try:
        summary = train_dpo(cfg, resume=args.resume)
    except (DataError, CheckpointError, FileNotFoundError) as err:
        print(f"moelab dpo: {err}", file=sys.stderr)
        return 2
    return print_last(cfg, summary, METRICS)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "dpo", help="direct preference optimization on (prompt, chosen, rejected) JSONL"
    )
    p.add_argument("config", help="a DPO config YAML (see configs/posttrain/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. dpo.beta=0.1 max_steps=50")
    p.add_argument(
        "--resume",
        default=None,
        help="'auto' resumes from the newest good checkpoint in out_dir; or a checkpoint directory",
    )
    p.set_defaults(func=_dpo)
