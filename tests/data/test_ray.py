"""The Ray executor on a local 2-CPU Ray gives the local executor's output."""

from __future__ import annotations

import pytest

from moelab.data.config import DataConfig
from moelab.data.document import read_documents
from moelab.data.runner import run_pipeline
from moelab.data.synth.web import SynthConfig, write_synthetic_web

ray = pytest.importorskip("ray", reason="the ray extra is not installed")


def _docs(run):
    return [(d.id, d.text) for p in sorted(run.glob("docs/*.jsonl.gz")) for d in read_documents(p)]


@pytest.mark.slow
def test_ray_executor_matches_local(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    write_synthetic_web(tmp_path / "web", SynthConfig(pages=60, seed=2, files=3))
    base = {
        "input": {"paths": [str(tmp_path / "web" / "warc")]},
        "workers": 2,
        "url_filter": {"domains_files": [str(tmp_path / "web" / "blocklist" / "domains.txt")]},
        "line_dedup": {"max_occurrences": 5},
    }
    local = run_pipeline(
        DataConfig.from_dict({**base, "output_dir": str(tmp_path / "local"), "workers": 1}),
        log=lambda _: None,
    )
    on_ray = run_pipeline(
        DataConfig.from_dict({**base, "output_dir": str(tmp_path / "ray"), "executor": "ray"}),
        log=lambda _: None,
    )
    assert _docs(on_ray) == _docs(local) and _docs(local)
    assert not (tmp_path / "home" / ".ray").exists(), "Ray wrote into the home directory"
