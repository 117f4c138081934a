"""The engine's forward: the model's math with inference-only fused ops (fast_layers, fast_moe).

Two entry points, the two shapes generation needs, both on cache rows the caller has bound
(``KVCache.bind``):

* ``prefill(ids, lengths)``: right-padded prompts, each written to its rows from position 0;
  causal attention over the prompt itself (no mask; where the C kernel wrote the keys and
  values into the cache, they are read back as a view of it). Logits at each prompt's
  last position, or at every position (``all_logits``: prompt logprobs for ``echo``). For the
  last logits only, the final block computes just what they use: keys and values of every
  position (the cache needs them), the rest (attention queries, o_proj, residual, FFN/MoE)
  at the B last positions, not B·T (at 4 layers, a quarter of the prefill's MoE work).
* ``decode(ids, positions)``: one token per row at that row's own position; one mask for all
  layers, none when every row sits at the same position.

Equality with the model's forward (fp32, both families, ragged batches, cached decode) is
tested in tests/infer/test_fast_forward.py. ``FastForward.supports`` says when it can stand in
for the model: a whole model (not a pipeline stage) with local experts; otherwise the engine
runs the model itself.

What this module does not know: requests, sampling, tokenization.

Shapes: B batch, T tokens, D hidden, V vocabulary, S cache slots.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from moelab.infer import cpu_kernel
from moelab.infer.fast_layers import (
    AttentionContext,
    FastAttention,
    FastSwiGLU,
    linear,
    rms_norm,
    rope_table,
)
from moelab.infer.fast_moe import FastMoE
from moelab.infer.kv_cache import KVCache
from moelab.model.dispatch import LocalDispatcher
from moelab.model.transformer import MoETransformer


class FastForward:
    def __init__(self, model: MoETransformer, max_len: int):
        cfg = model.config
        dtype = next(model.parameters()).dtype
        self.eps = cfg.rms_norm_eps
        self.embed_w = model.embed_tokens.weight.detach()
        self.cos_Sd, self.sin_Sd = rope_table(model.rotary, max_len, dtype)
        self.blocks = []
        for block in model.layers.values():
            ffn = FastMoE(block.mlp) if block.is_moe else FastSwiGLU(block.mlp)
            self.blocks.append(
                (
                    block.input_layernorm.weight.detach(),
                    FastAttention(block.self_attn, self.eps),
                    block.post_attention_layernorm.weight.detach(),
                    ffn,
                )
            )
        self.norm_w = model.norm.weight.detach()
        self.lm_head_w = model.lm_head.weight.detach()

    @staticmethod
    def supports(model: MoETransformer) -> bool:
        """A whole model whose MoE layers dispatch locally (no pipeline stage, no EP)."""
        whole = all(m is not None for m in (model.embed_tokens, model.norm, model.lm_head))
        local = all(
            type(b.mlp.dispatcher) is LocalDispatcher for b in model.layers.values() if b.is_moe
        )
        return whole and local

    @torch.inference_mode()
    def prefill(
        self, ids_BT: torch.Tensor, lengths: list[int], cache: KVCache, all_logits: bool = False
    ) -> torch.Tensor:
        """Logits (B, V) at each prompt's last token, or (B, T, V) with ``all_logits``."""
        B, T = ids_BT.shape
        pos_BT = torch.arange(T, device=ids_BT.device).expand(B, T)
        ctx = AttentionContext(cache, None, fresh=True, fused=self._fused(cache, pos_BT))
        cos, sin = self.cos_Sd[:T, None], self.sin_Sd[:T, None]
        if all_logits:
            return self._logits(self._layers(ids_BT, cos, sin, ctx))
        last_B = torch.tensor(lengths, device=ids_BT.device) - 1
        mask = None
        if min(lengths) != T:  # a shorter prompt's last query must not see its padding
            mask = (cache.slot_pos_S[:T] <= last_B[:, None])[:, None, None, :]
        return self._logits(self._layers(ids_BT, cos, sin, ctx, (last_B, mask))[:, 0])

    @torch.inference_mode()
    def decode(self, ids_B: torch.Tensor, positions: list[int], cache: KVCache) -> torch.Tensor:
        """Logits (B, V) of one new token per row, row b at position ``positions[b]``."""
        end = max(positions) + 1
        pos_B1 = torch.tensor(positions, device=ids_B.device)[:, None]
        mask = None
        if min(positions) != end - 1:  # rows at different positions: hide others' future slots
            mask = (cache.slot_pos_S[:end] <= pos_B1)[:, None, None, :]
        ctx = AttentionContext(
            cache, cache.slots(pos_B1), False, mask, fused=self._fused(cache, pos_B1)
        )
        cos, sin = self.cos_Sd[pos_B1][:, :, None], self.sin_Sd[pos_B1][:, :, None]
        return self._logits(self._layers(ids_B[:, None], cos, sin, ctx)[:, 0])

    def _fused(self, cache: KVCache, pos_BT: torch.Tensor) -> tuple | None:
        """``AttentionContext.fused`` when the C kernel can do attention's per-token work:
        fp32 on CPU, cache included, kernel built."""
        tensors = (self.cos_Sd, cache.kv_LBSCd)
        if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
            return None
        if cpu_kernel.load() is None:
            return None
        limit = min(cache.max_len, self.cos_Sd.shape[0])  # cache slots, RoPE table rows
        if pos_BT.numel() and not 0 <= int(pos_BT.min()) <= int(pos_BT.max()) < limit:
            # the kernel writes and reads where it is told: out of range must fail here
            raise ValueError(f"positions outside the KV cache / RoPE table's 0..{limit - 1}")
        off = cache.offsets(pos_BT).reshape(-1)
        return self.cos_Sd, self.sin_Sd, pos_BT.reshape(-1), off

    def _layers(
        self,
        ids_BT: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        ctx: AttentionContext,
        last: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    ) -> torch.Tensor:
        """Hidden states (B, T, D). With ``last`` (each row's last prompt position and the mask
        of keys it sees): (B, 1, D) at those positions, the final block's attention queries,
        o_proj, residual and FFN run on B rows, not B·T (its keys and values are still cached)."""
        h = F.embedding(ids_BT, self.embed_w)
        final = len(self.blocks) - 1
        for i, (norm1_w, attn, norm2_w, ffn) in enumerate(self.blocks):
            x = rms_norm(h, norm1_w, self.eps)
            if last is not None and i == final:
                last_B = last[0]
                rows_B = torch.arange(len(last_B), device=h.device)
                h = h[rows_B, last_B][:, None] + attn.last_queries(x, cos, sin, ctx, *last)
            else:
                h = h + attn(x, cos, sin, ctx)
            h = h + ffn(rms_norm(h, norm2_w, self.eps))
        return h

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        h = rms_norm(h, self.norm_w, self.eps)
        return linear(h, self.lm_head_w)
