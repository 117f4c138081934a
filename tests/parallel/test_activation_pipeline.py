"""Activation checkpointing with split-backward (zero-bubble) pipeline schedules, 2 gloo ranks.

ZBVZeroBubble, DualPipeV and InterleavedZeroBubble (gradients only) run each backward as an input-gradient pass and a later
weight-gradient pass; a checkpointed block is recomputed in each (``parallel.activation``,
``pipeline.Stage``). Checked: every stage's gradients equal the single-process model's, with
each block run at most 3 times per micro batch (forward, input pass, weight pass; 2 where the
backward is not split); and 3 trainer steps give the single process's losses,
gradient norms, loads and weights, and those of the same schedule without checkpointing.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from moelab.model.losses import cross_entropy
from moelab.model.transformer import build_model
from moelab.parallel.activation import apply_activation_checkpointing

from .distributed import run_distributed
from .test_ep_fsdp import _cfg, _data

pytestmark = pytest.mark.distributed

SCHEDULES = ["ZBVZeroBubble", "DualPipeV", "InterleavedZeroBubble"]
N_MICRO = 4


def _grads_worker(rank, world):
    from moelab.parallel.pipeline import build_pipeline

    cfg = _cfg()
    cfg.num_layers = 4  # one block per stage of the V
    x = _data()
    ref = build_model(cfg, seed=1)
    for chunk in x.chunk(N_MICRO):
        (cross_entropy(ref(chunk[:, :-1]).logits, chunk[:, 1:]) / N_MICRO).backward()
    want = dict(ref.named_parameters())
    for schedule in SCHEDULES:
        model = build_model(cfg, seed=1)
        assert len(apply_activation_checkpointing(model, "full")) == 4
        calls: dict[str, int] = {}
        for name, block in model.layers.items():
            block.input_layernorm.register_forward_hook(
                lambda *_, n=name, c=calls: c.__setitem__(n, c.get(n, 0) + 1)
            )
        modules, sched = build_pipeline(
            model,
            schedule=schedule,
            pp_rank=rank,
            pp_size=world,
            group=dist.group.WORLD,
            device=torch.device("cpu"),
            n_microbatches=N_MICRO,
            loss_fn=cross_entropy,
        )
        first = any(m.embed_tokens is not None for m in modules)
        last = any(m.lm_head is not None for m in modules)
        for _ in range(2):  # the first step also runs the runtime's shape-inference forward
            calls.clear()
            model.zero_grad()
            sched.step(x[:, :-1] if first else None, target=x[:, 1:] if last else None)
        worst = 0.0
        for mod in modules:
            for name, p in mod.named_parameters():
                torch.testing.assert_close(p.grad, want[name].grad, atol=1e-6, rtol=0, msg=name)
                worst = max(worst, (p.grad - want[name].grad).abs().max().item())
            # Per micro batch: the forward, then 1 recompute for a full backward (stage 0's
            # weight pass; DualPipeV's overlapped B) or 2 for a split one (without the
            # weight pass's GraphExecGroup: ~13 more, one per parameter group).
            for name in mod.layers:
                assert 2 * N_MICRO <= calls[name] <= 3 * N_MICRO, (schedule, name, calls)
                if schedule != "DualPipeV":  # every backward split, but stage 0's
                    assert calls[name] == N_MICRO * (2 if mod.embed_tokens is not None else 3)
        print(f"rank {rank} {schedule}: max |grad diff| {worst:.1e}, forward runs {calls}")


def test_checkpointed_zero_bubble_stages_give_single_process_grads_recomputing_once_per_pass():
    run_distributed(_grads_worker, world_size=2)


def _train_worker(rank, world, cfg_paths):
    from moelab.parallel.activation import is_checkpointed
    from moelab.train.config import TrainConfig
    from moelab.train.trainer import Trainer

    for path in cfg_paths:  # one spawn for all runs: process start-up dominates
        cfg = TrainConfig.from_yaml(path)
        trainer = Trainer(cfg, log=lambda *_: None)
        blocks = list(trainer.model.layers.values())  # this rank's blocks
        on = cfg.parallel.activation_checkpoint == "full"
        assert blocks and [is_checkpointed(b) for b in blocks] == [on] * len(blocks)
        trainer.run()


@pytest.mark.slow
def test_trainer_with_checkpointing_and_zero_bubble_schedules_matches(tmp_path):
    """PP=2, 4 micro batches of 2: ZBVZeroBubble and DualPipeV with activation_checkpoint=full,
    3 optimizer steps, against one process and against the schedule without checkpointing;
    and FSDP 2 without a pipeline with checkpointing against one process."""
    from moelab.checkpoint.dcp import consolidate
    from moelab.checkpoint.layout import load_model
    from moelab.train.trainer import train

    from ..train.conftest import make_shards, tiny_config
    from .test_train_ep_pp import COMMON, PP_OVER, _assert_same_run, _assert_same_weights, _records

    shards = make_shards(tmp_path / "shards")
    over = {**COMMON, **PP_OVER}
    train(tiny_config(tmp_path / "single", shards, max_steps=3, **over), log=lambda *_: None)
    runs = {
        "zbv_ac": (2, "ZBVZeroBubble", "full"),
        "dualpipev_ac": (2, "DualPipeV", "full"),
        "dualpipev": (2, "DualPipeV", "none"),
        # No pipeline: FSDP 2 (parameters resharded after the forward; the recompute runs
        # between FSDP's pre-backward all-gather and its reduce-scatter, as with torchtitan's
        # checkpoint_wrapper).
        "fsdp_ac": (1, "1F1B", "full"),
    }
    paths = []
    for name, (pp, schedule, ac) in runs.items():
        layout = {
            "parallel.pp": pp,
            "parallel.pp_schedule": schedule,
            "parallel.activation_checkpoint": ac,
        }
        cfg = tiny_config(tmp_path / name, shards, max_steps=3, **over, **layout)
        cfg.to_yaml(tmp_path / f"{name}.yaml")
        paths.append(str(tmp_path / f"{name}.yaml"))
    run_distributed(_train_worker, world_size=2, args=(paths,))
    single = tmp_path / "single" / "run"
    step3 = "step_00000003"
    for name in ("zbv_ac", "dualpipev_ac", "fsdp_ac"):
        run = tmp_path / name / "run"
        _assert_same_run(_records(run), _records(single))
        _assert_same_weights(run / step3, single / step3, tmp_path / f"c_{name}", 1e-6)
    # ... and DualPipeV with checkpointing as without: the recompute repeats the forward exactly.
    ac, plain = (tmp_path / n / "run" for n in ("dualpipev_ac", "dualpipev"))
    _assert_same_run(_records(ac), _records(plain), atol=0.0)
    got, want = (
        load_model(consolidate(run / step3, tmp_path / f"w_{run.parent.name}")).state_dict()
        for run in (ac, plain)
    )
    assert set(got) == set(want)
    worst = max((got[name] - t).abs().max().item() for name, t in want.items())
    print(f"with vs without checkpointing: max |param diff| {worst:.2e}")
    assert worst == 0.0
