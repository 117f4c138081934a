"""apply_rotary's hand-written backward is bit-identical to autograd through rotate_half."""

from __future__ import annotations

import pytest
import torch

from moelab.model.layers import RotaryEmbedding, apply_rotary, rotate_half


def _reference(x, cos, sin):
    return x * cos.unsqueeze(1) + rotate_half(x) * sin.unsqueeze(1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_output_and_grad_bit_identical(dtype):
    gen = torch.Generator().manual_seed(0)
    cos, sin = RotaryEmbedding(16, 10000.0)(torch.arange(12).expand(2, 12), dtype)
    # (B, T, H, d) transposed to (B, H, T, d): the non-contiguous layout attention passes
    x0 = torch.randn(2, 12, 3, 16, generator=gen).to(dtype).transpose(1, 2)
    g = torch.randn(2, 3, 12, 16, generator=gen).to(dtype)
    outs, grads = [], []
    for fn in (_reference, apply_rotary):
        x = x0.clone().requires_grad_()
        y = fn(x, cos, sin)
        y.backward(g)
        outs.append(y)
        grads.append(x.grad)
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(grads[0], grads[1])


def test_rotary_gradcheck_with_general_cos_sin():
    """The backward is the true transpose even when cos/sin halves differ (float64)."""
    gen = torch.Generator().manual_seed(1)
    cos = torch.randn(1, 5, 8, dtype=torch.float64, generator=gen)
    sin = torch.randn(1, 5, 8, dtype=torch.float64, generator=gen)
    x = torch.randn(1, 2, 5, 8, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x_: apply_rotary(x_, cos, sin), (x,))
    torch.testing.assert_close(apply_rotary(x, cos, sin), _reference(x, cos, sin))


def test_rotary_falls_back_to_autograd_when_cos_needs_grad():
    cos = torch.rand(1, 4, 8, requires_grad=True)
    sin = torch.rand(1, 4, 8)
    x = torch.randn(1, 2, 4, 8)
    apply_rotary(x, cos, sin).sum().backward()
    assert cos.grad is not None and cos.grad.abs().sum() > 0
