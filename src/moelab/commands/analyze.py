"""`moelab analyze CKPT_DIR [CKPT ...] --data SHARDS [--out DIR]`: OLMoE-style routing report.

CKPT_DIR is a training run directory (every ``step_*`` checkpoint is analysed, oldest first) or
one or more moelab checkpoint / HF directories in training order (the last is the "final" one).
``--docs`` names the documents folder the shards were tokenized from, to label tokens with their
domain; ``--data-run`` names a data run directory whose funnel joins the report (its ``docs/``
is used for domains when ``--docs`` is not given; a ``stage3_eval.json`` in it, which the demo
writes from the synthetic gold, adds a data-quality section). Writes ``sample.npz``, ``routing/*.npz``,
``metrics.json``, ``plots/*.png`` and a self-contained ``report.html`` under ``--out``.

``analyze_run`` is the same as a function (the demo calls it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

QUALITY_FILE = "stage3_eval.json"
"""Stage 3 scored against labels, in a data run directory (written by the demo)."""


def _funnel(data_run_dir: Path) -> list[dict]:
    from moelab.data.funnel import load_funnel

    return [{"step": step} | st.to_dict() for step, st in load_funnel(data_run_dir)]


def analyze_run(
    run_dir: str | Path | list[str | Path],
    shards: str | Path,
    out_dir: str | Path,
    *,
    docs_dir: str | Path | None = None,
    data_run_dir: str | Path | None = None,
    tokenizer: str | Path | None = None,
    config=None,
    device: str = "cpu",
    dtype: str | None = None,
    log=print,
) -> Path:
    """Routing analysis of a run (or of checkpoints in training order); returns report.html.

    Args:
        run_dir: a training run directory, or a list of checkpoint / HF directories.
        shards: the token shard folder the fixed sample is drawn from.
        out_dir: where sample, traces, metrics.json, plots and report.html go.
        docs_dir: documents the shards were tokenized from (domain labels).
        data_run_dir: a data run directory: its funnel joins the report; its docs/ give
            the domain labels when ``docs_dir`` is not given.
        tokenizer: tokenizer.json (or folder) to print expert top tokens as text.
        config: an ``AnalysisConfig`` (default settings when None).
        device, dtype: where and in which precision checkpoints run (bfloat16 for big ones).
    """
    from moelab.analysis.run import run_analysis

    paths = [run_dir] if isinstance(run_dir, str | Path) else list(run_dir)
    funnel = quality = None
    if data_run_dir is not None:
        funnel = _funnel(Path(data_run_dir))
        if (Path(data_run_dir) / QUALITY_FILE).is_file():
            quality = json.loads((Path(data_run_dir) / QUALITY_FILE).read_text())
        if docs_dir is None and (Path(data_run_dir) / "docs").is_dir():
            docs_dir = Path(data_run_dir) / "docs"
    metrics_file = Path(paths[0]) / "metrics.jsonl"
    return run_analysis(
        paths,
        shards,
        out_dir,
        cfg=config,
        docs_dir=docs_dir,
        tokenizer=tokenizer,
        training_metrics=metrics_file if metrics_file.is_file() else None,
        funnel=funnel,
        data_quality=quality,
        device=device,
        dtype=dtype,
        log=log,
    )


def _run(args: argparse.Namespace) -> int:
    from moelab.analysis.config import AnalysisConfig
    from moelab.checkpoint.hf import CheckpointError
    from moelab.tokens.shards import ShardError

    if args.config:
        cfg = AnalysisConfig.from_yaml(args.config, args.set)
    else:
        cfg = AnalysisConfig.from_dict({}, args.set)
    out = Path(args.out or Path(args.ckpt[0]) / "analysis")
    try:
        page = analyze_run(
            args.ckpt, args.data, out, docs_dir=args.docs, data_run_dir=args.data_run,
            tokenizer=args.tokenizer, config=cfg, device=args.device, dtype=args.dtype,
            log=lambda m: print(f"  {m}"),
        )  # fmt: skip
    except (ValueError, FileNotFoundError, ShardError, CheckpointError) as err:
        print(f"moelab analyze: {err}", file=sys.stderr)
        return 2
    print(f"metrics: {out / 'metrics.json'}\nreport:  {page}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("analyze", help="routing analysis across checkpoints (HTML report)")
    p.add_argument("ckpt", nargs="+", help="run directory, or checkpoint/HF dirs in training order")
    p.add_argument("--data", required=True, help="token shard folder to draw the sample from")
    p.add_argument("--out", default=None, help="output folder (default: CKPT_DIR/analysis)")
    p.add_argument("--docs", default=None, help="documents folder the shards came from (domains)")
    p.add_argument("--data-run", default=None, help="data run directory (funnel, and docs/)")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json or folder (token texts)")
    p.add_argument("--config", default=None, help="AnalysisConfig YAML (configs/analysis/)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    p.set_defaults(func=_run)
