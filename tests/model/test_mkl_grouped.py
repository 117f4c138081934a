"""MKL's batch GEMM as the CPU grouped GEMM: same products as the per-expert loop, forward and
backward, for uneven groups with empty experts; wired into GroupedExperts only where it applies."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from moelab.model import mkl_grouped
from moelab.model.experts import GroupedExperts

pytestmark = pytest.mark.skipif(
    not mkl_grouped.available(), reason="this torch build does not export cblas_sgemm_batch"
)


def _loop_reference(x, w, counts):
    return torch.cat([rows @ w[e].T for e, rows in enumerate(x.split(counts))])


@pytest.mark.parametrize("counts", [[3, 0, 5, 1, 0, 7], [0, 0, 0, 0, 0, 0], [0, 0, 16, 0, 0, 0]])
def test_forward_and_backward_equal_the_per_expert_loop(counts):
    gen = torch.Generator().manual_seed(sum(counts))
    x = torch.randn(sum(counts), 24, generator=gen, requires_grad=True)
    w = torch.randn(len(counts), 40, 24, generator=gen, requires_grad=True)
    y = mkl_grouped.grouped_linear(x, w, torch.tensor(counts))
    ref = _loop_reference(x, w, counts) if sum(counts) else x.new_zeros(0, 40)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    grad = torch.randn(y.shape, generator=gen)
    got = torch.autograd.grad(y, (x, w), grad, allow_unused=True)
    if sum(counts):
        want = torch.autograd.grad(ref, (x, w), grad)
    else:
        want = (torch.zeros_like(x), torch.zeros_like(w))
    for g, r in zip(got, want, strict=True):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)
    empty = [e for e, n in enumerate(counts) if n == 0]
    assert got[1][empty].abs().sum() == 0  # experts without rows get exactly zero gradient


def test_non_contiguous_inputs_are_read_correctly():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(10, 32, generator=gen).T  # (32, 10), not contiguous
    w = torch.randn(4, 10, 6, generator=gen).transpose(1, 2)  # (4, 6, 10), not contiguous
    counts = [8, 8, 0, 16]
    torch.testing.assert_close(
        mkl_grouped.grouped_linear(x, w, counts), _loop_reference(x, w, counts)
    )


@pytest.mark.parametrize(
    "counts, match",
    [([3, 3], "summing to the 8 rows"), ([4, 4, 0], "each of the 2 experts"), ([9, -1], ">= 0")],
)
def test_bad_counts_are_refused_before_any_memory_is_read(counts, match):
    with pytest.raises(ValueError, match=match):
        mkl_grouped.grouped_linear(torch.randn(8, 4), torch.randn(2, 5, 4), np.array(counts))


def test_grouped_experts_take_it_in_fp32_on_cpu_and_not_in_bf16(monkeypatch):
    experts = GroupedExperts(4, 16, 8)
    torch.nn.init.normal_(experts.gate_up_proj)
    torch.nn.init.normal_(experts.down_proj)
    calls = []
    real = mkl_grouped.grouped_linear
    monkeypatch.setattr(mkl_grouped, "grouped_linear", lambda *a: calls.append(1) or real(*a))
    counts = torch.tensor([5, 0, 2, 9])
    x = torch.randn(16, 16)
    y = experts(x, counts)
    assert len(calls) == 2  # gate/up and down
    torch.testing.assert_close(y, experts._forward_loop(x, counts))
    experts.to(torch.bfloat16)(x.to(torch.bfloat16), counts)
    assert len(calls) == 2
    monkeypatch.setattr(mkl_grouped, "ENABLED", False)
    experts.float()(x, counts)
    assert len(calls) == 2


def test_switched_off_by_environment():
    env = dict(os.environ, MOELAB_MKL_GROUPED="0")
    code = "from moelab.model import mkl_grouped; print(mkl_grouped.available())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr
