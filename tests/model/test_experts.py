"""Grouped GEMM and the per-expert loop compute the same thing, forward and backward."""

from __future__ import annotations

import pytest
import torch

from moelab.model.dispatch import LocalDispatcher
from moelab.model.experts import GroupedExperts, grouped_mm_supported


def _setup(dtype, E=8, D=64, F=32, T=50, K=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    experts = GroupedExperts(E, D, F)
    with torch.no_grad():
        experts.gate_up_proj.copy_(torch.randn(E, 2 * F, D, generator=gen) * 0.1)
        experts.down_proj.copy_(torch.randn(E, D, F, generator=gen) * 0.1)
    experts = experts.to(dtype)
    x = torch.randn(T, D, generator=gen).to(dtype)
    ids = torch.randint(0, E - 2, (T, K), generator=gen)  # experts E-2, E-1 get no tokens
    weights = torch.rand(T, K, generator=gen)
    return experts, x, ids, weights


def _run(experts, x, ids, weights, impl):
    experts.impl = impl
    d = LocalDispatcher(experts.num_experts)
    xs, counts, state = d.dispatch(x, ids, weights)
    return d.combine(experts(xs, counts), state)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-6), (torch.bfloat16, 2e-2)])
def test_grouped_equals_loop(dtype, tol):
    experts, x, ids, weights = _setup(dtype)
    assert grouped_mm_supported(x, 64, 64, 32)
    outs, grads = [], []
    for impl in ("grouped_mm", "loop"):
        experts.zero_grad()
        xx = x.clone().requires_grad_()
        y = _run(experts, xx, ids, weights, impl)
        y.float().pow(2).sum().backward()
        outs.append(y.float())
        grads.append(
            [xx.grad.float(), experts.gate_up_proj.grad.float(), experts.down_proj.grad.float()]
        )
    torch.testing.assert_close(outs[0], outs[1], atol=tol, rtol=tol)
    for g0, g1 in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(g0, g1, atol=tol * 10, rtol=tol)
    # experts that got no token get exactly zero gradient
    assert experts.gate_up_proj.grad[-2:].abs().sum() == 0


def test_unaligned_width_falls_back_to_loop():
    experts, x, ids, weights = _setup(torch.bfloat16, D=60, F=30)
    assert not grouped_mm_supported(x, 60, 60, 30)
    y = _run(experts, x, ids, weights, "grouped_mm")
    ref = _run(experts, x, ids, weights, "loop")
    assert torch.equal(y, ref)


def test_matches_dense_swiglu_per_token():
    experts, x, ids, weights = _setup(torch.float32, T=7, K=1)
    y = _run(experts, x, ids, torch.ones(7, 1), "grouped_mm")
    for t in range(7):
        e = ids[t, 0]
        gate, up = (x[t] @ experts.gate_up_proj[e].T).chunk(2)
        ref = (torch.nn.functional.silu(gate) * up) @ experts.down_proj[e].T
        torch.testing.assert_close(y[t], ref, atol=1e-5, rtol=1e-5)


def test_grouped_mm_custom_op_matches_aten_bit_for_bit():
    """``moelab::grouped_mm`` (what torch.compile sees for fp32) has aten's outputs and gradients,
    empty experts included, so compiled and eager training agree exactly."""
    from moelab.model.experts import _grouped_mm, grouped_mm_op

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(40, 16, generator=gen, requires_grad=True)
    b = torch.randn(4, 16, 24, generator=gen, requires_grad=True)
    offs = torch.cumsum(torch.tensor([10, 0, 20, 10]), 0, dtype=torch.int32)
    grad = torch.randn(40, 24, generator=gen)
    outs = []
    for mm in (lambda a, b: _grouped_mm(a, b, offs=offs), lambda a, b: grouped_mm_op(a, b, offs)):
        y = mm(a, b)
        ga, gb = torch.autograd.grad(y, (a, b), grad)
        outs.append((y, ga, gb))
    for want, got in zip(*outs, strict=True):
        assert torch.equal(want, got)
    assert outs[1][2][1].abs().sum() == 0  # the empty expert gets a zero weight gradient
