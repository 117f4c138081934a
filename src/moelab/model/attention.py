"""Multi-head (or grouped-query) causal self-attention with the two QK-norm placements.

* ``qk_norm="head"`` (dots.llm1, Qwen3-style): reshape to heads, then RMSNorm over head_dim with
  one weight shared by every head.
* ``qk_norm="full"`` (OLMoE): RMSNorm over the whole q / k projection, then reshape.

RoPE comes after the norm in both. The KV-cache hook: ``forward(..., kv_cache=cache)`` calls
``cache.update(layer_idx, k, v, positions)`` which stores the new keys/values and returns every
key/value the queries may attend to, together with their positions. Masks are built from
positions, so a cache can hold rows of different lengths. Packed training rows pass
``document_ids`` (B, T) instead: a token attends only to earlier tokens of its own document
(a block-diagonal causal mask), and the caller restarts positions at each document. Without
either, attention takes the plain causal fast path. This module knows nothing about tokens or
sampling.

Shapes: B batch, T new tokens, S keys (cached + new), H heads, K kv heads, d head_dim.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from moelab.model.config import ModelConfig
from moelab.model.layers import RMSNorm, apply_rotary


class KVCacheProtocol(Protocol):
    def update(
        self, layer: int, k_BKTd: torch.Tensor, v_BKTd: torch.Tensor, positions_BT: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Store new k/v; return (k_BKSd, v_BKSd, key_positions_BS, key_valid_BS or None)."""
        ...


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        a = cfg.attention
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads, self.head_dim = (
            a.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
        )
        self.qk_norm, self.clip_qkv, self.impl = a.qk_norm, a.clip_qkv, a.impl
        h, d = cfg.hidden_size, self.head_dim
        self.q_proj = nn.Linear(h, self.num_heads * d, bias=a.bias)
        self.k_proj = nn.Linear(h, self.num_kv_heads * d, bias=a.bias)
        self.v_proj = nn.Linear(h, self.num_kv_heads * d, bias=a.bias)
        self.o_proj = nn.Linear(self.num_heads * d, h, bias=a.bias)
        if a.qk_norm == "head":
            self.q_norm = RMSNorm(d, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(d, cfg.rms_norm_eps)
        elif a.qk_norm == "full":
            self.q_norm = RMSNorm(self.num_heads * d, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(self.num_kv_heads * d, cfg.rms_norm_eps)

    def _project(self, x_BTD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, _ = x_BTD.shape
        q, k, v = self.q_proj(x_BTD), self.k_proj(x_BTD), self.v_proj(x_BTD)
        if self.qk_norm == "full":
            q, k = self.q_norm(q), self.k_norm(k)
        if self.clip_qkv is not None:
            q, k, v = (t.clamp(-self.clip_qkv, self.clip_qkv) for t in (q, k, v))
        q = q.view(B, T, self.num_heads, self.head_dim)
        k = k.view(B, T, self.num_kv_heads, self.head_dim)
        v = v.view(B, T, self.num_kv_heads, self.head_dim)
        if self.qk_norm == "head":
            q, k = self.q_norm(q), self.k_norm(k)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def forward(
        self,
        x_BTD: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        positions_BT: torch.Tensor,
        kv_cache: KVCacheProtocol | None = None,
        document_ids_BT: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, T, _ = x_BTD.shape
        q, k, v = self._project(x_BTD)
        cos, sin = rope
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        mask = None
        if kv_cache is not None:
            k, v, key_pos_BS, key_valid_BS = kv_cache.update(self.layer_idx, k, v, positions_BT)
            mask = key_pos_BS[:, None, :] <= positions_BT[:, :, None]  # (B, T, S)
            if key_valid_BS is not None:
                mask = mask & key_valid_BS[:, None, :]
            mask = mask[:, None]  # broadcast over heads
        elif document_ids_BT is not None:
            mask = document_causal_mask(document_ids_BT)[:, None]
        out = self._attend(q, k, v, mask)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim))

    def _attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        groups = self.num_heads // self.num_kv_heads
        if groups > 1:
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        if self.impl == "sdpa":
            if mask is None:
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return _eager_attention(q, k, v, mask, self.head_dim**-0.5)


def document_causal_mask(document_ids_BT: torch.Tensor) -> torch.Tensor:
    """(B, T, T) boolean: query t sees key s iff s <= t and both are in the same document."""
    T = document_ids_BT.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=document_ids_BT.device).tril()
    return causal & (document_ids_BT[:, :, None] == document_ids_BT[:, None, :])


def _eager_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """transformers' eager op order: scores, additive min-value mask, fp32 softmax, cast back."""
    scores = torch.matmul(q, k.transpose(2, 3)) * scale
    if mask is None:
        T, S = q.shape[-2], k.shape[-2]
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(probs, v)
