"""The labelled split of the synthetic web: stage-3 training data, disjoint from the crawl.

``write_labelled_split(OUT, pages, seed)`` renders pages from its own seed (so none of them is
in the crawl), extracts their main text with the pipeline's own extractor (trafilatura), and
writes ``Document`` JSONL files whose ``metadata`` holds the gold, exactly what
``moelab data train-classifier`` reads:

    OUT/page_type.jsonl   metadata.page_type     detail | listing | forum | video | adult
    OUT/quality.jsonl     metadata.quality       high | low            (articles only)
    OUT/category.jsonl    metadata.category      a topic, or zh        (good articles only)
    OUT/clutter.jsonl     metadata.clutter_lines one 0/1 per text line (1 = planted boilerplate)

A line is clutter when it is one of the page's planted boilerplate lines or its site's byline
or sign-off; the title, paragraphs and sub-headings are content.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from moelab.data.document import Document, write_documents
from moelab.data.synth import labels

_KINDS = {"good_en": 0.45, "good_zh": 0.12, "low_quality": 0.18} | {
    k: 0.0625 for k in labels.JUNK_TYPES
}
_SEED_OFFSET = 1_000_003


def _kinds(rng: np.random.Generator, pages: int) -> list[str]:
    counts = {k: int(round(v * pages)) for k, v in _KINDS.items()}
    kinds = [k for k, c in counts.items() for _ in range(c)]
    rng.shuffle(kinds)
    return ["good_en", *kinds]  # the generator needs a first article for dups' titles


def _gold(t: dict, text: str) -> dict[str, dict]:
    """The labelled files a page goes to, with its metadata in each."""
    out = {"page_type": {"page_type": t["page_type"]}}
    if t["page_type"] == "detail":
        out["quality"] = {"quality": t["quality"]}
    if t["page_type"] == "detail" and t["quality"] == "high":
        out["category"] = {"category": t["category"]}
        bad = {x.strip() for x in [*t.get("clutter_lines", []), *t.get("lines", [])]}
        out["clutter"] = {"clutter_lines": [int(x.strip() in bad) for x in text.split("\n")]}
    return out


def write_labelled_split(out: str | Path, pages: int, seed: int = 0) -> dict:
    """Write the four labelled files under ``out``; returns label counts per file."""
    from moelab.data.extract import Extract
    from moelab.data.synth.web import SynthConfig, _Generator, _make_page

    out = Path(out)
    gen = _Generator(SynthConfig(pages=pages, seed=seed + _SEED_OFFSET))
    extract = Extract()
    files: dict[str, list[Document]] = {
        k: [] for k in ("page_type", "quality", "category", "clutter")
    }
    for kind in _kinds(gen.rng, pages):
        html, t = _make_page(gen, kind, as_html=True)
        text = extract.extract_text(html)
        if text and text.strip():
            for name, meta in _gold(t, text).items():
                files[name].append(Document(t["id"], text, t["url"], "synthetic-labelled", meta))
    out.mkdir(parents=True, exist_ok=True)
    summary = {}
    for name, docs in files.items():
        write_documents(out / f"{name}.jsonl", docs)
        field = "clutter_lines" if name == "clutter" else name
        if name == "clutter":
            flat = [g for d in docs for g in d.metadata[field]]
            summary[name] = {"docs": len(docs), "lines": len(flat), "clutter_lines": int(sum(flat))}
        else:
            counts: dict[str, int] = {}
            for d in docs:
                counts[d.metadata[field]] = counts.get(d.metadata[field], 0) + 1
            summary[name] = dict(sorted(counts.items()))
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary
