"""Inference-only attention and dense FFN with fused weights: fewer, larger ops per decode step.

The model's modules are written for training (separate q/k/v projections, a mask built per
layer, RoPE recomputed per forward). At decode sizes every op costs more in dispatch than in
arithmetic, so this file holds the same math with:

* one fused QKV weight (q, k, v rows stacked; biases too), one matmul instead of three;
* ``F.rms_norm`` (one call; the model's RMSNorm makes six), and for the per-head QK-norm of
  dots.llm1 one normalisation over q and k heads together with their two weights stacked;
* RoPE from one table of cos/sin per position built once (``rope_table``: the model's own
  ``RotaryEmbedding`` evaluated at 0..max_len-1, so the values are identical), applied to q
  and k in one pass;
* the new keys and values written to the KV cache in one op per layer (the cache stores both in
  one tensor: a slice copy at prefill, an ``index_put_`` at decode), read back as strided views;
* prefill of fresh cache rows (every prompt at positions 0..T-1) attends to its own keys with
  ``is_causal``, no mask; decode builds its mask once per forward (``AttentionContext``), or
  none when every row sits at the last slot; ``enable_gqa`` instead of repeating kv heads.

Every projection goes through ``linear``: on CPU in fp32 with at least ``ONEDNN_MIN_ROWS`` rows
(prefill) or ``ONEDNN_MIN_MACS`` multiply-adds (an LM head), torch's oneDNN matmul
(``mkldnn::_linear_pointwise``, the op Inductor uses on CPU), else ``F.linear``. torch's
``F.linear`` on CPU is MKL's sgemm, which on AMD CPUs runs its AVX2 code (99 GFLOP/s on one
core of the benchmark's EPYC where oneDNN's AVX-512 code reaches 226); oneDNN costs about
10 µs more per call, which is why decode's small projections keep ``F.linear``. RMSNorm (block,
final, QK) is one call of the C kernel (``cpu_kernel``) where it built, else ``F.rms_norm``;
there, with an fp32 cache, everything between the QKV projection and the dot products (QK-norm,
clip, RoPE, the cache write) is one kernel pass per layer (``AttentionContext.fused``).

The fused weights (QKV, stacked QK-norm, gate/up) are copies made when built: an engine does
not see later edits to those weights of its model. What this module does not know: tokens, sampling, MoE.

Shapes: B batch, T new tokens, S keys, H heads, K kv heads, d head_dim, D hidden, C = 2K.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from moelab.infer import cpu_kernel
from moelab.infer.kv_cache import KVCache
from moelab.model.attention import Attention
from moelab.model.layers import RotaryEmbedding, SwiGLU

ONEDNN_MIN_ROWS = 32
ONEDNN_MIN_MACS = 1 << 21
"""Or fewer rows but this much work: decode's LM head (8 x 4096 x 128: 129 µs MKL, 92 oneDNN)."""


def _onednn_linear_works() -> bool:
    """The private op exists and agrees with F.linear (a torch upgrade could change either)."""
    if os.environ.get("MOELAB_ONEDNN", "1") == "0" or not torch.backends.mkldnn.is_available():
        return False
    try:
        x, w = torch.randn(ONEDNN_MIN_ROWS, 16), torch.randn(8, 16)
        with torch.inference_mode():
            got = torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
        return torch.allclose(got, F.linear(x, w), atol=1e-5, rtol=1e-5)
    except (AttributeError, RuntimeError):
        return False


ONEDNN = _onednn_linear_works()


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear``, through oneDNN for fp32 CPU inputs of ONEDNN_MIN_ROWS rows or MACS or more.

    No autograd kernel exists for the oneDNN op, so it is only taken with grad disabled.
    """
    if (
        ONEDNN
        and x.dtype == w.dtype == torch.float32
        and x.device.type == "cpu"
        and (
            x.numel() >= ONEDNN_MIN_ROWS * x.shape[-1] or x.numel() * w.shape[0] >= ONEDNN_MIN_MACS
        )
        and not torch.is_grad_enabled()
    ):
        return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
    return F.linear(x, w, b)


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float, groups: int = 1) -> torch.Tensor:
    """``F.rms_norm`` over each of ``groups`` equal parts of the last dim, part g times w[g]
    (w: (groups, d) or (d,)); the C kernel's one call for fp32 CPU without grad."""
    C = x.shape[-1]
    d = C // groups
    kernel = cpu_kernel.load() if x.device.type == "cpu" else None
    if kernel is None or x.dtype != torch.float32 or torch.is_grad_enabled() or x.stride(-1) != 1:
        if groups == 1:
            return F.rms_norm(x, (C,), w, eps)
        return (
            F.rms_norm(x.unflatten(-1, (groups, d)), (d,), eps=eps) * w.view(groups, d)
        ).flatten(-2)
    out = torch.empty(x.shape, dtype=x.dtype)
    kernel.rms_norm_into(x.flatten(0, -2), w.reshape(groups, d), eps, out.view(-1, C))
    return out


