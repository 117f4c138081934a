"""ParallelDims: pure validation against the world size, errors that name the field."""

from __future__ import annotations

import pytest

from moelab.config import ConfigError
from moelab.parallel.dims import ParallelDims


def test_dp_shard_fills_the_world():
    dims = ParallelDims(pp=2, ep=2).resolve(world_size=8, num_experts=64)
    assert (dims.dp_shard, dims.dp_shard_mod_ep, dims.dp_size) == (4, 2, 4)


@pytest.mark.parametrize(
    ("dims", "world", "experts", "match"),
    [
        (ParallelDims(pp=3), 8, None, "not divisible"),
        (ParallelDims(dp_shard=3), 8, None, "world size is 8"),
        (ParallelDims(ep=3), 8, None, r"parallel.ep: \(3\) must divide dp_shard"),
        (ParallelDims(ep=4), 8, 6, "must divide the number of experts"),
    ],
)
def test_inconsistent_layouts_are_refused(dims, world, experts, match):
    with pytest.raises(ConfigError, match=match):
        dims.resolve(world, experts)


def test_field_validation():
    with pytest.raises(ConfigError, match="dp_shard"):
        ParallelDims.from_dict({"dp_shard": 0})
    with pytest.raises(ConfigError, match="ep_overlap_chunks: must be >= 1, got 0"):
        ParallelDims.from_dict({"ep": 2, "ep_overlap_chunks": 0})


def test_unknown_pipeline_schedule_names_the_field():
    with pytest.raises(ConfigError, match=r"pp_schedule: Unknown schedule name 'Zigzag'"):
        ParallelDims.from_dict({"pp": 2, "pp_schedule": "Zigzag"})


def test_zero_bubble_schedules_are_the_ones_that_split_the_backward():
    from moelab.parallel.pipeline import splits_backward

    for name in ("ZBVZeroBubble", "DualPipeV", "InterleavedZeroBubble"):
        assert splits_backward(name)
    for name in ("1F1B", "GPipe", "Interleaved1F1B", "LoopedBFS"):
        assert not splits_backward(name)


def test_pipeline_refuses_tied_embeddings():
    from moelab.model.transformer import build_model
    from moelab.parallel.pipeline_runner import PipelineRunner

    from .test_ep_fsdp import _cfg

    cfg = _cfg()
    cfg.tie_word_embeddings = True
    with pytest.raises(ValueError, match="tie_word_embeddings is not supported"):
        PipelineRunner(
            build_model(cfg, seed=0),
            schedule="1F1B",
            pp_rank=0,
            pp_size=2,
            group=None,
            device=None,
            stages_per_rank=1,
            aux_loss_fn=None,
            part_names=[],
        )


@pytest.mark.parametrize("schedule", ["ZBVZeroBubble", "DualPipeV", "InterleavedZeroBubble"])
def test_checkpointing_is_accepted_with_split_backward_schedules(schedule):
    """Refused until their weight pass could recompute checkpointed blocks
    (tests/parallel/test_activation_pipeline.py)."""
    for mode in ("full", "selective"):
        ParallelDims(pp=2, pp_schedule=schedule, activation_checkpoint=mode).validate("parallel")
