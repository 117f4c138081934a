"""Building blocks shared by both families: RMSNorm, rotary embedding, SwiGLU.

Numerics follow transformers exactly, because bf16 parity depends on the op order:
RMSNorm normalises in fp32, casts back to the input dtype, then multiplies by the weight;
RoPE angles are computed in fp32 and cos/sin cast to the activation dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """y = w · (x / rms(x)) with the weight stored directly (no 1 + w offset)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class RotaryEmbedding(nn.Module):
    """Rotate-half (GPT-NeoX) RoPE over the full head dim; inv_freq is a non-persistent buffer."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta
        self.register_buffer("inv_freq", self._inv_freq(), persistent=False)

    def _inv_freq(self, device: torch.device | None = None) -> torch.Tensor:
        exponent = torch.arange(0, self.head_dim, 2, dtype=torch.int64, device=device).float()
        return 1.0 / (self.theta ** (exponent / self.head_dim))

    def reset_parameters(self) -> None:
        """Recompute inv_freq (needed after building on the meta device)."""
        self.inv_freq = self._inv_freq(self.inv_freq.device)

    @torch.no_grad()
    def forward(
        self, positions: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape positions.shape + (head_dim,), computed in fp32 then cast to dtype."""
        freqs = positions[..., None].float() * self.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, heads, T, d); cos/sin: (B, T, d). Bit-identical to ``x·cos + rotate_half(x)·sin``."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    if cos.requires_grad or sin.requires_grad:
        return x * cos + rotate_half(x) * sin
    return _Rotary.apply(x, cos, sin)


def _rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sign: float) -> torch.Tensor:
    """x·cos + sign · rotate_half(x)·sin without the neg/cat copies (sign -1: the transpose)."""
    half = x.shape[-1] // 2
    out = x * cos
    lo, hi = out[..., :half], out[..., half:]
    x_lo, x_hi = x[..., :half], x[..., half:]
    # a + (-b)·s == a - b·s exactly in IEEE arithmetic, so each element rounds as the reference.
    if sign > 0:
        lo.sub_(x_hi * sin[..., :half])
        hi.add_(x_lo * sin[..., half:])
    else:
        lo.add_(x_hi * sin[..., half:])
        hi.sub_(x_lo * sin[..., :half])
    return out


class _Rotary(torch.autograd.Function):
    """RoPE with a hand-written backward: autograd through neg/cat/slices zero-fills and copies
    full-size buffers; the gradient is the transposed rotation, ``g·cos + rotate_halfᵀ(g·sin)``,
    with the same per-element products, hence bit-identical to autograd's."""

    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        return _rotary(x, cos, sin, 1.0)

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        return _rotary(grad, cos, sin, -1.0), None, None


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)): the dense FFN, the shared experts, and each routed expert."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
