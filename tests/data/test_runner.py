"""The runner: a synthetic crawl end to end, resume after SIGKILL, workers and shards agree."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from moelab.cli import main
from moelab.config import ConfigError
from moelab.data.config import DataConfig
from moelab.data.document import read_documents
from moelab.data.funnel import load_funnel
from moelab.data.runner import run_pipeline
from moelab.data.synth.evaluate import evaluate_run
from moelab.data.synth.web import SynthConfig, write_synthetic_web

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def crawl(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("crawl")
    write_synthetic_web(out, SynthConfig(pages=240, seed=1, files=4))
    return out


def _cfg(crawl: Path, out: Path, **overrides) -> DataConfig:
    data = {
        "input": {"paths": [str(crawl / "warc")]},
        "output_dir": str(out),
        "workers": 1,
        "url_filter": {"domains_files": [str(crawl / "blocklist" / "domains.txt")]},
        "line_dedup": {"max_occurrences": 15},
    }
    return DataConfig.from_dict(data, [f"{k}={v}" for k, v in overrides.items()])


def _result(run: Path) -> tuple[list, dict]:
    docs = [(d.id, d.text) for p in sorted(run.glob("docs/*.jsonl.gz")) for d in read_documents(p)]
    removed = {}
    for p in sorted(run.glob("removed/*/*.jsonl.gz")):
        for d in read_documents(p):
            removed.setdefault(p.parent.name, []).append(d.id)
    return docs, {k: sorted(v) for k, v in removed.items()}


@pytest.fixture(scope="module")
def reference(crawl, tmp_path_factory) -> Path:
    return run_pipeline(_cfg(crawl, tmp_path_factory.mktemp("ref") / "run"), log=lambda _: None)


def test_synthetic_run_funnel_and_eval(crawl, reference):
    funnel = dict(load_funnel(reference))
    assert funnel["00_read"].dropped["truncated_gzip"] == 1
    assert funnel["00_read"].dropped["broken_record"] >= 1
    assert funnel["01_url_filter"].dropped["blocked_domain"] > 0
    assert funnel["04_exact_dedup"].dropped["exact_duplicate"] > 0
    assert funnel["05_line_dedup"].counters["lines_removed"] > 0
    assert funnel["07_minhash"].dropped["near_duplicate"] > 0
    for step, st in funnel.items():
        assert st.docs_in == st.docs_out + sum(st.dropped.values()), step
    report = evaluate_run(reference, crawl / "truth.jsonl")
    for step in ("url_filter", "language", "exact_dedup", "read"):
        assert report["steps"][step]["precision"] == 1.0, (step, report["steps"][step])
        assert report["steps"][step]["recall"] == 1.0, (step, report["steps"][step])
    assert report["steps"]["quality"]["recall"] >= 0.9
    assert report["steps"]["minhash"]["precision"] == 1.0
    assert report["line_dedup"]["lines_over_cap"] == 0
    assert report["line_dedup"]["max_occurrences_in_output"] == 15


def test_cli_stats_and_eval(crawl, reference, capsys):
    assert main(["data", "stats", str(reference)]) == 0
    out = capsys.readouterr().out
    assert "exact_duplicate" in out and "07_minhash" in out
    assert main(["data", "eval", str(reference), "--truth", str(crawl / "truth.jsonl")]) == 0
    assert "near-duplicates by Jaccard" in capsys.readouterr().out


def test_two_workers_give_the_same_output(crawl, reference, tmp_path):
    run = run_pipeline(_cfg(crawl, tmp_path / "run", workers=2), log=lambda _: None)
    assert _result(run) == _result(reference)


def test_resume_after_sigkill_loses_and_duplicates_nothing(crawl, reference, tmp_path):
    """kill -9 of `moelab data run` (2 worker processes) twice, then a plain rerun."""
    cfg = _cfg(crawl, tmp_path / "run", workers=2)
    cfg_path = tmp_path / "cfg.yaml"
    cfg.to_yaml(cfg_path)
    run = Path(cfg.output_dir)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-m", "moelab", "data", "run", str(cfg_path)]
    kills = 0
    for wait_for in ("completions/p0_map/map_00001", "completions/p3_minhash"):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while not (run / wait_for).exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 1 and not (run / "DONE").exists()
    run_pipeline(DataConfig.from_yaml(cfg_path), log=lambda _: None)
    assert _result(run) == _result(reference)
    assert not [p for p in run.rglob("*.tmp.*") if "work" not in p.parts], "partial files left"
    ids = [i for i, _ in _result(run)[0]]
    assert len(ids) == len(set(ids))


def test_resume_refuses_a_different_config_but_not_other_workers(crawl, reference):
    cfg = DataConfig.from_yaml(reference / "config.yaml", ["language.threshold=0.5"])
    with pytest.raises(ConfigError, match="language"):
        run_pipeline(cfg, log=lambda _: None)
    again = DataConfig.from_yaml(reference / "config.yaml", ["workers=2"])
    assert run_pipeline(again, log=lambda _: None) == reference


def test_cli_synth_writes_a_crawl_with_its_truth(tmp_path, capsys):
    assert main(["data", "synth", str(tmp_path / "web"), "--pages", "40", "--files", "2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    truth = (tmp_path / "web" / "truth.jsonl").read_text().splitlines()
    assert summary["pages"] == len(truth) and len(list((tmp_path / "web" / "warc").iterdir())) == 2
    kinds = {json.loads(t)["kind"] for t in truth}
    assert {"good_en", "malformed_record", "corrupt_gzip", "truncated_tail"} <= kinds
    cfg = DataConfig.from_yaml(tmp_path / "web" / "pipeline.yaml")
    assert cfg.url_filter.domains_files and cfg.input.paths


def test_jsonl_input_skips_extraction(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "a", "body": "Hello there, this is a plain English text about cats."}\n')
    cfg = DataConfig.from_dict(
        {
            "input": {"paths": [str(src)], "text_field": "body"},
            "output_dir": str(tmp_path / "r"),
            "workers": 1,
            "quality": {"enabled": False},
        }
    )
    run = run_pipeline(cfg, log=lambda _: None)
    assert [i for i, _ in _result(run)[0]] == ["a"]


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs" / "data").glob("*.yaml")))
def test_shipped_configs_load(name):
    cfg = DataConfig.from_yaml(REPO / "configs" / "data" / name)
    assert cfg.minhash.num_bands * cfg.minhash.rows_per_band == 2048
    assert cfg.language.threshold == 0.65


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="language.threshold"):
        DataConfig.from_dict({"language": {"threshold": 2.0}})
    with pytest.raises(ConfigError, match="minhash.bands"):
        DataConfig.from_dict({"minhash": {"bands": 3}})
