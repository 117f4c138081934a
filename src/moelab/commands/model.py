"""`moelab model info PRESET|CONFIG.yaml [key=value ...] [--json]`: a config and its parameter counts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from moelab.model.config import ModelConfig
from moelab.model.presets import PRESETS


def load_model_config(source: str, overrides: list[str]) -> ModelConfig:
    """A preset name or a YAML file (whose top level is a ModelConfig or has a `model:` key)."""
    if source in PRESETS:
        return ModelConfig.from_dict({"preset": source}, overrides)
    path = Path(source)
    if path.suffix in (".yaml", ".yml") or path.exists():
        import yaml

        from moelab.config import ConfigError

        if not path.exists():
            raise ConfigError("", f"config file not found: {path}")
        data = yaml.safe_load(path.read_text()) or {}
        if isinstance(data, dict) and isinstance(data.get("model"), dict):
            data = data["model"]
        return ModelConfig.from_dict(data, overrides)
    from moelab.config import ConfigError

    raise ConfigError("", f"{source!r} is neither a preset ({', '.join(PRESETS)}) nor a YAML file")


def _info(args: argparse.Namespace) -> int:
    cfg = load_model_config(args.source, args.overrides)
    total, active = cfg.num_params(), cfg.num_active_params()
    if args.json:
        print(
            json.dumps(
                {"config": cfg.to_dict(), "num_params": total, "num_active_params": active},
                indent=2,
            )
        )
        return 0
    print(cfg.to_yaml().rstrip())
    print(
        f"# parameters: {total:,} total, {active:,} active per token "
        f"({total / 1e9:.3f}B / {active / 1e9:.3f}B)"
    )
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    model = subparsers.add_parser("model", help="inspect model configs and presets")
    sub = model.add_subparsers(dest="model_command", metavar="SUBCOMMAND")
    info = sub.add_parser("info", help="print a model config and its parameter counts")
    info.add_argument("source", help=f"a preset ({', '.join(PRESETS)}) or a YAML file")
    info.add_argument("overrides", nargs="*", help="dotted overrides, e.g. moe.top_k=4")
    info.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    info.set_defaults(func=_info)
    model.set_defaults(func=lambda _args: model.print_help() or 2)
