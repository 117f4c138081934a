"""`moelab sft CONFIG.yaml [key=value ...] [--resume auto|CKPT]`: supervised fine-tuning on chats."""

from __future__ import annotations

import argparse
import sys

from moelab.commands.train import print_last


def _sft(args: argparse.Namespace) -> int:
    from moelab.checkpoint.hf import CheckpointError
    from moelab.posttrain.config import SFTConfig, load_config
    from moelab.posttrain.data import DataError
    from moelab.posttrain.sft import train_sft

    cfg = load_config(SFTConfig, args.config, args.overrides)
    try:
        summary = train_sft(cfg, resume=args.resume)
    except (DataError, CheckpointError, FileNotFoundError) as err:
        print(f"moelab sft: {err}", file=sys.stderr)
        return 2
    return print_last(cfg, summary, ("trained_frac",))


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sft", help="supervised fine-tuning on chat JSONL (loss on assistant tokens only)"
    )
    p.add_argument("config", help="an SFT config YAML (see configs/posttrain/)")
    p.add_argument(
        "overrides", nargs="*", help="dotted overrides, e.g. max_steps=50 data.on_error=skip"
    )
    p.add_argument(
        "--resume",
        default=None,
        help="'auto' resumes from the newest good checkpoint in out_dir; or a checkpoint directory",
    )
    p.set_defaults(func=_sft)
