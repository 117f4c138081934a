"""The `moelab` command line: one subcommand per stage.

Each stage lives in its own module that exposes ``add_parser(subparsers)``; the parser sets
``func`` to a callable taking the parsed args and returning an exit code. Stage modules are
imported only when listed here, and import their heavy dependencies (torch, transformers)
inside the command that needs them so that ``moelab --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from moelab import __version__
from moelab.config import ConfigError

# name -> module providing add_parser(subparsers). Order is the order shown in --help.
STAGE_COMMANDS: dict[str, str] = {
    "demo": "moelab.commands.demo",
    "model": "moelab.commands.model",
    "data": "moelab.commands.data",
    "tokens": "moelab.commands.tokens",
    "generate": "moelab.commands.generate",
    "serve": "moelab.commands.serve",
    "export": "moelab.commands.export",
    "eval": "moelab.commands.eval",
    "analyze": "moelab.commands.analyze",
    "train": "moelab.commands.train",
    "sft": "moelab.commands.sft",
    "dpo": "moelab.commands.dpo",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moelab",
        description="Build, train, serve and analyse Mixture-of-Experts language models.",
    )
    parser.add_argument("--version", action="version", version=f"moelab {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in STAGE_COMMANDS.values():
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ConfigError as err:
        print(f"moelab: config error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("moelab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