def rope_table(
    rotary: RotaryEmbedding, max_len: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (max_len, d) for positions 0..max_len-1, exactly as the model computes."""
    positions = torch.arange(max_len, device=rotary.inv_freq.device)
    return rotary(positions, dtype)


def apply_rope(
    x_BTHd: torch.Tensor, cos_BT1d: torch.Tensor, sin_BT1d: torch.Tensor
) -> torch.Tensor:
    """``x·cos + rotate_half(x)·sin`` with the model's per-element op order (same rounding)."""
    half = x_BTHd.shape[-1] // 2
    out = x_BTHd * cos_BT1d
    out[..., :half].sub_(x_BTHd[..., half:] * sin_BT1d[..., :half])
    out[..., half:].add_(x_BTHd[..., :half] * sin_BT1d[..., half:])
    return out


@dataclass
class AttentionContext:
    """What every layer's attention shares in one forward (built once, not per layer)."""

    cache: KVCache
    slots: tuple[torch.Tensor, torch.Tensor] | None
    """Decode: (row, slot) index of each new token in the cache (``KVCache.slots``)."""
    fresh: bool
    """Prefill of fresh rows: positions 0..T-1, attend to the new keys only, causally."""
    mask_B11S: torch.Tensor | None = None
    """Decode: which cached keys each row may see; None when all of them (same positions)."""
    fused: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    """CPU fp32 with the C kernel: (cos table, sin table, position of each new token, its
    cache offset, ``KVCache.offsets``), for ``cpu_kernel.qk_rope_store``; else None."""


class FastAttention:
    def __init__(self, attn: Attention, eps: float):
        self.layer = attn.layer_idx
        self.H, self.K, self.d = attn.num_heads, attn.num_kv_heads, attn.head_dim
        self.eps, self.qk_norm, self.clip = eps, attn.qk_norm, attn.clip_qkv
        projs = (attn.q_proj, attn.k_proj, attn.v_proj)
        self.w_qkv = torch.cat([p.weight.detach() for p in projs])
        self.b_qkv = None if attn.q_proj.bias is None else torch.cat([p.bias for p in projs])
        self.w_o, self.b_o = attn.o_proj.weight.detach(), attn.o_proj.bias
        self.gqa = self.H != self.K
        if self.qk_norm == "head":  # one (H+K, d) weight: q heads' rows, then k heads'
            self.w_qk = torch.cat(
                [attn.q_norm.weight.expand(self.H, -1), attn.k_norm.weight.expand(self.K, -1)]
            ).detach()
        elif self.qk_norm == "full":
            self.w_q, self.w_k = attn.q_norm.weight.detach(), attn.k_norm.weight.detach()
        self.kernel_norm = self._kernel_norm()

    def _kernel_norm(self) -> tuple[int, torch.Tensor, torch.Tensor, float] | None:
        """The QK-norm as ``cpu_kernel.qk_rope_store`` takes it (kind, q and k weights, eps)."""
        none = torch.empty(0)
        if self.qk_norm == "head":
            w = self.w_qk.contiguous()
            return 1, w[: self.H].contiguous(), w[self.H :].contiguous(), self.eps
        if self.qk_norm == "full":
            return 2, self.w_q.contiguous(), self.w_k.contiguous(), self.eps
        return (0, none, none, self.eps) if self.qk_norm in (None, "none") else None

    def __call__(
        self,
        x_BTD: torch.Tensor,
        cos_BT1d: torch.Tensor,
        sin_BT1d: torch.Tensor,
        ctx: AttentionContext,
    ) -> torch.Tensor:
        K = self.K
        if ctx.fused is not None and self.kernel_norm is not None:
            q = self._qkv_into_cache(x_BTD, ctx)
            T = x_BTD.shape[1]
            if ctx.fresh:
                kv = ctx.cache.read(self.layer, end=T)
                return self._out(self._attend(q, kv[:, :, :K], kv[:, :, K:], is_causal=True))
            kv = ctx.cache.read(self.layer)
            return self._out(self._attend(q, kv[:, :, :K], kv[:, :, K:], attn_mask=ctx.mask_B11S))
        q, k, v = self._qkv(x_BTD, cos_BT1d, sin_BT1d)
        if ctx.fresh:
            ctx.cache.store_prefix(self.layer, torch.cat((k, v), dim=2))
            out = self._attend(q, k, v, is_causal=True)
        else:
            ctx.cache.store(self.layer, torch.cat((k, v), dim=2), ctx.slots)
            kv = ctx.cache.read(self.layer)  # (B, S, 2K, d) view
            out = self._attend(q, kv[:, :, :K], kv[:, :, K:], attn_mask=ctx.mask_B11S)
        return self._out(out)

    def last_queries(
        self,
        x_BTD: torch.Tensor,
        cos_BT1d: torch.Tensor,
        sin_BT1d: torch.Tensor,
        ctx: AttentionContext,
        last_B: torch.Tensor,
        mask_B11T: torch.Tensor | None,
    ) -> torch.Tensor:
        """Prefill of fresh rows where only row b's output at position ``last_B[b]`` is used
        (the final layer when only the last logits are wanted): keys and values of every
        position still go to the cache, but attention and o_proj run for B queries, not B·T.
        ``mask_B11T`` hides keys past each query (right padding); None if every row is full.
        Returns (B, 1, D)."""
        if ctx.fresh and ctx.fused is not None and self.kernel_norm is not None:
            q = self._qkv_into_cache(x_BTD, ctx)
            kv = ctx.cache.read(self.layer, end=x_BTD.shape[1])
            k, v = kv[:, :, : self.K], kv[:, :, self.K :]
        else:
            q, k, v = self._qkv(x_BTD, cos_BT1d, sin_BT1d)
            ctx.cache.store_prefix(self.layer, torch.cat((k, v), dim=2))
        q_B1Hd = q[torch.arange(q.shape[0], device=q.device), last_B][:, None]
        return self._out(self._attend(q_B1Hd, k, v, attn_mask=mask_B11T))

    def _attend(self, q_BTHd, k_BSKd, v_BSKd, **mask) -> torch.Tensor:
        """SDPA on (batch, position, head, d) views; (B, H, T, d) out."""
        return F.scaled_dot_product_attention(
            q_BTHd.transpose(1, 2),
            k_BSKd.transpose(1, 2),
            v_BSKd.transpose(1, 2),
            enable_gqa=self.gqa,
            **mask,
        )

    def _qkv_into_cache(self, x_BTD: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        """q (B, T, H, d) after the fused projection, with k and v already in the KV cache:
        the C kernel's one pass (QK-norm, clip, RoPE, cache write) instead of ~10 ops."""
        B, T, _ = x_BTD.shape
        cos_Sd, sin_Sd, pos_N, off_N = ctx.fused
        qkv = linear(x_BTD, self.w_qkv, self.b_qkv).view(B * T, -1)
        q = cpu_kernel.load().qk_rope_store(
            qkv,
            (self.H, self.K, self.d),
            self.kernel_norm,
            self.clip,
            (cos_Sd, sin_Sd, pos_N),
            ctx.cache.kv_LBSCd[self.layer],
            off_N,
        )
        return q.view(B, T, self.H, self.d)

    def _qkv(
        self, x_BTD: torch.Tensor, cos_BT1d: torch.Tensor, sin_BT1d: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q (B, T, H, d), k and v (B, T, K, d): one fused projection, QK-norm, clip, RoPE."""
        B, T, _ = x_BTD.shape
        H, K, d = self.H, self.K, self.d
        qkv = linear(x_BTD, self.w_qkv, self.b_qkv)
        qk = self._qk(qkv, B, T)  # (B, T, H+K, d), normed, clipped
        qk = apply_rope(qk, cos_BT1d, sin_BT1d)
        v = qkv[..., (H + K) * d :].view(B, T, K, d)
        if self.clip is not None:
            v = v.clamp(-self.clip, self.clip)
        return qk[:, :, :H], qk[:, :, H:], v

    def _out(self, out_BHTd: torch.Tensor) -> torch.Tensor:
        B, H, T, d = out_BHTd.shape
        return linear(out_BHTd.transpose(1, 2).reshape(B, T, H * d), self.w_o, self.b_o)

    def _qk(self, qkv: torch.Tensor, B: int, T: int) -> torch.Tensor:
        """q and k heads, QK-normed and clipped in the model's order."""
        H, K, d, c = self.H, self.K, self.d, self.clip
        if self.qk_norm == "full":  # norm over the whole projection, then clip
            q = rms_norm(qkv[..., : H * d], self.w_q, self.eps)
            k = rms_norm(qkv[..., H * d : (H + K) * d], self.w_k, self.eps)
            qk = torch.cat((q, k), dim=-1)
            if c is not None:
                qk = qk.clamp(-c, c)
            return qk.view(B, T, H + K, d)
        qk = qkv[..., : (H + K) * d]
        if c is not None:  # clip, then the per-head norm
            qk = qk.clamp(-c, c)
        if self.qk_norm == "head":
            qk = rms_norm(qk, self.w_qk, self.eps, groups=H + K)
        return qk.view(B, T, H + K, d)


class FastSwiGLU:
    """down(silu(gate(x)) * up(x)) with gate and up fused into one matmul."""

    def __init__(self, mlp: SwiGLU):
        self.w_gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).detach()
        self.w_down = mlp.down_proj.weight.detach()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = linear(x, self.w_gate_up).chunk(2, dim=-1)
        return linear(F.silu(gate).mul_(up), self.w_down)
