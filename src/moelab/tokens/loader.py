"""The trainer's data loader: memory-mapped shards → shuffled fixed-length batches.

Rows are concat-and-split (the default) or, with ``packing="bos_aligned"``, rows that each start
at a document start (``packing.bos_aligned_starts``); either way a row is addressed by its index.
Order is a pure function of ``(seed, epoch)``: each epoch draws a permutation of all rows from
``numpy.random.default_rng([seed, epoch])``. A global batch is ``batch_size * world_size``
consecutive entries of that permutation; rank ``r`` takes the ``r``-th block of ``batch_size``.
Every rank therefore sees the same number of batches per epoch (the remainder of the
permutation is dropped) and the ranks together cover each used row exactly once.

Because the order is a function and not a running state, ``state_dict()`` is just the epoch
and the number of rows of its permutation consumed by all ranks together, plus the settings that
must not change, and ``load_state_dict`` resumes at exactly the next batch an uninterrupted run
would have produced. The position is global, so a state may be loaded onto another
``(world_size, rank, batch_size)`` when the consumed rows are a multiple of the new
``world_size * batch_size``: the global row order continues unchanged. (The rows dropped at an
epoch's end depend on ``world_size * batch_size``, so later epochs match only when both layouts
drop the same remainder.) Version-1 states (``batch`` per rank) are converted on load.

What this module does not know: models, devices or tokenizers (beyond the hash it may be asked
to check). torch is imported only when tensors are requested, so importing it stays cheap.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from moelab.tokens import packing as _packing
from moelab.tokens.shards import ShardReader

STATE_VERSION = 2
# Settings a resumed loader must share with the saved one (the layout may differ: the position
# is global).
_MUST_MATCH = (
    "seed",
    "seq_len",
    "shuffle",
    "packing",
    "num_rows",
    "tokenizer_hash",
)


@dataclass
class Batch:
    """One rank's batch; arrays are numpy (int64/int32) or torch tensors, shape (B, seq_len)."""

    inputs: Any
    targets: Any
    segment_ids: Any
    """Row-local document index of each input token (for document masking)."""
    position_ids: Any
    """Position within the document, restarting at each document start."""


