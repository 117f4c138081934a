"""`moelab export CKPT OUT [--dtype bfloat16] [--max-shard-size 5GB]`: a transformers/vLLM directory.

CKPT is a moelab checkpoint, a run directory (its latest) or an HF directory. OUT gets
config.json, safetensors (sharded past --max-shard-size, with an index), tokenizer files with
the family's chat template, and generation_config.json. A config the target family cannot
express is refused with the reason (exit code 2) and nothing is written.
"""

from __future__ import annotations

import argparse
import re
import sys

_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
}


def parse_size(text: str) -> int:
    """'5GB' → 5_000_000_000, '200MiB' → 209_715_200, '1000' → 1000."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not m or m[2].upper() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 5GB, 200MiB)")
    return int(float(m[1]) * _UNITS[m[2].upper()])


def _run(args: argparse.Namespace) -> int:
    from moelab.checkpoint.export import export_hf, read_config
    from moelab.checkpoint.hf import CheckpointError
    from moelab.checkpoint.hf_config import UnsupportedConfigError
    from moelab.infer.chat import jinja_source

    try:
        family = read_config(args.ckpt).family
        out = export_hf(
            args.ckpt,
            args.out,
            dtype=args.dtype,
            max_shard_bytes=args.max_shard_size,
            tokenizer=args.tokenizer,
            chat_template=None if args.no_chat_template else jinja_source(family),
        )
    except (UnsupportedConfigError, CheckpointError, FileNotFoundError, ValueError) as err:
        print(f"moelab export: {err}", file=sys.stderr)
        return 2
    files = sorted(p.name for p in out.iterdir())
    print(f"wrote {out} ({family}, {args.dtype}): {', '.join(files)}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="write a Hugging Face directory (transformers, vLLM)")
    p.add_argument("ckpt", help="moelab checkpoint, run directory or HF directory")
    p.add_argument("out", help="output directory (replaced atomically)")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--max-shard-size", type=parse_size, default=parse_size("5GB"))
    p.add_argument("--tokenizer", default=None, help="tokenizer.json or its directory")
    p.add_argument("--no-chat-template", action="store_true", help="write no chat_template")
    p.set_defaults(func=_run)
