"""Bad HF directories fail loudly and completely: every problem listed, nothing half-loaded."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import moelab
from moelab.checkpoint.hf import CheckpointError
from moelab.checkpoint.hf_config import UnsupportedConfigError, from_hf_config
from moelab.model import build_model, get_preset


@pytest.fixture()
def saved(tmp_path):
    model = build_model(get_preset("tiny-dots"))
    return moelab.save_pretrained(model, tmp_path / "m"), model


def _edit_weights(path, fn):
    tensors = load_file(path / "model.safetensors")
    fn(tensors)
    save_file(tensors, path / "model.safetensors")


def test_round_trip_is_exact(saved):
    path, model = saved
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "dots1" and config["rope_parameters"]["rope_theta"] == 1e7
    keys = load_file(path / "model.safetensors").keys()
    assert "model.layers.1.mlp.experts.15.down_proj.weight" in keys
    assert "model.layers.1.mlp.gate.e_score_correction_bias" in keys
    again = moelab.load_pretrained(path)
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_missing_unexpected_and_wrong_shape_all_listed(saved):
    path, _ = saved

    def damage(t):
        del t["model.layers.2.mlp.experts.3.up_proj.weight"]
        del t["model.norm.weight"]
        t["model.layers.9.extra.weight"] = torch.zeros(2)
        t["model.layers.0.self_attn.q_proj.weight"] = torch.zeros(5, 5)

    _edit_weights(path, damage)
    with pytest.raises(CheckpointError) as err:
        moelab.load_pretrained(path)
    msg = str(err.value)
    assert "missing model.layers.2.mlp.experts.{3}.up_proj.weight" in msg
    assert "missing model.norm.weight" in msg
    assert "unexpected model.layers.9.extra.weight" in msg
    assert "wrong shape for model.layers.0.self_attn.q_proj.weight: file (5, 5)" in msg


def test_truncated_safetensors(saved):
    path, _ = saved
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        moelab.load_pretrained(path)


def test_index_naming_a_missing_shard(tmp_path):
    model = build_model(get_preset("tiny-olmoe"))
    path = moelab.save_pretrained(model, tmp_path / "m", max_shard_bytes=1_000_000)
    shards = sorted(path.glob("model-*.safetensors"))
    assert len(shards) > 1
    shards[-1].unlink()
    with pytest.raises(CheckpointError, match="do not exist"):
        moelab.load_pretrained(path)


def test_unsupported_model_type_and_features(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(UnsupportedConfigError, match="model_type 'llama' is not supported"):
        moelab.load_pretrained(tmp_path)
    base = {
        "model_type": "dots1",
        "n_routed_experts": 8,
        "num_experts_per_tok": 2,
        "num_hidden_layers": 4,
    }
    with pytest.raises(UnsupportedConfigError, match="sliding-window"):
        from_hf_config({**base, "sliding_window": 128, "max_window_layers": 2})
    with pytest.raises(UnsupportedConfigError, match="RoPE type 'yarn'"):
        from_hf_config({**base, "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}})
    with pytest.raises(CheckpointError, match="no config.json"):
        moelab.load_pretrained(tmp_path / "nowhere")


def test_null_groups_read_as_one():
    cfg = from_hf_config(
        {
            "model_type": "dots1",
            "n_routed_experts": 8,
            "num_experts_per_tok": 2,
            "n_group": None,
            "topk_group": None,
            "num_hidden_layers": 2,
        }
    )
    assert (cfg.moe.n_group, cfg.moe.topk_group) == (1, 1)


def test_values_come_from_config_json_not_defaults(tmp_path):
    raw = {
        "model_type": "dots1",
        "n_routed_experts": 8,
        "num_experts_per_tok": 2,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "rms_norm_eps": 1e-5,
        "rope_theta": 1e7,
        "norm_topk_prob": True,
        "routed_scaling_factor": 2.5,
        "first_k_dense_replace": 1,
        "num_hidden_layers": 2,
    }
    cfg = from_hf_config(raw)
    assert cfg.attention.rope_theta == 1e7 and cfg.rms_norm_eps == 1e-5
    assert cfg.moe.norm_topk_prob and cfg.moe.routed_scaling_factor == 2.5
    assert cfg.moe.first_k_dense_replace == 1 and cfg.head_dim == 16


def test_refuses_to_save_what_the_family_cannot_express(tmp_path):
    cfg = get_preset("tiny-olmoe")
    cfg.moe.num_shared_experts = 1
    with pytest.raises(UnsupportedConfigError, match="no shared experts"):
        moelab.save_pretrained(build_model(cfg), tmp_path / "x")
    assert not (tmp_path / "x").exists()
