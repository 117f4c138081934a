"""Activation checkpointing from outside the model: same loss and gradients, blocks recomputed."""

from __future__ import annotations

import pytest
import torch
from torch.distributed._composable import checkpoint

from moelab.model.losses import cross_entropy, load_balancing_loss
from moelab.model.transformer import build_model
from moelab.parallel.activation import apply_activation_checkpointing
from moelab.train.trainer import Trainer

from ..train.conftest import make_shards, tiny_config
from .test_ep_fsdp import _cfg, _data


def _step(model, x):
    """Loss with an LB term (router gradients flow through the recomputed routing); counts the
    calls of each block's first module (the recompute stops early after its last saved tensor)."""
    calls = {}
    for name, block in model.layers.items():
        block.input_layernorm.register_forward_hook(
            lambda *_, n=name: calls.__setitem__(n, calls.get(n, 0) + 1)
        )
    out = model(x[:, :-1])
    loss = cross_entropy(out.logits, x[:, 1:]) + 0.01 * load_balancing_loss(out.router, 8, 2)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}, calls


@pytest.mark.parametrize(
    ("mode", "recomputed"), [("full", {"0", "1", "2"}), ("selective", {"0", "2"})]
)
def test_same_loss_and_grads_and_only_chosen_blocks_recompute(mode, recomputed):
    x = _data()
    ref_loss, ref_grads, ref_calls = _step(build_model(_cfg(), seed=1), x)
    assert set(ref_calls.values()) == {1}
    model = build_model(_cfg(), seed=1)
    keys = list(model.state_dict())
    assert set(apply_activation_checkpointing(model, mode, every=2)) == recomputed
    assert list(model.state_dict()) == keys  # no wrapper module: names unchanged
    loss, grads, calls = _step(model, x)
    assert {n for n, c in calls.items() if c == 2} == recomputed  # forward ran again in backward
    assert torch.equal(loss, ref_loss)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], atol=1e-7, rtol=1e-6, msg=name)


def test_none_and_bad_mode():
    model = build_model(_cfg(), seed=1)
    assert apply_activation_checkpointing(model, "none") == []
    with pytest.raises(ValueError, match="choose one of"):
        apply_activation_checkpointing(model, "some")


def test_trainer_switch_keeps_the_losses(tmp_path):
    shards = make_shards(tmp_path / "shards")
    losses = {}
    for mode in ("none", "full"):
        over = {"parallel.activation_checkpoint": mode, "schedule.kind": "constant"}
        trainer = Trainer(tiny_config(tmp_path / mode, shards, max_steps=3, **over), log=print)
        applied = [checkpoint.state(b) is not None for b in trainer.model.layers.values()]
        assert applied == [mode == "full"] * len(applied)
        losses[mode] = trainer.run()["last"]["loss"]
    assert losses["full"] == pytest.approx(losses["none"], abs=1e-6)
