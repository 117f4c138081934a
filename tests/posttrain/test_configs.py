"""Shipped post-training configs load and run; the model comes from init_from, with overrides on top."""

from __future__ import annotations

from pathlib import Path

import pytest

from moelab.checkpoint.hf import CheckpointError
from moelab.cli import main
from moelab.config import ConfigError
from moelab.posttrain import toy
from moelab.posttrain.config import DPOConfig, SFTConfig, load_config
from moelab.posttrain.sft import train_sft

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "posttrain").glob("*.yaml"))


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy")
    assert toy.main([str(out), "--sft", "40", "--dpo", "40"]) == 0
    return out


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_configs_load_with_the_model_of_init_from(path, toy_dir):
    cls = DPOConfig if "dpo" in path.name else SFTConfig
    cfg = load_config(cls, path, [f"init_from={toy_dir / 'base'}", "batch.seq_len=64"])
    assert (
        cfg.model.hidden_size == 32 and cfg.model.family == "dots1"
    )  # the toy base's, not a preset's


def test_toy_configs_run_end_to_end(toy_dir, tmp_path, capsys):
    def paths(name, **extra):
        over = {"out_dir": tmp_path / name, "max_steps": 2, "data.path": toy_dir / f"{name}.jsonl"}
        return [f"{k}={v}" for k, v in {**over, **extra}.items()]

    sft = [*paths("sft"), f"init_from={toy_dir / 'base'}"]
    assert main(["sft", str(CONFIGS[0].parent / "toy_sft.yaml"), *sft]) == 0
    dpo = [*paths("dpo"), f"init_from={tmp_path / 'sft'}", "dpo.reference=precomputed"]
    assert main(["dpo", str(CONFIGS[0].parent / "toy_dpo.yaml"), *dpo]) == 0
    assert (tmp_path / "dpo" / "reference_logps.pt").is_file()
    assert '"step": 2' in capsys.readouterr().out


def test_model_overrides_apply_on_top_of_init_from(toy_dir, tmp_path):
    base = [f"init_from={toy_dir / 'base'}", f"data.path={toy_dir / 'sft.jsonl'}"]
    cfg = load_config(SFTConfig, None, [*base, "model.attention.impl=eager"])
    assert cfg.model.attention.impl == "eager" and cfg.model.hidden_size == 32
    wrong = load_config(SFTConfig, None, [*base, "model.hidden_size=64", f"out_dir={tmp_path}"])
    with pytest.raises(CheckpointError, match="hidden_size"):
        train_sft(wrong, log=lambda *_: None)


def test_config_errors_name_the_field(toy_dir):
    with pytest.raises(ConfigError, match="data.path: is required"):
        load_config(SFTConfig, None, [f"init_from={toy_dir / 'base'}"])
    with pytest.raises(ConfigError, match="init_from"):
        load_config(SFTConfig, None, ["init_from=/nonexistent", "data.path=x"])
    with pytest.raises(ConfigError, match="dpo.beta"):
        load_config(DPOConfig, None, [f"init_from={toy_dir / 'base'}", "data.path=x", "dpo.beta=0"])
