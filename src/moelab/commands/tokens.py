"""`moelab tokens ...`: train a demo tokenizer, tokenize documents into shards, check shards.

    moelab tokens train-tokenizer [CONFIG.yaml] docs_dir=DOCS out_dir=TOK vocab_size=4096
    moelab tokens tokenize [CONFIG.yaml] docs_dir=DOCS out_dir=SHARDS tokenizer=TOK workers=2
    moelab tokens check SHARDS/train [--tokenizer TOK] [--vocab-size N]

Configs are optional: dotted ``key=value`` overrides alone are enough. Heavy work is imported
inside each command so that ``moelab --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from moelab.config import Config


def _load(cls: type[Config], args: argparse.Namespace) -> Config:
    """A config from an optional YAML file plus overrides (the first item may be the file)."""
    items = list(args.items)
    if items and "=" not in items[0]:
        return cls.from_yaml(items[0], items[1:])
    return cls.from_dict({}, items)


def _train_tokenizer(args: argparse.Namespace) -> int:
    from moelab.tokens.config import TrainTokenizerConfig
    from moelab.tokens.pipeline import train_tokenizer

    tk = train_tokenizer(_load(TrainTokenizerConfig, args))
    print(json.dumps(tk.describe(), indent=2))
    return 0


def _tokenize(args: argparse.Namespace) -> int:
    from moelab.tokens.config import TokenizeConfig
    from moelab.tokens.pipeline import tokenize

    print(json.dumps(tokenize(_load(TokenizeConfig, args)), indent=2))
    return 0


def _check(args: argparse.Namespace) -> int:
    from moelab.tokens.shards import ShardError, validate_shards
    from moelab.tokens.tokenizer import Tokenizer

    expected = Tokenizer.from_file(args.tokenizer).hash if args.tokenizer else None
    try:
        meta = validate_shards(Path(args.shards), expected, args.vocab_size)
    except ShardError as err:
        print(f"moelab: {err}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                "directory": str(meta.directory),
                "tokenizer_hash": meta.tokenizer_hash,
                "vocab_size": meta.vocab_size,
                "num_tokens": meta.num_tokens,
                "num_docs": meta.num_docs,
                "num_shards": len(meta.shards),
            },
            indent=2,
        )
    )
    return 0


def add_tokenize(subparsers: argparse._SubParsersAction) -> None:
    """`tokenize` on any command group (`moelab tokens tokenize` and `moelab data tokenize`)."""
    tok = subparsers.add_parser(
        "tokenize", help="documents (JSONL) -> train/validation token shards"
    )
    tok.add_argument(
        "items", nargs="*", help="an optional CONFIG.yaml, then dotted overrides key=value"
    )
    tok.set_defaults(func=_tokenize)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    tokens = subparsers.add_parser("tokens", help="tokenizers and token shards")
    sub = tokens.add_subparsers(dest="tokens_command", metavar="SUBCOMMAND")
    items_help = "an optional CONFIG.yaml, then dotted overrides key=value"

    train = sub.add_parser("train-tokenizer", help="train a byte-level BPE on documents")
    train.add_argument("items", nargs="*", help=items_help)
    train.set_defaults(func=_train_tokenizer)

    add_tokenize(sub)

    check = sub.add_parser("check", help="validate a shard folder before training")
    check.add_argument("shards", help="a shard folder, e.g. shards/train")
    check.add_argument("--tokenizer", help="tokenizer.json (or folder) the run will use")
    check.add_argument("--vocab-size", type=int, help="the model's vocab_size")
    check.set_defaults(func=_check)

    tokens.set_defaults(func=lambda _args: tokens.print_help() or 2)