class TokenLoader:
    """Deterministic, rank-sharded, exactly resumable iterator over token rows.

    Args:
        source: a shard folder or an open ``ShardReader``.
        seq_len: tokens per input row (rows hold ``seq_len + 1``).
        batch_size: rows per batch on this rank.
        seed: shuffling seed; the same seed gives the same batches.
        rank, world_size: data-parallel position.
        shuffle: shuffle rows per epoch (False: rows in stream order).
        tokenizer_hash, vocab_size: checked against the shards before anything is read.
        as_torch: yield torch tensors instead of numpy arrays.
        max_epochs: stop after this many epochs (None: iterate forever).
        packing: ``concat`` (rows cut from the token stream) or ``bos_aligned`` (every row
            starts at a document start; the cropped rest of a long document is skipped).
    """

    def __init__(
        self,
        source: str | Path | ShardReader,
        seq_len: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        tokenizer_hash: str | None = None,
        vocab_size: int | None = None,
        as_torch: bool = False,
        max_epochs: int | None = None,
        packing: Literal["concat", "bos_aligned"] = "concat",
    ):
        if isinstance(source, ShardReader):
            self.reader = source
        else:
            self.reader = ShardReader(source, tokenizer_hash=tokenizer_hash, vocab_size=vocab_size)
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need batch_size >= 1 and 0 <= rank < world_size, got batch_size={batch_size}, "
                f"rank={rank}, world_size={world_size}"
            )
        self.seq_len, self.batch_size = seq_len, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.shuffle, self.as_torch, self.max_epochs = shuffle, as_torch, max_epochs
        if packing not in ("concat", "bos_aligned"):
            raise ValueError(f"packing must be 'concat' or 'bos_aligned', got {packing!r}")
        self.packing = packing
        self._starts: np.ndarray | None = None
        if packing == "bos_aligned":
            self._starts = _packing.bos_aligned_starts(self.reader.doc_ends, seq_len)
            self.num_rows = len(self._starts)
        else:
            self.num_rows = _packing.num_rows(self.reader.num_tokens, seq_len)
        self.batches_per_epoch = self.num_rows // (batch_size * world_size)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{self.reader.directory}: {self.reader.num_tokens} tokens make {self.num_rows} rows "
                f"of {seq_len + 1}, fewer than one global batch ({batch_size} x {world_size})"
            )
        self.epoch, self.batch = 0, 0
        self._perm_epoch: int | None = None
        self._perm = np.zeros(0, dtype=np.int64)

    def _order(self, epoch: int) -> np.ndarray:
        if self._perm_epoch != epoch:
            if self.shuffle:
                self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)
            else:
                self._perm = np.arange(self.num_rows, dtype=np.int64)
            self._perm_epoch = epoch
        return self._perm

    def rows_for(self, epoch: int, batch: int) -> np.ndarray:
        """Row indices of this rank's batch ``batch`` in ``epoch``."""
        first = (batch * self.world_size + self.rank) * self.batch_size
        return self._order(epoch)[first : first + self.batch_size]

    def make_batch(self, rows: np.ndarray) -> Batch:
        """Read rows from the memory map; inputs/targets are int64 (embedding index type)."""
        width = self.seq_len + 1
        if self._starts is not None:
            starts = self._starts[np.asarray(rows, dtype=np.int64)]
        else:
            starts = _packing.row_starts(rows, self.seq_len)
        data = np.stack([self.reader.read(int(s), width) for s in starts]).astype(np.int64)
        seg = _packing.segment_ids(self.reader.doc_ends, starts, self.seq_len)
        pos = _packing.position_ids(self.reader.doc_ends, starts, self.seq_len)
        batch = Batch(data[:, :-1], data[:, 1:], seg, pos)
        return _to_torch(batch) if self.as_torch else batch

    def __iter__(self) -> Iterator[Batch]:
        while self.max_epochs is None or self.epoch < self.max_epochs:
            while self.batch < self.batches_per_epoch:
                rows = self.rows_for(self.epoch, self.batch)
                self.batch += 1  # advance first: a state saved after this yield resumes after it
                yield self.make_batch(rows)
            self.epoch, self.batch = self.epoch + 1, 0

    @property
    def global_batch_rows(self) -> int:
        """Rows all ranks together take per batch step."""
        return self.batch_size * self.world_size

    def state_dict(self) -> dict[str, Any]:
        """Where the next batch comes from, plus the settings a resume must share.

        ``rows`` counts the epoch's permutation entries consumed by all ranks; a finished epoch
        is recorded as the start of the next, so every layout resumes it the same way.
        ``batch_size``/``world_size``/``rank`` are informational.
        """
        epoch, batch = self.epoch, self.batch
        if batch >= self.batches_per_epoch:
            epoch, batch = epoch + 1, 0
        return {
            "version": STATE_VERSION,
            "epoch": epoch,
            "rows": batch * self.global_batch_rows,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "batch_size": self.batch_size,
            "rank": self.rank,
            "world_size": self.world_size,
            "shuffle": self.shuffle,
            "packing": self.packing,
            "num_rows": self.num_rows,
            "tokenizer_hash": self.reader.meta.tokenizer_hash,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at ``state``; raises if the data or settings differ, or the position does not
        fall on a batch boundary of this loader's layout."""
        state = _upgrade(state)
        mine = self.state_dict()
        for key in _MUST_MATCH:
            saved = state.get(key, "concat" if key == "packing" else None)  # pre-packing states
            if saved != mine[key]:
                raise ValueError(
                    f"loader state was saved with {key}={saved!r}, "
                    f"but this loader has {key}={mine[key]!r}; cannot resume exactly"
                )
        epoch, rows, step = int(state["epoch"]), int(state["rows"]), self.global_batch_rows
        if epoch < 0 or rows < 0:
            raise ValueError(f"loader state position out of range: {state}")
        if rows % step:
            raise ValueError(
                f"loader state is {rows} rows into epoch {epoch} (saved with world_size="
                f"{state.get('world_size')}, batch_size={state.get('batch_size')}); that is not a "
                f"multiple of this loader's world_size x batch_size = {self.world_size} x "
                f"{self.batch_size} = {step}, so it cannot continue the same global row order"
            )
        if rows // step > self.batches_per_epoch:
            raise ValueError(
                f"loader state is {rows} rows into epoch {epoch}, past the "
                f"{self.batches_per_epoch * step} rows this layout uses per epoch"
            )
        self.epoch, self.batch = epoch, rows // step


def _upgrade(state: dict[str, Any]) -> dict[str, Any]:
    """A version-1 state (per-rank ``batch`` under a fixed layout) as a version-2 one."""
    version = state.get("version")
    if version == STATE_VERSION:
        return state
    if version != 1 or not {"batch", "batch_size", "world_size"} <= state.keys():
        raise ValueError(f"unknown loader state version {version!r}: {sorted(state)}")
    rows = int(state["batch"]) * int(state["batch_size"]) * int(state["world_size"])
    return {**state, "version": STATE_VERSION, "rows": rows}


def _to_torch(batch: Batch) -> Batch:
    import torch

    return Batch(*(torch.from_numpy(np.ascontiguousarray(a)) for a in vars(batch).values()))
