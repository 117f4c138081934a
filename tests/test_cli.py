"""The command line: `moelab model info`, config errors, and the demo at tiny size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from moelab.cli import main
from moelab.model import ModelConfig

ROOT = Path(__file__).resolve().parents[1]


def test_model_info_json(capsys):
    assert main(["model", "info", "dots.llm1", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_params"] == 142_774_373_888
    assert info["num_active_params"] == 14_016_581_120
    assert info["config"]["moe"]["routed_scaling_factor"] == 2.5


def test_model_info_yaml_with_override(capsys):
    assert main(["model", "info", str(ROOT / "configs/model/tiny_olmoe.yaml"), "moe.top_k=2"]) == 0
    out = capsys.readouterr().out
    assert "top_k: 2" in out and "# parameters:" in out


def test_config_error_exits_2_with_field(capsys):
    assert main(["model", "info", "tiny-dots", "moe.top_k=999"]) == 2
    assert "moe.top_k: (999) must be between 1 and num_experts (128)" in capsys.readouterr().err


@pytest.mark.parametrize(
    "path", sorted((ROOT / "configs/model").glob("*.yaml")), ids=lambda p: p.name
)
def test_model_configs_load_and_count(path):
    cfg = ModelConfig.from_yaml(path)
    assert cfg.num_params() > cfg.num_active_params() > 0


def test_help_is_fast_and_does_not_import_torch():
    code = "import sys; from moelab.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_demo_runs_end_to_end(tmp_path, capsys):
    """The README's main job at reduced size: web → data → tokens → train → generate → export."""
    code = main(
        ["demo", "--out", str(tmp_path), "--pages", "120", "--steps", "12", "--new-tokens", "6"]
    )
    assert code == 0
    summary = json.loads((tmp_path / "demo.json").read_text())
    dots = summary["models"]["tiny-dots"]
    assert dots["loss_last"] < dots["loss_first"]
    assert dots["generation"]["cache_matches_recompute"]
    assert (
        len(dots["routing"]["checkpoints"]) >= 3
    )  # intermediate checkpoints were kept and analysed
    report = Path(dots["routing"]["report"]).read_text()
    assert "08_page_type" in report and "12_rebalance" in report  # stage 3 in the report's funnel
    assert "Data quality (stage 3 against labels)" in report and "line scorer" in report
    assert dots["evaluation"]["model"]["perplexity"] > 1
    assert dots["export"]["moelab_reload_max_abs_diff"] == 0.0
    assert dots["export"]["transformers_max_abs_diff"] < 1e-4
    stage3 = summary["stage3"]  # classifiers trained on the labelled split, chained after stage 2
    f1 = stage3["classifiers"]["clutter_line_f1"]
    assert f1["learned"]["f1"] >= f1["heuristic"]["f1"] + 5
    assert stage3["page_type"]["removed"] > 0 and stage3["page_type"]["precision"] >= 0.75
    assert stage3["missing_categories"] == []
    for c, target in stage3["mixture_target_pct"].items():
        assert abs(stage3["mixture_predicted_pct"].get(c, 0.0) - target) <= 1.0 + 100 / 80, c
    assert (tmp_path / "data" / "docs").is_dir() and (
        tmp_path / "tokens" / "train" / "meta.json"
    ).exists()
