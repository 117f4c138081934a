"""MFU is per device: a job's tokens/s is spread over every rank before dividing by one peak."""

from types import SimpleNamespace

import pytest

from moelab.parallel.dims import ParallelDims
from moelab.train.distributed import DistContext
from moelab.train.trainer import Trainer


def _mfu(tokens_per_s: float, num_devices: int, peak_tflops: float | None = 1.0):
    fake = SimpleNamespace(
        peak_tflops=peak_tflops,
        flops_per_token=1e6,
        dist=SimpleNamespace(num_devices=num_devices),
    )
    return Trainer._mfu(fake, tokens_per_s)


def test_mfu_divides_by_every_device():
    assert _mfu(1e6, 1) == pytest.approx(1.0)
    assert _mfu(1e6, 4) == pytest.approx(0.25)
    assert _mfu(1e6, 4, peak_tflops=None) is None


def test_num_devices_counts_pipeline_stages_and_data_parallel_ranks():
    ctx = DistContext(enabled=True, device=None, dp_size=4, dims=ParallelDims(pp=2, ep=2))
    assert ctx.num_devices == 8
    assert DistContext(enabled=False, device=None).num_devices == 1
