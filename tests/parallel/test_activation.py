"""Activation checkpointing from outside the model: same loss and gradients, blocks recomputed."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.distributed.pipelining._backward import stage_backward_input, stage_backward_weight
from torch.utils.checkpoint import GraphExecGroup

from moelab.model.losses import cross_entropy, load_balancing_loss
from moelab.model.transformer import build_model
from moelab.parallel.activation import apply_activation_checkpointing, is_checkpointed
from moelab.train.trainer import Trainer

from ..train.conftest import make_shards, tiny_config
from .test_ep_fsdp import _cfg, _data


class _Given(torch.nn.Module):
    """An embedding that returns the given hidden states (a pipeline stage's received input)."""

    def __init__(self, h: torch.Tensor):
        super().__init__()
        self.h = h

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.h


def _step(model, x, split: bool = False):
    """Loss with an LB term (router gradients flow through the recomputed routing); counts the
    calls of each block's first module (the recompute stops early after its last saved tensor).

    ``split``: the backward as zero-bubble pipeline stages run it (torch's own
    ``stage_backward_input`` then ``stage_backward_weight``, the latter one autograd call per
    parameter group, under one ``GraphExecGroup`` as ``pipeline.Stage`` runs it), from the
    embedding output: each checkpointed block is recomputed once in each pass."""
    calls = {}
    for name, block in model.layers.items():
        block.input_layernorm.register_forward_hook(
            lambda *_, n=name: calls.__setitem__(n, calls.get(n, 0) + 1)
        )
    if not split:
        out = model(x[:, :-1])
        loss = cross_entropy(out.logits, x[:, 1:]) + 0.01 * load_balancing_loss(out.router, 8, 2)
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in model.named_parameters()}, calls
    embed = model.embed_tokens
    h = embed(x[:, :-1]).detach().requires_grad_()  # the stage input, as a pipeline stage gets it
    model.embed_tokens = _Given(h)
    out = model(x[:, :-1])
    loss = cross_entropy(out.logits, x[:, 1:]) + 0.01 * load_balancing_loss(out.router, 8, 2)
    value = loss.detach().clone()  # stage_backward_input detaches the loss in place
    weights = list(model.parameters())
    (dh,), groups = stage_backward_input([loss], None, [h], iter(weights))
    assert len(groups) > 10  # one autograd call each in the weight pass
    with GraphExecGroup():  # as pipeline.Stage runs the weight pass: one recompute for all
        stage_backward_weight(iter(weights), groups)
    model.embed_tokens = embed
    torch.autograd.backward(embed(x[:, :-1]), dh)
    return value, {n: p.grad for n, p in model.named_parameters()}, calls


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


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_split_input_and_weight_backward_recomputes_in_each_and_gives_the_same_grads(mode):
    """The zero-bubble schedules' backward: torch's composable checkpoint (used before) failed
    in the weight pass ('_GeneratorContextManager' object has no attribute 'args')."""
    x = _data()
    ref_loss, ref_grads, _ = _step(build_model(_cfg(), seed=1), x)
    model = build_model(_cfg(), seed=1)
    chosen = set(apply_activation_checkpointing(model, mode, every=2))
    loss, grads, calls = _step(model, x, split=True)
    # forward, then once per pass: input-gradient and weight-gradient
    assert calls == {n: 3 if n in chosen else 1 for n in model.layers}
    assert torch.equal(loss, ref_loss)
    assert set(grads) == set(ref_grads)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], atol=1e-7, rtol=1e-6, msg=name)


def test_a_deep_copy_checkpoints_itself():
    """The forward is a bound method: a copy recomputes its own block, not the original's."""
    model = build_model(_cfg(), seed=1)
    apply_activation_checkpointing(model, "full")
    twin = copy.deepcopy(model)
    assert all(is_checkpointed(b) for b in twin.layers.values())
    assert all(b.forward.__self__ is b for b in twin.layers.values())
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()  # the original changes; the copy must not see it
    x = _data()
    loss, grads, calls = _step(twin, x)
    ref_loss, ref_grads, _ = _step(build_model(_cfg(), seed=1), x)
    assert set(calls.values()) == {2}
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
        applied = [is_checkpointed(b) for b in trainer.model.layers.values()]
        assert applied == [mode == "full"] * len(applied)
        losses[mode] = trainer.run()["last"]["loss"]
    assert losses["full"] == pytest.approx(losses["none"], abs=1e-6)
