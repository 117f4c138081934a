"""A preallocated KV cache that implements the model's ``kv_cache`` hook, with reusable row slots.

Slots are indexed by position: a token at position p of a row is stored in slot p of that row,
so rows may sit at different positions (ragged batches, per-row decoding). The attention mask
is built from positions by the model (a key is visible iff its position <= the query's), which
also hides slots not yet written, because their position lies in the future.

Rows are slots for requests. ``bind(rows)`` says which cache rows the next forward's batch rows
are (batch row b is cache row ``rows[b]``), so a decode step can run on any subset of live
requests, and a finished request's row is simply handed to the next one: its prefill overwrites
positions 0..P-1, and every stale key at a later position stays hidden until the new request's
own token at that position has overwritten it (the hook writes before it reads). The same
argument makes right padding free: pad tokens write keys at positions no real query of that
row can see before they are overwritten. No valid mask is needed.

Keys and values of a layer live in one tensor, ``kv_LBSCd`` with C = 2K (keys in heads 0..K-1,
values in K..2K-1), laid out by slot: the fast inference forward (``fast_forward``) projects q,
k and v with one matmul, so one write per layer stores the new tokens' keys and values
together (``store_prefix`` at prefill, ``store`` at decode), and attention reads keys and values as strided views, no copy. The model's hook
(``update``) sees the same storage through ``k_LBKSd`` / ``v_LBKSd`` views.

What this module does not know: tokens, requests or sampling.

Shapes: L layers, B cache rows (also the batch rows of an unbound forward), K kv heads, S max length,
d head_dim, T new tokens, C = 2K.
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
        shape = (num_layers, batch, max_len, 2 * num_kv_heads, head_dim)
        self.kv_LBSCd = torch.zeros(shape, dtype=dtype, device=device)
        self.num_kv_heads = num_kv_heads
        self.slot_pos_S = torch.arange(max_len, device=device)
        self.max_len = max_len
        self.num_rows = batch
        self.end = 0
        """Unbound use: one past the highest slot written so far (over all rows)."""
        self._rows: torch.Tensor | slice | None = None
        self._bound_end = 0

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

    @property
    def k_LBKSd(self) -> torch.Tensor:
        """The keys as a (L, B, K, S, d) view of the shared storage."""
        return self.kv_LBSCd[:, :, :, : self.num_kv_heads].transpose(2, 3)

    @property
    def v_LBKSd(self) -> torch.Tensor:
        """The values as a (L, B, K, S, d) view of the shared storage."""
        return self.kv_LBSCd[:, :, :, self.num_kv_heads :].transpose(2, 3)

    @property
    def rows(self) -> torch.Tensor | slice | None:
        """The cache rows the next forward's batch rows are bound to (None: unbound)."""
        return self._rows

    def bind(self, rows: list[int] | None, end: int = 0) -> None:
        """Route the next forward's batch rows to these cache rows (None: rows 0..B-1).

        ``end`` is one past the highest position any bound row writes or reads in that forward
        (its last token's position + 1); keys are returned up to there. A bound forward trusts
        its caller for positions (checking them in ``update`` would read them back from the
        device once per layer): they must lie in 0..end-1.
        """
        if rows is None:
            self._rows = None
            return
        if any(not 0 <= r < self.num_rows for r in rows):
            raise ValueError(f"cache rows {rows} out of range 0..{self.num_rows - 1}")
        if not 0 < end <= self.max_len:
            raise ValueError(f"end {end} does not fit a KV cache of {self.max_len} slots")
        start = rows[0] if rows else 0
        if rows == list(range(start, start + len(rows))):
            self._rows = slice(start, start + len(rows))  # a view: no copies
        else:
            self._rows = torch.tensor(rows, device=self.slot_pos_S.device)
        self._bound_end = end

    def update(
        self, layer: int, k_BKTd: torch.Tensor, v_BKTd: torch.Tensor, positions_BT: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:
        B, K, T, d = k_BKTd.shape
        if self._rows is None:
            top = int(positions_BT.max()) + 1
            if top > self.max_len or int(positions_BT.min()) < 0:
                raise ValueError(
                    f"positions up to {top - 1} do not fit a KV cache of {self.max_len} slots"
                )
            rows: torch.Tensor | slice = slice(0, B)
            self.end = end = max(self.end, top)
        else:
            rows, end = self._rows, self._bound_end
        new_BTCd = torch.cat((k_BKTd.transpose(1, 2), v_BKTd.transpose(1, 2)), dim=2)
        self.store(layer, new_BTCd, self.slots(positions_BT, rows))
        kv_BSCd = self.read(layer, end, rows)
        k, v = kv_BSCd[:, :, :K].transpose(1, 2), kv_BSCd[:, :, K:].transpose(1, 2)
        return k, v, self.slot_pos_S[:end].expand(B, end), None

    # -- the fast forward's interface: one index per forward, one write and one read per layer --

    def slots(
        self, positions_BT: torch.Tensor, rows: torch.Tensor | slice | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The (cache row, slot) index of every new token, for ``store``."""
        rows = self._rows if rows is None else rows
        B = positions_BT.shape[0]
        if rows is None or isinstance(rows, slice):
            start = 0 if rows is None else rows.start
            rows_B = torch.arange(start, start + B, device=positions_BT.device)
        else:
            rows_B = rows
        return rows_B[:, None], positions_BT

    def offsets(self, positions_BT: torch.Tensor) -> torch.Tensor:
        """Where each new token's (C, d) block starts within one layer's storage, in elements
        (B, T): for a kernel that writes keys and values itself (``cpu_kernel.qk_rope_store``)."""
        rows_B1, pos_BT = self.slots(positions_BT)
        return rows_B1 * self.kv_LBSCd.stride(1) + pos_BT * self.kv_LBSCd.stride(2)

    def store(
        self, layer: int, new_BTCd: torch.Tensor, slots: tuple[torch.Tensor, torch.Tensor]
    ) -> None:
        """Write the new tokens' keys and values (heads 0..K-1 keys, K..2K-1 values)."""
        self.kv_LBSCd[layer].index_put_(slots, new_BTCd.to(self.kv_LBSCd.dtype))

    def store_prefix(self, layer: int, new_BTCd: torch.Tensor) -> None:
        """Prefill of fresh rows: write slots 0..T-1 of every bound row (a plain copy for
        contiguous rows, ~5x cheaper than ``index_put_`` on CPU)."""
        rows, T = self._rows, new_BTCd.shape[1]
        target = self.kv_LBSCd[layer]
        if isinstance(rows, torch.Tensor):
            target.index_put_((rows[:, None], self.slot_pos_S[:T]), new_BTCd.to(target.dtype))
        else:
            target[rows if rows is not None else slice(0, new_BTCd.shape[0]), :T] = new_BTCd

    def read(
        self, layer: int, end: int | None = None, rows: torch.Tensor | slice | None = None
    ) -> torch.Tensor:
        """Keys and values of the bound rows up to slot ``end``: (B, end, C, d), a view for
        contiguous rows (a gather otherwise)."""
        rows = self._rows if rows is None else rows
        end = self._bound_end if end is None else end
        return self.kv_LBSCd[layer][rows if rows is not None else slice(None), :end]
