"""A preallocated KV cache that implements the model's ``kv_cache`` hook.

Slots are indexed by position: a token at position p of row b is stored in slot p of row b,
so rows may sit at different positions (ragged batches, per-row decoding). The attention
mask is built from positions by the model (a key is visible iff its position ≤ the query's),
which also hides slots not yet written, because their position lies in the future.

Shapes: L layers, B batch, K kv heads, S max length, d head_dim, T new tokens.
"""

from __future__ import annotations

import torch

from moelab.model.config import ModelConfig


class KVCache:
    def __init__(
        self,
        num_layers: int,
        batch: int,
        num_kv_heads: int,
        max_len: int,
        head_dim: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ):
        shape = (num_layers, batch, num_kv_heads, max_len, head_dim)
        self.k_LBKSd = torch.zeros(shape, dtype=dtype, device=device)
        self.v_LBKSd = torch.zeros(shape, dtype=dtype, device=device)
        self.slot_pos_S = torch.arange(max_len, device=device)
        self.max_len = max_len
        self.end = 0
        """One past the highest slot written so far (over all rows)."""

    @classmethod
    def for_model(
        cls,
        cfg: ModelConfig,
        batch: int,
        max_len: int,
        *,
        dtype: torch.dtype,
        device: str | torch.device,
    ) -> KVCache:
        return cls(
            cfg.num_layers,
            batch,
            cfg.num_kv_heads,
            max_len,
            cfg.head_dim,
            dtype=dtype,
            device=device,
        )

    def update(
        self, layer: int, k_BKTd: torch.Tensor, v_BKTd: torch.Tensor, positions_BT: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:
        B, K, T, d = k_BKTd.shape
        top = int(positions_BT.max()) + 1
        if top > self.max_len or int(positions_BT.min()) < 0:
            raise ValueError(
                f"positions up to {top - 1} do not fit a KV cache of {self.max_len} slots"
            )
        index = positions_BT[:, None, :, None].expand(B, K, T, d)
        self.k_LBKSd[layer, :B].scatter_(2, index, k_BKTd.to(self.k_LBKSd.dtype))
        self.v_LBKSd[layer, :B].scatter_(2, index, v_BKTd.to(self.v_LBKSd.dtype))
        self.end = max(self.end, top)
        k = self.k_LBKSd[layer, :B, :, : self.end]
        v = self.v_LBKSd[layer, :B, :, : self.end]
        return k, v, self.slot_pos_S[: self.end].expand(B, self.end), None
