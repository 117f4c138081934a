"""Schedule-level overlap (``parallel.pp_overlap_f_b``): DualPipeV's OVERLAP_F_B pairs run their
forward and backward at the same time, on 4 gloo ranks (PP=2 × EP=2).

Equivalence: every gradient of one DualPipeV step equals the runtime's default (the pair one
after the other) and the single-process model within 1e-6, also with ``ep_overlap_chunks=2``
(each layer's pieces pipelined inside both threads); 3 trainer steps give the single
process's losses, gradient norms, loads and weights within 1e-6. Probe: in each overlapped
action, the backward's expert backward has begun and not finished when the forward issues an
all-to-all. Each side waits for the other there (forward: for the backward to reach its experts;
backward: for the forward's all-to-all to be issued), so F then B in one thread cannot pass: the
control run (``concurrent=False``: same function, no thread) shows no overlapped action.
"""

from __future__ import annotations

import threading
import time

import pytest
import torch
import torch.distributed as dist
from torch.distributed.pipelining.schedules import _ComputationType

from moelab.config import ConfigError
from moelab.model.experts import GroupedExperts
from moelab.model.losses import cross_entropy
from moelab.model.transformer import build_model
from moelab.parallel.dims import ParallelDims

from .distributed import run_distributed
from .test_ep_fsdp import _cfg, _data

pytestmark = pytest.mark.distributed

N_MICRO = 4  # DualPipeV needs >= 4 stages' worth; each rank then runs 3 OVERLAP_F_B actions


def test_config_rejects_overlap_without_an_overlapping_schedule():
    with pytest.raises(ConfigError, match="pp_overlap_f_b.*ZBVZeroBubble emits no OVERLAP_F_B"):
        ParallelDims(pp=2, ep=2, pp_schedule="ZBVZeroBubble", pp_overlap_f_b=True).validate(
            "parallel"
        )
    with pytest.raises(ConfigError, match="needs pp > 1 and ep > 1"):
        ParallelDims(pp=2, ep=1, pp_schedule="DualPipeV", pp_overlap_f_b=True).validate("parallel")
    ParallelDims(pp=2, ep=2, pp_schedule="DualPipeV", pp_overlap_f_b=True).validate("parallel")


def _model_cfg():
    cfg = _cfg()
    cfg.num_layers = 4  # one block per stage of the V, every block MoE: all stages all-to-all
    cfg.moe.first_k_dense_replace = 0
    return cfg


class _Probe:
    """Per OVERLAP_F_B action: did the forward issue an all-to-all while the backward was inside
    its expert backward? Each side waits (up to ``timeout``) for the other at that point.
    ``concurrent``: run the actions with moelab's function as configured, else its control."""

    def __init__(self, concurrent: bool, timeout: float):
        self.concurrent, self.timeout, self.records = concurrent, timeout, []
        self.b_started, self.f_issued = threading.Event(), threading.Event()
        self.f_waited = self.b_waited = False
        self.times: dict[str, float] = {}
        self.groups: dict[str | None, set] = {}
        self._all_to_all = dist.all_to_all_single

    def action(self, fn):
        from moelab.parallel.overlap_f_b import runs_together

        def wrapped(action, ctx):
            if not runs_together(action, ctx.schedule_ref):  # in turn in both runs: not probed
                self.f_waited = self.b_waited = True
                fn(action, ctx)
                return
            self.b_started.clear()
            self.f_issued.clear()
            self.f_waited = self.b_waited = False
            self.times = {}
            fn(action, ctx)
            t = self.times
            overlapped = t["issue"] < t["b_end"] and t["b_begin"] < t["done"]
            self.records.append((self.overlapped_in_time, overlapped))

        return wrapped

    def all_to_all(self, *args, **kwargs):
        from moelab.parallel.overlap_f_b import sub_action_role

        self.groups.setdefault(sub_action_role(), set()).add(kwargs.get("group"))
        first = sub_action_role() == "F" and not self.f_waited
        if first:
            self.f_waited = True
            self.overlapped_in_time = self.b_started.wait(self.timeout)
            self.times["issue"] = time.perf_counter()
            self.f_issued.set()
        work = self._all_to_all(*args, **kwargs)
        if first:
            if kwargs.get("async_op"):
                work.wait()
            self.times["done"] = time.perf_counter()
        return work

    def expert_backward_begins(self, *_):
        from moelab.parallel.overlap_f_b import sub_action_role

        if sub_action_role() == "B" and not self.b_waited:
            self.b_waited = True
            self.times["b_begin"] = time.perf_counter()
            self.b_started.set()
            self.f_issued.wait(self.timeout)

    def expert_backward_ends(self, *_):
        from moelab.parallel.overlap_f_b import sub_action_role

        if sub_action_role() == "B" and "b_end" not in self.times:
            self.times["b_end"] = time.perf_counter()


