"""Strict typed configs: YAML, dotted overrides, and errors that name the field."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from moelab.config import Config, ConfigError
from moelab.model import ModelConfig


def test_preset_with_overrides_from_yaml(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("preset: tiny-dots\nnum_layers: 2\nmoe:\n  num_experts: 8\n")
    cfg = ModelConfig.from_yaml(path, ["moe.top_k=3", "attention.rope_theta=5e5"])
    assert (cfg.family, cfg.num_layers, cfg.moe.num_experts, cfg.moe.top_k) == ("dots1", 2, 8, 3)
    assert cfg.attention.rope_theta == 500000.0
    assert cfg.moe.routed_scaling_factor == 2.5  # untouched preset value


def test_yaml_round_trip(tmp_path):
    cfg = ModelConfig.from_dict({"preset": "tiny-olmoe"}, ["moe.top_k=2"])
    cfg.to_yaml(tmp_path / "c.yaml")
    assert ModelConfig.from_yaml(tmp_path / "c.yaml") == cfg


@pytest.mark.parametrize(
    ("overrides", "path", "message"),
    [
        (["moe.topk=4"], "moe.topk", "unknown key"),
        (["moe.top_k=999"], "moe.top_k", "between 1 and num_experts"),
        (["moe.top_k=four"], "moe.top_k", "expected an integer"),
        (["moe.top_k=true"], "moe.top_k", "expected an integer"),
        (
            ["attention.head_dim=null", "attention.num_kv_heads=null", "attention.num_heads=5"],
            "attention.num_heads",
            "must divide hidden_size",
        ),
        (["moe.first_k_dense_replace=9"], "moe.first_k_dense_replace", "exceeds num_layers"),
        (["moe.score_func=relu"], "moe.score_func", "not one of"),
        (["moe.n_group=3"], "moe.n_group", "must divide num_experts"),
        (["moe.n_group=4", "moe.topk_group=5"], "moe.topk_group", "between 1 and n_group"),
        (["attention.num_kv_heads=3"], "attention.num_kv_heads", "divide num_heads"),
        (["eos_token_id=99999"], "eos_token_id", "vocab_size"),
        (["rms_norm_eps=null"], "rms_norm_eps", "must not be null"),
    ],
)
def test_errors_name_the_field(overrides, path, message):
    with pytest.raises(ConfigError, match=message) as err:
        ModelConfig.from_dict({"preset": "tiny-dots"}, overrides)
    assert err.value.path == path


def test_nested_path_in_error_of_enclosing_config():
    @dataclass
    class Stage(Config):
        model: ModelConfig = field(default_factory=ModelConfig)
        steps: int = 1

    with pytest.raises(ConfigError) as err:
        Stage.from_dict({"model": {"preset": "tiny-olmoe"}}, ["model.moe.top_k=99"])
    assert err.value.path == "model.moe.top_k"
    stage = Stage.from_dict({"model": {"preset": "tiny-olmoe"}}, ["model.moe.top_k=4", "steps=3"])
    assert stage.model.moe.top_k == 4 and stage.steps == 3


def test_float_field_accepts_int_but_int_field_refuses_float():
    assert ModelConfig.from_dict({"rms_norm_eps": 1}).rms_norm_eps == 1.0
    with pytest.raises(ConfigError, match="hidden_size"):
        ModelConfig.from_dict({"hidden_size": 64.0})


def test_bad_override_syntax_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="key.path=value"):
        ModelConfig.from_dict({}, ["moe.top_k"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("moe: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        ModelConfig.from_yaml(bad)
    with pytest.raises(ConfigError, match="not found"):
        ModelConfig.from_yaml(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="unknown model preset"):
        ModelConfig.from_dict({"preset": "nope"})
