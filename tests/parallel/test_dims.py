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