def _runner(meshes, backward_group, chunks=1):
    from moelab.parallel.expert import apply_expert_parallel
    from moelab.parallel.pipeline_runner import PipelineRunner

    model = build_model(_model_cfg(), seed=1)
    runner = PipelineRunner(
        model,
        schedule="DualPipeV",
        pp_rank=meshes["pp"].get_local_rank(),
        pp_size=2,
        group=meshes["pp"].get_group(),
        device=torch.device("cpu"),
        stages_per_rank=2,
        aux_loss_fn=None,
        part_names=[],
        overlap_f_b=backward_group is not None,
    )
    apply_expert_parallel(
        model, mesh=meshes["ep"], overlap_chunks=chunks, backward_group=backward_group
    )
    return model, runner


def _grads(model, runner, x, probe=None):
    """One DualPipeV step on this EP rank's half of the batch; dense gradients summed over the
    two halves (experts: the all-to-all backward already brought both halves' share)."""
    from moelab.parallel.overlap_f_b import make_overlap_f_b

    _, sched = runner._pipeline(N_MICRO)
    if probe is not None:
        for mod in model.modules():
            if isinstance(mod, GroupedExperts):
                mod.register_full_backward_pre_hook(probe.expert_backward_begins)
                mod.register_full_backward_hook(probe.expert_backward_ends)
        sched.register_custom_function(
            _ComputationType.OVERLAP_F_B, probe.action(make_overlap_f_b(probe.concurrent))
        )
        dist.all_to_all_single = probe.all_to_all  # the dispatcher calls it through the module
    try:
        runner.step(x[:, :-1], x[:, 1:], N_MICRO)
    finally:
        if probe is not None:
            dist.all_to_all_single = probe._all_to_all
    out = {}
    for name, p in model.named_parameters():
        g = p.grad.clone()
        if not name.endswith((".experts.gate_up_proj", ".experts.down_proj")):
            dist.all_reduce(g, group=_ep_group(model))
        out[name] = g
    return out


def _ep_group(model):
    return next(m.dispatcher.group for m in model.modules() if hasattr(m, "dispatcher"))


def _pipeline_worker(rank, world):
    from moelab.train.distributed import DistContext, _backward_ep_group

    dims = ParallelDims(pp=2, ep=2, pp_schedule="DualPipeV").resolve(world, 8)
    meshes = dims.build_mesh("cpu")
    ctx = DistContext(True, torch.device("cpu"), dims=dims, meshes=meshes)
    backward_group = _backward_ep_group(ctx)
    ep_rank = meshes["ep"].get_local_rank()
    x = _data()  # 4 sequences: EP rank r reads 2, split into 4 micro batches of 1
    local = x[2 * ep_rank : 2 * ep_rank + 2].repeat(2, 1)
    ref = build_model(_model_cfg(), seed=1)
    for r in range(2):
        for chunk in x[2 * r : 2 * r + 2].repeat(2, 1).chunk(N_MICRO):
            (cross_entropy(ref(chunk[:, :-1]).logits, chunk[:, 1:]) / N_MICRO).backward()
    el = 8 // 2
    want = {}
    for name, p in ref.named_parameters():
        g = p.grad
        if name.endswith((".experts.gate_up_proj", ".experts.down_proj")):
            g = g[ep_rank * el : (ep_rank + 1) * el]
        want[name] = g
    default = _grads(*_runner(meshes, None), local)
    overlapped = _grads(*_runner(meshes, backward_group), local)
    composed = _grads(*_runner(meshes, backward_group, chunks=2), local)
    probe = _Probe(concurrent=True, timeout=30.0)  # waits only as long as the other side needs
    probed = _grads(*_runner(meshes, backward_group), local, probe)
    control = _Probe(concurrent=False, timeout=0.3)  # always times out: F runs before B
    _grads(*_runner(meshes, backward_group), local, control)
    worst = {"default": 0.0, "one process": 0.0}
    assert set(overlapped) == set(default) and len(default) > 0
    for name, g in overlapped.items():
        for against, grads in (("default", default), ("one process", want)):
            torch.testing.assert_close(g, grads[name], atol=1e-6, rtol=0, msg=f"{against} {name}")
            worst[against] = max(worst[against], (g - grads[name]).abs().max().item())
        torch.testing.assert_close(probed[name], g, atol=1e-6, rtol=0)
        torch.testing.assert_close(composed[name], g, atol=1e-6, rtol=0, msg=f"chunks=2 {name}")
    assert len(probe.records) == len(control.records) > 0, (probe.records, control.records)
    assert all(r == (True, True) for r in probe.records), probe.records
    assert not any(waited for waited, _ in control.records), control.records
    # The forward's all-to-alls on the EP group, the backward's on the second one (same ranks).
    assert probe.groups["F"] == {meshes["ep"].get_group()}, probe.groups
    assert probe.groups["B"] == {backward_group}, probe.groups
    print(f"rank {rank}: max |grad diff| {worst}; probe {probe.records}; control {control.records}")


