"""Stage-3 CPU classifier throughput: the n-gram backend on one core.

    python -P benchmarks/classify_bench.py [--pages 800] [--rounds 5]
        [--out benchmarks/results/classify_cpu.json]

On the synthetic web's labelled split (``moelab data synth --labelled``; pages extracted with
trafilatura, so texts look like the pipeline's), measured in one process, round-robin, with
numpy pinned to one thread:

* page-type model (5 classes, whole pages): training CPU seconds, held-out accuracy, and
  prediction documents/s per core in the step's batches of 64, next to featurization alone
  (regex words + hashing), to show where the time goes;
* the clutter line scorer (learned, layout pseudo-words) and the rule baseline: lines/s;
* the transformers backend (``TransformersClassifier``, batches of 64, 512 tokens, bf16) on the
  same pages, docs/s on a GPU when one is present: a local model with ``--hf-model DIR`` (the
  real 1.5B classifiers), else a randomly initialised BERT-base-shaped one (no download).
  Without CUDA this part is recorded as skipped, unless ``--hf-device cpu`` asks for it (with
  ``--hf-shape tiny`` that checks the plumbing in seconds; its rate means nothing).

(fastText's trainer would be the natural reference, but only ``fasttext-predict`` is installed
here, and scikit-learn is not: no third-party trainer to compare with.)

Rates are CPU seconds (``time.process_time``), which hold up better than wall time on a shared
machine; the load average is recorded. Prints a table and writes JSON.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from moelab.classify.base import TransformersClassifier  # noqa: E402
from moelab.classify.clutter import HeuristicLineScorer, LearnedLineScorer  # noqa: E402
from moelab.classify.ngram import NgramClassifier, NgramConfig, featurize  # noqa: E402
from moelab.classify.train import _held_out  # noqa: E402
from moelab.common.device import cpu_name  # noqa: E402
from moelab.data.document import read_documents  # noqa: E402
from moelab.data.synth.labelled import write_labelled_split  # noqa: E402


def _cpu(fn, *args):
    start = time.process_time()
    out = fn(*args)
    return time.process_time() - start, out


def _batched(predict, texts: list[str], batch: int = 64) -> list[str]:
    labels: list[str] = []
    for i in range(0, len(texts), batch):
        labels += predict(texts[i : i + batch])
    return labels


SHAPES = {  # BERT-base, and a toy for checking the code path on a CPU
    "base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12},
    "tiny": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2},
}


def _random_hf_classifier(directory: Path, texts: list[str], labels: list[str], shape: str) -> Path:
    """A randomly initialised BERT sequence classifier with a BPE trained on ``texts``."""
    import torch
    import transformers

    from moelab.tokens.tokenizer import EOT, train_bpe

    torch.manual_seed(0)
    tok = train_bpe(texts, 8192, special_tokens=(EOT, "<pad>"))
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok.hf, pad_token="<pad>", eos_token=EOT
    )
    fast.save_pretrained(str(directory))
    dims = SHAPES[shape]
    config = transformers.BertConfig(
        vocab_size=tok.vocab_size,
        intermediate_size=4 * dims["hidden_size"],
        max_position_embeddings=512,
        pad_token_id=tok.hf.token_to_id("<pad>"),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        **dims,
    )
    transformers.BertForSequenceClassification(config).save_pretrained(str(directory))
    return directory


def transformers_rate(
    texts: list[str], labels: list[str], args: argparse.Namespace, work: Path
) -> dict[str, object]:
    """Wall-clock docs/s of the transformers backend (best of ``rounds``), or why it was skipped."""
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as err:
        return {"skipped": f"not installed: {err.name}"}
    device = args.hf_device or ("cuda" if torch.cuda.is_available() else None)
    if device is None:
        return {"skipped": "no CUDA device in this run (pass --hf-device cpu to force)"}
    directory = Path(args.hf_model) if args.hf_model else None
    if directory is None:
        directory = _random_hf_classifier(work / "hf", texts, labels, args.hf_shape)
    clf = TransformersClassifier(directory, batch_size=64, max_length=512, device=device)
    clf.predict_proba(texts[:64])  # warm-up: kernels, allocator
    best = float("inf")
    for _ in range(args.rounds):
        start = time.perf_counter()
        clf.predict_proba(texts)  # returns numpy: the device work is finished
        best = min(best, time.perf_counter() - start)
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"
    return {
        "device": name,
        "model": str(args.hf_model) if args.hf_model else f"random BERT ({args.hf_shape})",
        "dtype": "bfloat16" if device.startswith("cuda") else "float32",
        "batch_size": 64,
        "max_length": 512,
        "docs_per_s": round(len(texts) / best, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pages", type=int, default=800)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/classify_cpu.json")
    ap.add_argument("--hf-model", help="local transformers classifier folder (default: random)")
    ap.add_argument("--hf-device", help="cuda, cuda:1 or cpu (default: cuda when available)")
    ap.add_argument("--hf-shape", choices=sorted(SHAPES), default="base")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="moelab-bench-cls-"))
    write_labelled_split(work, args.pages, seed=0)
    docs = [
        (d.id, d.text, d.metadata["page_type"]) for d in read_documents(work / "page_type.jsonl")
    ]
    train = [(t, y) for i, t, y in docs if not _held_out(i, 0.2)]
    test = [(t, y) for i, t, y in docs if _held_out(i, 0.2)]
    texts = [t for _, t, _ in docs]
    cfg = NgramConfig()
    labels = sorted({y for _, y in train})

    secs_ng, ngram = _cpu(
        NgramClassifier(labels, cfg).fit, [t for t, _ in train], [y for _, y in train]
    )

    def ng_predict(batch: list[str]) -> list[str]:
        return [label for label, _ in ngram.predict(batch)]

    def featurize_only(batch: list[str]) -> list[str]:
        featurize(batch, cfg.dim, cfg.ngrams)
        return ["" for _ in batch]

    systems = {"ngram (moelab)": ng_predict, "featurize only": featurize_only}
    acc = {
        name: 100
        * sum(p == y for p, (_, y) in zip(_batched(f, [t for t, _ in test]), test, strict=True))
        / len(test)
        for name, f in systems.items()
    }
    best = {name: float("inf") for name in systems}
    for _ in range(args.rounds):  # round-robin: the compared systems see the same load
        for name, f in systems.items():
            best[name] = min(best[name], _cpu(_batched, f, texts)[0])

    clutter = [
        (line, bool(g))
        for d in read_documents(work / "clutter.jsonl")
        for line, g in zip(d.text.split("\n"), d.metadata["clutter_lines"], strict=True)
    ]
    pages = [d.text.split("\n") for d in read_documents(work / "clutter.jsonl")]
    scorer = LearnedLineScorer.train([clutter])
    heuristic = HeuristicLineScorer()
    n_lines = sum(len(p) for p in pages)
    line_best = {"learned": float("inf"), "heuristic": float("inf")}
    for _ in range(args.rounds):
        for name, s in (("learned", scorer), ("heuristic", heuristic)):
            line_best[name] = min(line_best[name], _cpu(lambda s=s: [s.score(p) for p in pages])[0])

    hf = transformers_rate(texts, labels, args, work)
    chars = sum(len(t) for t in texts)
    result = {
        "device": f"{cpu_name()}, {os.cpu_count()} cpus, one thread per system",
        "platform": platform.platform(),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "command": f"python -P benchmarks/classify_bench.py --pages {args.pages} --rounds {args.rounds}",
        "corpus": {
            "docs": len(texts),
            "mean_chars": round(chars / len(texts)),
            "train": len(train),
            "test": len(test),
            "labels": labels,
        },
        "page_type": {
            name: {
                "train_cpu_s": round(secs_ng, 3) if name.startswith("ngram") else None,
                "heldout_accuracy_pct": round(acc[name], 2) if name.startswith("ngram") else None,
                "predict_docs_per_cpu_s": round(len(texts) / best[name]),
                "predict_MB_per_cpu_s": round(chars / best[name] / 1e6, 2),
            }
            for name in systems
        },
        "featurize_share_of_predict": round(best["featurize only"] / best["ngram (moelab)"], 3),
        "clutter_lines": {
            name: {"lines_per_cpu_s": round(n_lines / s)} for name, s in line_best.items()
        },
        "transformers_backend": hf,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(
        f"{'page type (' + str(len(texts)) + ' docs)':<28}{'train s':>9}{'acc %':>8}{'docs/s/core':>13}"
    )
    for name, r in result["page_type"].items():
        train_s = "-" if r["train_cpu_s"] is None else f"{r['train_cpu_s']:.2f}"
        acc_s = "-" if r["heldout_accuracy_pct"] is None else f"{r['heldout_accuracy_pct']:.1f}"
        print(f"{name:<28}{train_s:>9}{acc_s:>8}{r['predict_docs_per_cpu_s']:>13,}")
    for name, r in result["clutter_lines"].items():
        print(f"clutter {name:<20}{r['lines_per_cpu_s']:>30,} lines/s/core")
    if "docs_per_s" in hf:
        print(f"transformers backend, {hf['model']} on {hf['device']}: {hf['docs_per_s']:,} docs/s")
    else:
        print(f"transformers backend: {hf['skipped']}")
    print(f"load average {result['load_average_1min_at_end']}; wrote {args.out}")
    shutil.rmtree(work, ignore_errors=True)  # the corpus and any random model


if __name__ == "__main__":
    main()
