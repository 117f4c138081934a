"""Stage 3 chained into the data runner: trained on one labelled split, run on another.

The corpus is a second labelled split of the synthetic web (another seed, so no page is in the
training data) with its labels stripped, read as JSONL with stages 1–2 switched off: the test is
about stage 3's wiring, funnel, removal records, mixture and resume, and stays fast.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from moelab.classify.train import TrainClassifierConfig, train_classifier
from moelab.data.config import DataConfig
from moelab.data.document import Document, read_documents, write_documents
from moelab.data.funnel import load_funnel
from moelab.data.pipeline import build_steps
from moelab.data.runner import run_pipeline
from moelab.data.synth.labelled import write_labelled_split

TARGET = {"reference": 0.3, "files": 0.2, "networking": 0.2, "numbers": 0.15, "text": 0.15}
STAGE12_OFF = {
    k: {"enabled": False}
    for k in ("url_filter", "extract", "language", "line_dedup", "quality", "minhash")
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("stage3")
    write_labelled_split(root / "train", 300, seed=0)
    write_labelled_split(root / "corpus", 200, seed=7)
    models = {}
    for name, field, kind in (
        ("page_type", "page_type", "document"),
        ("quality", "quality", "document"),
        ("category", "category", "document"),
        ("clutter", "clutter_lines", "clutter"),
    ):
        cfg = TrainClassifierConfig(
            docs=str(root / "train" / f"{name}.jsonl"),
            out_dir=str(root / "models" / name),
            kind=kind,
            label_field=field,
        )
        train_classifier(cfg)
        models[name] = str(root / "models" / name)
    gold = {d.id: d.metadata for d in read_documents(root / "corpus" / "page_type.jsonl")}
    for name in ("quality", "category"):
        for d in read_documents(root / "corpus" / f"{name}.jsonl"):
            gold[d.id] |= d.metadata
    pages = [Document(d.id, d.text) for d in read_documents(root / "corpus" / "page_type.jsonl")]
    (root / "input").mkdir()
    write_documents(root / "input" / "pages.jsonl", pages)  # no labels: what a user would run
    return {"root": root, "models": models, "gold": gold}


def _cfg(setup: dict, out: Path, **stage3_extra) -> DataConfig:
    m = setup["models"]
    stage3 = {
        "page_type": {"enabled": True, "model": m["page_type"]},
        "clutter": {"enabled": True, "model": m["clutter"]},
        "quality": {"enabled": True, "model": m["quality"]},
        "category": {"enabled": True, "model": m["category"], "weights": TARGET, "seed": 3},
    } | stage3_extra
    return DataConfig.from_dict(
        {
            "input": {"paths": [str(setup["root"] / "input")]},
            "output_dir": str(out),
            "workers": 1,
            "stage3": stage3,
            **STAGE12_OFF,
        }
    )


@pytest.fixture(scope="module")
def run(setup, tmp_path_factory) -> Path:
    return run_pipeline(_cfg(setup, tmp_path_factory.mktemp("run") / "run"), log=lambda _: None)


def _docs(run: Path) -> list[Document]:
    return [d for p in sorted(run.glob("docs/*.jsonl.gz")) for d in read_documents(p)]


def test_stage3_steps_follow_stage2_only_when_configured(setup, tmp_path) -> None:
    names = [n for n, _ in build_steps(_cfg(setup, tmp_path / "a"))]
    assert names[-6:] == [
        "exact_dedup",
        "page_type",
        "clutter",
        "quality_model",
        "category",
        "rebalance",
    ]
    with_semantic = _cfg(setup, tmp_path / "b", semantic={"enabled": True})
    names = [n for n, _ in build_steps(with_semantic)]  # before rebalancing, which copies
    assert names[-3:] == ["semantic_dedup", "category", "rebalance"]
    plain = DataConfig.from_dict({"input": {"paths": ["x"]}})
    assert [n for n, _ in build_steps(plain)][-1] == "minhash"


def test_funnel_records_every_stage3_decision(setup, run) -> None:
    funnel = dict(load_funnel(run))
    for step in ("02_page_type", "03_clutter", "04_quality_model", "05_category"):
        st = funnel[step]
        assert st.docs_in == st.docs_out + sum(st.dropped.values()), step
    junk = Counter(
        setup["gold"][d.id]["page_type"]
        for d in read_documents(run / "removed/02_page_type/00000.jsonl.gz")
    )
    assert sum(funnel["02_page_type"].dropped.values()) == sum(junk.values()) > 0
    assert junk["detail"] <= 0.05 * sum(junk.values()), junk  # it drops junk, not articles
    assert all(r.startswith("page_type:") for r in funnel["02_page_type"].dropped)
    assert funnel["03_clutter"].counters["clutter_lines_removed"] > 0
    assert any(r.startswith("quality<") for r in funnel["04_quality_model"].dropped)
    rb = funnel["06_rebalance"]
    out = {k[4:]: v for k, v in rb.counters.items() if k.startswith("out:")}
    assert sum(out.values()) == rb.docs_out and out["reference"] > 0  # mixture in the funnel
    assert rb.docs_out == rb.docs_in - sum(rb.dropped.values()) + rb.counters["copies_added"]
    for doc in _docs(run):  # kept documents carry every step's decision
        assert doc.metadata["page_type"]["kept"] and doc.metadata["quality"]["kept"]
        assert "clutter" in doc.metadata and "label" in doc.metadata["category"]
    for path in run.glob("removed/04_quality_model/*.jsonl.gz"):
        for doc in read_documents(path):  # and so do dropped ones, with the reason
            assert doc.metadata["quality"]["kept"] is False
            assert doc.metadata["filter_reason"].startswith("quality<")


def test_rebalanced_mixture_is_within_one_point_of_target(run) -> None:
    docs = _docs(run)
    got = Counter(d.metadata["category"]["label"] for d in docs)
    plan = json.loads(next(run.glob("work/*_rebalance/plan.json")).read_text())
    assert plan["missing_categories"] == [] and set(got) == set(TARGET)
    for c, w in TARGET.items():
        assert abs(100 * got[c] / len(docs) - 100 * w) <= 1.0, (c, got)
        assert plan["after_pct"][c] == pytest.approx(100 * got[c] / len(docs))
    assert plan["before_pct"] != plan["after_pct"]  # it did resample


def test_quality_and_page_type_agree_with_the_gold(setup, run) -> None:
    gold = setup["gold"]
    kept = {d.id for d in _docs(run)}
    assert sum(gold[i]["page_type"] != "detail" for i in kept) <= 0.02 * len(kept)
    articles = [i for i, g in gold.items() if g["page_type"] == "detail"]
    share_in = sum(gold[i]["quality"] == "low" for i in articles) / len(articles)
    share_out = sum(gold[i].get("quality") == "low" for i in kept) / len(kept)
    assert share_in > 0.2 and share_out < share_in / 3, (share_in, share_out)


def test_same_seed_same_output_and_resume_after_lost_markers(setup, run, tmp_path) -> None:
    again = run_pipeline(_cfg(setup, tmp_path / "run"), log=lambda _: None)
    assert [(d.id, d.text) for d in _docs(again)] == [(d.id, d.text) for d in _docs(run)]
    before = [(d.id, d.text, d.metadata["rebalance_copy"]) for d in _docs(again)]
    for marker in again.glob("completions/*_rebalance/*"):
        marker.unlink()  # as if killed after stage 1–2 and the stage-3 map had finished
    (again / "docs" / "00000.jsonl.gz").unlink()
    run_pipeline(_cfg(setup, tmp_path / "run"), log=lambda _: None)
    assert [(d.id, d.text, d.metadata["rebalance_copy"]) for d in _docs(again)] == before


def test_a_weighted_category_without_documents_is_named(setup, tmp_path) -> None:
    cfg = _cfg(
        setup,
        tmp_path / "run",
        category={
            "enabled": True,
            "model": setup["models"]["category"],
            "weights": TARGET | {"zh": 0.1, "poetry": 0.05},
            "seed": 4,
        },
    )
    run = run_pipeline(cfg, log=lambda _: None)
    plan = json.loads(next(run.glob("work/*_rebalance/plan.json")).read_text())
    assert plan["missing_categories"] == ["poetry"]  # named, its weight spread over the others
    assert sum(plan["after"].values()) == sum(plan["before"].values())
