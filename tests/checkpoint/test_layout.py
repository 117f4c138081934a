"""moelab checkpoints: atomic write, manifest checks, fallback to the last good one, any-path loading."""

from __future__ import annotations

import json

import pytest
import torch

import moelab
from moelab.checkpoint.hf import CheckpointError
from moelab.checkpoint.layout import (
    latest_valid_checkpoint,
    load_model,
    save_checkpoint,
    validate_checkpoint,
)
from moelab.model import build_model, get_preset


@pytest.fixture()
def model():
    return build_model(get_preset("tiny-dots"), seed=3)


def _same(a, b):
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), k


def test_save_and_load_round_trip(tmp_path, model):
    path = save_checkpoint(tmp_path, step=10, tokens=1000, model=model, train_state={"step": 10})
    assert path.name == "step_00000010"
    assert (tmp_path / "latest").read_text().strip() == "step_00000010"
    info = validate_checkpoint(path)
    assert (info.step, info.tokens) == (10, 1000)
    _same(model, load_model(tmp_path))  # a run dir resolves to its latest checkpoint
    _same(model, load_model(path))
    x = torch.randint(0, 4096, (2, 40))
    with torch.no_grad():  # bit-identical compute, whatever offsets the file put tensors at
        assert torch.equal(model(x).logits, load_model(path)(x).logits)
        assert torch.equal(
            model(x).logits,
            moelab.load_pretrained(moelab.save_pretrained(model, tmp_path / "hf"))(x).logits,
        )
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_truncated_and_corrupted_files_are_named(tmp_path, model):
    path = save_checkpoint(tmp_path, step=1, tokens=1, model=model)
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-100])
    with pytest.raises(CheckpointError, match="truncated"):
        validate_checkpoint(path)
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    with pytest.raises(CheckpointError, match="checksum"):
        validate_checkpoint(path)


def test_falls_back_to_previous_good_checkpoint(tmp_path, model):
    save_checkpoint(tmp_path, step=1, tokens=10, model=model)
    bad = save_checkpoint(tmp_path, step=2, tokens=20, model=model)
    (bad / "model.yaml").write_text("garbage")
    warnings = []
    info = latest_valid_checkpoint(tmp_path, warn=warnings.append)
    assert info.step == 1 and "step_00000002" in warnings[0]


def test_load_model_accepts_hf_directories(tmp_path, model):
    moelab.save_pretrained(model, tmp_path / "hf")
    _same(model, load_model(tmp_path / "hf", dtype=torch.float32))
    with pytest.raises(CheckpointError, match="not a model directory"):
        load_model(tmp_path / "empty")


def test_bf16_load_keeps_bias_fp32(tmp_path, model):
    save_checkpoint(tmp_path, step=1, tokens=1, model=model)
    loaded = load_model(tmp_path, dtype=torch.bfloat16)
    assert loaded.layers["1"].mlp.gate.expert_bias.dtype == torch.float32
    assert loaded.embed_tokens.weight.dtype == torch.bfloat16
    meta = json.loads((tmp_path / "step_00000001" / "meta.json").read_text())
    assert set(meta["files"]) == {"model.safetensors", "model.yaml"}
