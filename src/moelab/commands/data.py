"""`moelab data {run,stats,synth,eval}`: the web data pipeline (stages 1–3 of dots.llm1).

    moelab data run CONFIG.yaml [key=value ...] [--executor local|ray] [--workers N]
    moelab data stats RUN_DIR [--json]
    moelab data synth OUT --pages N --seed S [--labelled N]
    moelab data eval RUN_DIR --truth OUT/truth.jsonl [--json]
    moelab data train-classifier [CONFIG.yaml] docs=LABELLED out_dir=MODEL   (stage 3)
    moelab data tokenize [CONFIG.yaml] docs_dir=DOCS out_dir=SHARDS tokenizer=TOK   (= moelab tokens tokenize)

Heavy imports (trafilatura, fastText, Ray) happen inside the command that needs them.
"""

from __future__ import annotations

import argparse
import json


def _run(args: argparse.Namespace) -> int:
    from moelab.data.config import DataConfig
    from moelab.data.funnel import format_funnel, load_funnel
    from moelab.data.runner import run_pipeline

    cfg = DataConfig.from_yaml(args.config, args.overrides)
    run_dir = run_pipeline(cfg, executor=args.executor, workers=args.workers)
    print(format_funnel(load_funnel(run_dir)))
    print(f"[data] done: {run_dir}/docs")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from moelab.data.funnel import format_funnel, load_funnel

    funnel = load_funnel(args.run_dir)
    if not funnel:
        print(f"no stats under {args.run_dir}/stats")
        return 1
    if args.json:
        print(json.dumps([{"step": s, **st.to_dict()} for s, st in funnel], indent=1))
    else:
        print(format_funnel(funnel))
    return 0


def _synth(args: argparse.Namespace) -> int:
    from moelab.data.synth.web import SynthConfig, write_synthetic_web

    summary = write_synthetic_web(
        args.out,
        SynthConfig(
            pages=args.pages, seed=args.seed, files=args.files, labelled_pages=args.labelled
        ),
    )
    print(json.dumps(summary, indent=1))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from moelab.data.synth.evaluate import evaluate_run, evaluate_stage3, format_report

    report = evaluate_run(args.run_dir, args.truth)
    stage3 = evaluate_stage3(args.run_dir, args.truth)
    if args.json:
        print(json.dumps(report | ({"stage3": stage3} if stage3 else {}), indent=1))
        return 0
    print(format_report(report))
    for step, r in stage3.items():
        if step.startswith("mixture"):
            print(f"stage 3 {step}: {r}")
        else:
            print(
                f"stage 3 {step}: removed {r['removed']}, precision {r['precision']}, "
                f"recall {r['recall']} (of {r['expected']} that reached it)"
            )
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="web data pipeline: raw pages → clean documents")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    run = sub.add_parser("run", help="run (or resume) a pipeline from a YAML config")
    run.add_argument("config")
    run.add_argument("overrides", nargs="*", help="dotted overrides, e.g. workers=4")
    run.add_argument("--executor", choices=["local", "ray"], default=None)
    run.add_argument("--workers", type=int, default=None)
    run.set_defaults(func=_run)

    stats = sub.add_parser("stats", help="print the funnel of a run directory")
    stats.add_argument("run_dir")
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(func=_stats)

    synth = sub.add_parser("synth", help="write a synthetic web crawl (WARC) with ground truth")
    synth.add_argument("out")
    synth.add_argument("--pages", type=int, default=1000)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--files", type=int, default=4, help="number of WARC files (shards)")
    synth.add_argument(
        "--labelled",
        type=int,
        default=0,
        help="pages of a separate labelled split for stage 3 (OUT/labelled/*.jsonl)",
    )
    synth.set_defaults(func=_synth)

    ev = sub.add_parser("eval", help="score a run on a synthetic crawl against its ground truth")
    ev.add_argument("run_dir")
    ev.add_argument("--truth", required=True, help="truth.jsonl written by `data synth`")
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(func=_eval)

    from moelab.classify.commands import add_train_classifier

    add_train_classifier(sub)  # stage 3: page-type / quality / category / clutter models

    from moelab.commands.tokens import add_tokenize

    add_tokenize(
        sub
    )  # the hand-off to training, as the issue names it (same as `moelab tokens tokenize`)

    data.set_defaults(func=lambda _args: data.print_help() or 2)
