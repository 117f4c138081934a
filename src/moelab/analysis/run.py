"""``run_analysis``: sample → routing traces → metrics.json → report.html in one output folder.

Output folder layout::

    sample.npz          the fixed token sample (token ids, document index, domain ids)
    routing/{name}.npz  one routing trace per checkpoint (resumable)
    metrics.json        the contract the plots read
    config.yaml         the AnalysisConfig used
    plots/*.png, report.html

The token texts of each expert's top tokens are added to the JSON when a tokenizer is found (the
``tokenizer`` argument, else a ``tokenizer.json`` in the run or checkpoint directory).

What this module does not know: the data stage (the caller passes funnel rows as dicts) or the
command line.
"""

from __future__ import annotations

import json
from pathlib import Path

from moelab.analysis.collect import Trace, checkpoints_of, collect
from moelab.analysis.config import AnalysisConfig
from moelab.analysis.metrics import compute_metrics
from moelab.analysis.report import read_jsonl, write_report
from moelab.analysis.sample import Sample, draw_sample, labels_from_documents
from moelab.tokens.shards import ShardReader
from moelab.tokens.tokenizer import Tokenizer


def _tokenizer(paths: list[Path], tokenizer: str | Path | None) -> Tokenizer | None:
    candidates = [Path(tokenizer)] if tokenizer else []
    candidates += [p for path in paths for p in (path, path.parent)]
    for c in candidates:
        if (c / "tokenizer.json").is_file() or (c.is_file() and c.name.endswith(".json")):
            return Tokenizer.from_file(c)
    return None


def _add_token_text(metrics: dict, tok: Tokenizer) -> None:
    for layer in metrics["final"]["per_layer"]:
        for tokens in layer["top_tokens"]:
            for t in tokens:
                text = tok.decode([t["id"]])
                # a byte-level token holding part of a UTF-8 character decodes to U+FFFD
                t["text"] = text if "\ufffd" not in text else f"<part of a character, id {t['id']}>"


def build_sample(shards: str | Path, cfg: AnalysisConfig, docs_dir: str | Path | None) -> Sample:
    reader = ShardReader(shards)
    labels = labels_from_documents(docs_dir, shards, cfg.domain_field) if docs_dir else None
    return draw_sample(reader, cfg.num_sequences, cfg.seq_len, cfg.seed, labels, cfg.max_domains)


def run_analysis(
    checkpoints: list[str | Path],
    shards: str | Path,
    out_dir: str | Path,
    *,
    cfg: AnalysisConfig | None = None,
    docs_dir: str | Path | None = None,
    tokenizer: str | Path | None = None,
    training_metrics: str | Path | None = None,
    funnel: list[dict] | None = None,
    data_quality: dict | None = None,
    device: str = "cpu",
    dtype: str | None = None,
    title: str = "moelab routing analysis",
    log=print,
) -> Path:
    """Analyse ``checkpoints`` (run dirs expand to their step_* folders) and return report.html."""
    cfg = cfg or AnalysisConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = checkpoints_of(checkpoints)
    sample = build_sample(shards, cfg, docs_dir)
    sample.save(out_dir / "sample.npz")
    cfg.to_yaml(out_dir / "config.yaml")
    files = collect(
        paths,
        sample,
        out_dir / "routing",
        batch_size=cfg.batch_size,
        device=device,
        dtype=dtype,
        log=log,
    )
    traces = [Trace.load(f) for f in files]
    metrics = compute_metrics(
        traces, sample.token_ids, sample.domain_ids, sample.domains,
        min_count=cfg.min_token_count, top_tokens=cfg.top_tokens,
    )  # fmt: skip
    tok = _tokenizer([Path(c) for c in checkpoints] + paths, tokenizer)
    if tok is not None:
        _add_token_text(metrics, tok)
    (out_dir / "metrics.json").write_text(json.dumps(metrics) + "\n")
    training = read_jsonl(training_metrics) if training_metrics else []
    subtitle = ", ".join(str(c) for c in checkpoints) + "."
    return write_report(
        metrics,
        out_dir,
        title=title,
        subtitle=subtitle,
        training=training,
        funnel=funnel,
        data_quality=data_quality,
    )
