"""`moelab serve CKPT [--config YAML] [key=value ...]`: an OpenAI-compatible server under uvicorn.

Binds 127.0.0.1:8000 by default (``host=0.0.0.0`` to expose it). The API key comes from the
config's ``api_key`` or the ``MOELAB_API_KEY`` environment variable. Needs the ``serve`` extra.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def build_app(ckpt: str, cfg):
    """Load the model and tokenizer named by ``ckpt`` and ``cfg``; return (app, model name)."""
    from moelab.infer.loading import load_generator
    from moelab.infer.server import create_app

    gen = load_generator(
        ckpt,
        tokenizer=cfg.tokenizer,
        device=cfg.device,
        dtype=cfg.dtype,
        max_batch=cfg.max_batch,
        max_len=cfg.cache_len(),
    )
    name = cfg.model_name or Path(ckpt).resolve().name
    return create_app(gen, cfg, name), name


def _run(args: argparse.Namespace) -> int:
    from moelab.infer.config import ServeConfig

    if args.config:
        cfg = ServeConfig.from_yaml(args.config, args.overrides)
    else:
        cfg = ServeConfig.from_dict({}, args.overrides)
    if cfg.api_key is None and os.environ.get("MOELAB_API_KEY"):
        cfg.api_key = os.environ["MOELAB_API_KEY"]
    try:
        import uvicorn
    except ImportError:
        print("moelab serve needs uvicorn: pip install 'moelab[serve]'", file=sys.stderr)
        return 2
    try:
        app, name = build_app(args.ckpt, cfg)
    except (ValueError, FileNotFoundError) as err:
        print(f"moelab serve: {err}", file=sys.stderr)
        return 2
    print(f"serving {name!r} on http://{cfg.host}:{cfg.port}/v1", file=sys.stderr)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API")
    p.add_argument("ckpt", help="HF directory, moelab checkpoint or run directory")
    p.add_argument("--config", default=None, help="ServeConfig YAML (configs/serve/default.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. port=8080 limits.max_n=4")
    p.set_defaults(func=_run)
