"""Pipeline schedules on 2 gloo ranks give the single-process gradients (fp32)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from moelab.model.losses import cross_entropy, load_balancing_loss
from moelab.model.transformer import build_model
from moelab.parallel.pipeline import split_layers, stage_layout

from .distributed import run_distributed
from .test_ep_fsdp import _cfg, _data

pytestmark = pytest.mark.distributed


def test_layouts():
    assert stage_layout("1F1B", 2, 1) == [[0], [1]]
    assert stage_layout("Interleaved1F1B", 2, 2) == [[0, 2], [1, 3]]
    assert stage_layout("ZBVZeroBubble", 2, 2) == [[0, 3], [1, 2]]
    assert split_layers(5, 2) == [[0, 1, 2], [3, 4]]
    with pytest.raises(ValueError, match="only 3 layers"):
        split_layers(3, 4)


def _loss_fn(logits, targets):
    return cross_entropy(logits, targets)


SCHEDULES = ["1F1B", "GPipe", "Interleaved1F1B", "ZBVZeroBubble", "DualPipeV"]
LB = 0.01


def _pp_worker(rank, world, schedules):
    for schedule in schedules:  # one spawn for all schedules: process start-up dominates
        _check_schedule(rank, world, schedule)


def _check_schedule(rank, world, schedule):
    from moelab.parallel.pipeline import build_pipeline

    cfg = _cfg()
    cfg.num_layers = 4
    x = _data()
    ref = build_model(cfg, seed=1)
    for chunk in x.chunk(4):  # the schedule's 4 micro batches; the LB loss is per micro batch
        out = ref(chunk[:, :-1])
        loss = _loss_fn(out.logits, chunk[:, 1:]) + LB * load_balancing_loss(out.router, 8, 2)
        (loss / 4).backward()
    num_moe = cfg.num_moe_layers

    def aux(routings, batch_size):  # this stage's share of the mean over layers
        lb = load_balancing_loss(routings, 8, 2) * len(routings) / num_moe
        return LB * lb, {"lb_loss": lb.detach()}

    model = build_model(cfg, seed=1)
    modules, sched = build_pipeline(
        model,
        schedule=schedule,
        pp_rank=rank,
        pp_size=world,
        group=dist.group.WORLD,
        device=torch.device("cpu"),
        n_microbatches=4,
        loss_fn=_loss_fn,
        aux_loss_fn=aux,
    )
    inputs, targets = x[:, :-1], x[:, 1:]
    last_rank = any(m.lm_head is not None for m in modules)
    first_rank = any(m.embed_tokens is not None for m in modules)
    losses = []
    sched.step(inputs if first_rank else None, target=targets if last_rank else None, losses=losses)
    ref_params = dict(ref.named_parameters())
    checked = 0
    for mod in modules:
        for name, p in mod.named_parameters():
            torch.testing.assert_close(
                p.grad, ref_params[name].grad, atol=1e-6, rtol=0, msg=f"{schedule} {name}"
            )
            checked += 1
    assert checked > 0
    counts = [m.stats(last=4)[0] for m in modules]  # the shape-inference forward left out
    assert sum(len(c) for c in counts) > 0
    for per_layer in counts:  # every token of the 4 micro batches counted once, k times
        assert all(int(c.sum()) == x[:, :-1].numel() * 2 for c in per_layer.values())


def test_schedules_match_single_process():
    """1F1B, GPipe, Interleaved1F1B (dots.llm1), ZBV, DualPipeV, with an LB loss added per
    stage: every stage's gradients."""
    run_distributed(_pp_worker, world_size=2, args=(SCHEDULES,))
