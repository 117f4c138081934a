"""`moelab train CONFIG.yaml [key=value ...] [--resume auto|CKPT]`: the single-device trainer."""

from __future__ import annotations

import argparse
import json
import os


def _train(args: argparse.Namespace) -> int:
    from moelab.train.config import TrainConfig
    from moelab.train.trainer import train

    cfg = TrainConfig.from_yaml(args.config, args.overrides)
    return print_last(cfg, train(cfg, resume=args.resume))


def print_last(cfg, summary: dict, extra: tuple[str, ...] = ()) -> int:
    """Print the last step's main numbers as JSON (rank 0 only); shared by train, sft and dpo."""
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    last = summary["last"]
    if last is None:
        print(f"nothing to do: already at max_steps ({cfg.max_steps}) in {cfg.out_dir}")
        return 0
    keys = ("step", "tokens", "loss", *extra, "lr", "grad_norm")
    print(json.dumps({k: last[k] for k in keys if k in last}))
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a model from token shards")
    p.add_argument("config", help="a TrainConfig YAML (see configs/train/)")
    p.add_argument(
        "overrides", nargs="*", help="dotted overrides, e.g. model.moe.top_k=4 max_steps=50"
    )
    p.add_argument(
        "--resume",
        default=None,
        help="'auto' resumes from the newest good checkpoint in out_dir (falling back past bad ones); "
        "or a checkpoint directory",
    )
    p.set_defaults(func=_train)