def test_overlapped_pairs_match_the_default_and_one_process_and_run_together():
    run_distributed(_pipeline_worker, world_size=4)


def _train_worker(rank, world, cfg_paths):
    from moelab.train.config import TrainConfig
    from moelab.train.trainer import train

    for path in cfg_paths:  # one spawn for both runs: process start-up dominates
        train(TrainConfig.from_yaml(path), log=lambda *_: None)


def test_trainer_with_overlapped_pairs_matches_default_and_single_process(tmp_path):
    """PP=2 (DualPipeV, 4 micro batches per replica) × EP=2 × FSDP 2 inside each stage: 3
    optimizer steps with ``pp_overlap_f_b`` give the losses, gradient norms, expert loads and
    weights (consolidated from DCP) of the runtime's default and of one process within 1e-6;
    with ``activation_checkpoint=full`` as well, those of the run without it exactly."""
    from moelab.checkpoint.dcp import consolidate
    from moelab.checkpoint.layout import load_model
    from moelab.train.trainer import train

    from ..train.conftest import make_shards, tiny_config
    from .test_train_ep_pp import COMMON, _assert_same_run, _assert_same_weights, _records

    shards = make_shards(tmp_path / "shards")
    over = {
        **COMMON,
        "checkpoint.every_tokens": 384,  # 3 steps of 8 x 16 tokens
        "model.num_layers": 4,
        "batch.micro_batch_size": 1,
    }
    train(tiny_config(tmp_path / "single", shards, max_steps=3, **over), log=lambda *_: None)
    layout = {"parallel.pp": 2, "parallel.ep": 2, "parallel.pp_schedule": "DualPipeV"}
    paths = []
    runs = (("default", False, "none"), ("overlap", True, "none"), ("overlap_ac", True, "full"))
    for name, on, ac in runs:
        cfg = tiny_config(
            tmp_path / name,
            shards,
            max_steps=3,
            **over,
            **layout,
            **{"parallel.pp_overlap_f_b": on, "parallel.activation_checkpoint": ac},
        )
        cfg.to_yaml(tmp_path / f"{name}.yaml")
        paths.append(str(tmp_path / f"{name}.yaml"))
    run_distributed(_train_worker, world_size=4, args=(paths,))
    single, default, overlap = (tmp_path / n / "run" for n in ("single", "default", "overlap"))
    _assert_same_run(_records(overlap), _records(single))
    _assert_same_run(_records(overlap), _records(default))
    step3 = "step_00000003"
    _assert_same_weights(overlap / step3, single / step3, tmp_path / "c", 1e-6)
    _assert_same_weights(default / step3, single / step3, tmp_path / "c2", 1e-6)
    got, want = (
        load_model(consolidate(run / step3, tmp_path / f"c_{run.parent.name}")).state_dict()
        for run in (overlap, default)
    )
    worst = max((got[name] - t).abs().max().item() for name, t in want.items())
    print(f"overlap vs default: max |param diff| {worst:.2e}")
    assert set(got) == set(want) and worst <= 1e-6
    # With activation checkpointing (recomputed blocks re-issue their forward all-to-alls from
    # inside the backward, on the backward's group): the same run as without, exactly.
    ac = tmp_path / "overlap_ac" / "run"
    _assert_same_run(_records(ac), _records(overlap), atol=0.0)
    with_ac = load_model(consolidate(ac / step3, tmp_path / "c_overlap_ac")).state_dict()
    worst = max((with_ac[name] - t).abs().max().item() for name, t in got.items())
    print(f"overlap with vs without checkpointing: max |param diff| {worst:.2e}")
    assert set(with_ac) == set(got) and worst == 0.0
