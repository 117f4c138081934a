"""The synthetic web's stage-3 gold: labels in truth and in the labelled split, never in text."""

from __future__ import annotations

import gzip
import json
from collections import Counter

from moelab.data.document import read_documents
from moelab.data.synth.labels import CATEGORY_SHARES, JUNK_TYPES
from moelab.data.synth.web import SynthConfig, write_synthetic_web


def test_crawl_truth_and_labelled_split(tmp_path) -> None:
    summary = write_synthetic_web(
        tmp_path, SynthConfig(pages=300, seed=5, files=2, damage=False, labelled_pages=120)
    )
    truth = [json.loads(line) for line in (tmp_path / "truth.jsonl").read_text().splitlines()]
    by_kind = {k: [t for t in truth if t["kind"] == k] for k in {t["kind"] for t in truth}}
    for kind in JUNK_TYPES:  # junk page types are planted, each expected to go at page_type
        assert by_kind[kind] and all(t["expected"] == "page_type" for t in by_kind[kind])
        assert all(t["page_type"] == kind for t in by_kind[kind])
    assert all(t["quality"] == "low" for t in by_kind["low_quality"])
    en = Counter(t["category"] for t in by_kind["good_en"])
    for c, share in CATEGORY_SHARES.items():  # known proportions, up to sampling noise
        assert abs(en[c] / sum(en.values()) - share) < 0.1, en
    assert {t["category"] for t in by_kind["good_zh"]} == {"zh"}
    planted = [line for t in by_kind["good_en"] for line in t["clutter_lines"]]
    assert len(planted) > len(by_kind["good_en"])  # about 2.5 per article, most articles
    warc = b"".join(gzip.decompress(p.read_bytes()) for p in sorted((tmp_path / "warc").iterdir()))
    assert planted[0].encode() in warc or planted[0].replace("&", "&amp;").encode() in warc
    assert b"clutter_lines" not in warc and b'"page_type"' not in warc  # gold stays out of pages

    lab = tmp_path / "labelled"
    assert set(summary["labelled"]) == {"page_type", "quality", "category", "clutter"}
    crawl_ids = {t["id"] for t in truth}
    pages = list(read_documents(lab / "page_type.jsonl"))
    assert not crawl_ids & {d.id for d in pages}  # held out from the crawl
    assert {d.metadata["page_type"] for d in pages} == {"detail", *JUNK_TYPES}
    clutter = list(read_documents(lab / "clutter.jsonl"))
    flagged = Counter()
    for doc in clutter:
        lines = doc.text.split("\n")
        gold = doc.metadata["clutter_lines"]
        assert len(gold) == len(lines) and gold[0] == 0  # the title is content
        flagged.update(line for line, g in zip(lines, gold, strict=True) if g)
        assert "Advertisement" not in [x for x, g in zip(lines, gold, strict=True) if not g]
    assert sum(flagged.values()) > len(clutter)
