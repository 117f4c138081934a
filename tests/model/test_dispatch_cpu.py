"""The CPU gather/combine kernels give the reference path's outputs and gradients bit for bit,
and are selected by device and dtype."""

from __future__ import annotations

import pytest
import torch

from moelab.model import dispatch_cpu
from moelab.model.dispatch import LocalDispatcher


def _combine_with_grads(enabled: bool, T: int, K: int, D: int, E: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(T, D, generator=gen).requires_grad_()
    # experts E-1 gets no token; the others are uneven
    ids = torch.randint(0, E - 1, (T, K), generator=gen)
    w = torch.rand(T, K, generator=gen).requires_grad_()
    scale = torch.randn(D, generator=gen)
    g = torch.randn(T, D, generator=gen)
    d = LocalDispatcher(E)
    old = dispatch_cpu.ENABLED
    dispatch_cpu.ENABLED = enabled
    try:
        xs, _, state = d.dispatch(x, ids, w)
        y = d.combine(torch.tanh(xs * scale), state)  # a nonlinear stand-in for the experts
    finally:
        dispatch_cpu.ENABLED = old
    y.backward(g)
    return y.detach(), x.grad, w.grad


@pytest.mark.parametrize(
    ("T", "K", "D", "E"), [(64, 8, 32, 16), (300, 6, 128, 33), (37, 6, 24, 9), (5, 1, 8, 3)]
)
def test_cpu_kernels_match_reference_outputs_and_grads_bit_for_bit(T, K, D, E):
    ref = _combine_with_grads(False, T, K, D, E, seed=T)
    ours = _combine_with_grads(True, T, K, D, E, seed=T)
    if D % 32 == 0:  # the reference sum(dim=1) orders a vector tail differently otherwise
        assert torch.equal(ours[0], ref[0])  # output
    torch.testing.assert_close(ours[0], ref[0], atol=1e-6, rtol=1e-6)
    assert torch.equal(ours[1], ref[1])  # d x: combine backward, experts, dispatch backward
    assert torch.equal(ours[2], ref[2])  # d routing weights


def test_cpu_combine_is_used_only_for_fp32_cpu_outside_autocast(monkeypatch):
    calls = []
    real, real_gather = dispatch_cpu.combine, dispatch_cpu.gather
    monkeypatch.setattr(dispatch_cpu, "combine", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(dispatch_cpu, "gather", lambda *a: calls.append(2) or real_gather(*a))
    d = LocalDispatcher(4)
    ids = torch.tensor([[0, 1], [2, 1], [3, 0]])
    for dtype in (torch.float32, torch.bfloat16):
        xs, _, state = d.dispatch(torch.randn(3, 8, dtype=dtype), ids, torch.rand(3, 2))
        d.combine(xs, state)
    assert calls == [2, 1]  # the fp32 call only; bf16 activations take the reference path
    with torch.autocast("cpu", dtype=torch.bfloat16):
        xs, _, state = d.dispatch(torch.randn(3, 8), ids, torch.rand(3, 2))
        d.combine(xs, state)
    assert calls == [2, 1]


def test_cpu_combine_gradcheck_double():
    """The hand-written backward is the true derivative (float64 finite differences)."""
    gen = torch.Generator().manual_seed(0)
    T, K, D = 4, 2, 3
    inverse = torch.randperm(T * K, generator=gen)
    order = torch.argsort(inverse)
    y = torch.randn(T * K, D, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.rand(T, K, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda y_, w_: dispatch_cpu.combine(y_, w_, order, inverse), (y, w)
    )


def test_cpu_gather_gradcheck_double():
    """The dispatch gather's embedding_bag backward is the true derivative."""
    gen = torch.Generator().manual_seed(0)
    T, K, D = 5, 3, 4
    order = torch.randperm(T * K, generator=gen)
    inverse = torch.argsort(order)
    x = torch.randn(T, D, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x_: dispatch_cpu.gather(x_, order, inverse, K), (x,))
