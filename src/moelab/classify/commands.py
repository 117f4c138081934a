"""``train-classifier``: the command that trains a stage-3 n-gram classifier.

    moelab data train-classifier [CONFIG.yaml] docs=LABELLED out_dir=MODEL label_field=label
    python -m moelab.classify train-classifier ...   (the same)

``add_train_classifier(subparsers)`` registers the command on any argparse subparsers object,
so the ``data`` command group adds it with one call.
"""

from __future__ import annotations

import argparse
import json


def _run(args: argparse.Namespace) -> int:
    from moelab.classify.train import TrainClassifierConfig, train_classifier

    items = list(args.items)
    if items and "=" not in items[0]:
        cfg = TrainClassifierConfig.from_yaml(items[0], items[1:])
    else:
        cfg = TrainClassifierConfig.from_dict({}, items)
    report = train_classifier(cfg)
    summary = {k: report[k] for k in ("labels", "train_docs", "hash")}
    if "heldout" in report:
        summary["heldout_accuracy"] = round(report["heldout"]["accuracy"], 2)
    else:
        summary["heldout_line_f1"] = {
            k: round(v["f1"], 2) for k, v in report["heldout_line_f1"].items()
        }
    print(json.dumps(summary, indent=2))
    return 0


def add_train_classifier(subparsers: argparse._SubParsersAction) -> None:
    cmd = subparsers.add_parser(
        "train-classifier", help="train an n-gram classifier on labelled JSONL"
    )
    cmd.add_argument("items", nargs="*", help="an optional CONFIG.yaml, then dotted overrides")
    cmd.set_defaults(func=_run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moelab.classify")
    add_train_classifier(parser.add_subparsers(dest="command", metavar="COMMAND"))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args))
