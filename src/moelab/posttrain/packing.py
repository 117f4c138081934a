"""Packing whole conversations into fixed-length rows, and the resumable packed-row loader.

Each epoch the conversations are put in the order of ``default_rng([seed, epoch])``, placed by
best fit (each goes into the open row with the least room that still holds it, else a new
row), and the rows are shuffled with the same generator. A row carries ``document_ids`` (the
slot of each conversation in the row; padding is -1) and positions restarting at 0 for each
conversation, so with the model's block-diagonal mask a packed conversation computes exactly
what it would alone. Targets are -100 outside assistant tokens and in the padding. Padding
tokens are still routed, so they count in the balance losses and expert-bias statistics
(best fit keeps them few: about 5% of the toy set's 128-token rows).

Like ``TokenLoader``, the order is a function of (seed, epoch), so the state is just
``(epoch, batch)`` plus what must not change; a global batch is ``batch_size × world_size``
consecutive rows and rank ``r`` takes block ``r``.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

IGNORE = -100
_MUST_MATCH = ("seed", "seq_len", "batch_size", "world_size", "num_examples", "fingerprint")


@dataclass
class Example:
    inputs: np.ndarray
    """ids[:-1] of the rendered conversation (int64)."""
    targets: np.ndarray
    """ids[1:], with IGNORE where the target token is not trained."""
    line: int = 0


@dataclass
class PackedBatch:
    inputs: torch.Tensor
    targets: torch.Tensor
    positions: torch.Tensor
    document_ids: torch.Tensor
    trained_tokens: int
    loss_scale: float = 0.0
    """Set by the objective: 1 / (trained tokens of the whole step) × micro batches."""


def best_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into rows of at most ``capacity``, in visiting order."""
    rows: list[list[int]] = []
    room: list[tuple[int, int]] = []  # sorted (free space, row index) of rows with space left
    for i, n in enumerate(lengths):
        if n > capacity:
            raise ValueError(f"item {i} has length {n} > row capacity {capacity}")
        k = bisect.bisect_left(room, (n, -1))
        if k < len(room):
            free, row = room.pop(k)
        else:
            free, row = capacity, len(rows)
            rows.append([])
        rows[row].append(i)
        if free - n > 0:
            bisect.insort(room, (free - n, row))
    return rows


class PackedLoader:
    """Deterministic, rank-sharded, exactly resumable batches of packed conversation rows."""

    def __init__(
        self,
        examples: list[Example],
        seq_len: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pad_id: int = 0,
        fingerprint: str = "",
    ):
        self.examples, self.seq_len, self.batch_size = examples, seq_len, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.pad_id, self.fingerprint = pad_id, fingerprint
        self.epoch, self.batch = 0, 0
        self._rows_epoch: int | None = None
        self._rows: list[list[int]] = []
        if self.batches_in(0) == 0:
            raise ValueError(
                f"{len(examples)} conversations pack into {len(self.rows(0))} rows of "
                f"{seq_len} tokens, fewer than one global batch ({batch_size} × {world_size})"
            )

    def rows(self, epoch: int) -> list[list[int]]:
        """Example indices of every row of ``epoch``, in the order they are served."""
        if self._rows_epoch != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(len(self.examples))
            packed = best_fit([len(self.examples[i].inputs) for i in order], self.seq_len)
            self._rows = [[int(order[j]) for j in packed[r]] for r in rng.permutation(len(packed))]
            self._rows_epoch = epoch
        return self._rows

    def batches_in(self, epoch: int) -> int:
        return len(self.rows(epoch)) // (self.batch_size * self.world_size)

    def make_row(self, members: list[int]) -> tuple[np.ndarray, ...]:
        T = self.seq_len
        inputs = np.full(T, self.pad_id, dtype=np.int64)
        targets = np.full(T, IGNORE, dtype=np.int64)
        positions = np.zeros(T, dtype=np.int64)
        docs = np.full(T, -1, dtype=np.int64)
        at = 0
        for slot, i in enumerate(members):
            ex = self.examples[i]
            n = len(ex.inputs)
            inputs[at : at + n], targets[at : at + n] = ex.inputs, ex.targets
            positions[at : at + n], docs[at : at + n] = np.arange(n), slot
            at += n
        positions[at:] = np.arange(T - at)
        return inputs, targets, positions, docs

    def make_batch(self, rows: list[list[int]]) -> PackedBatch:
        parts = [np.stack(a) for a in zip(*(self.make_row(r) for r in rows), strict=True)]
        inputs, targets, positions, docs = (torch.from_numpy(a) for a in parts)
        return PackedBatch(inputs, targets, positions, docs, int((targets != IGNORE).sum()))

    def __iter__(self) -> Iterator[PackedBatch]:
        while True:
            while self.batch < self.batches_in(self.epoch):
                first = (self.batch * self.world_size + self.rank) * self.batch_size
                rows = self.rows(self.epoch)[first : first + self.batch_size]
                self.batch += 1  # advance first: a state saved after this yield resumes after it
                yield self.make_batch(rows)
            self.epoch, self.batch = self.epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batch": self.batch,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "batch_size": self.batch_size,
            "rank": self.rank,
            "world_size": self.world_size,
            "num_examples": len(self.examples),
            "fingerprint": self.fingerprint,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_resumable(state, self.state_dict(), _MUST_MATCH)
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])


def check_resumable(state: dict[str, Any], mine: dict[str, Any], keys: tuple[str, ...]) -> None:
    """Refuse a saved data position whose settings differ from this run's in any of ``keys``."""
    for key in keys:
        if state.get(key) != mine[key]:
            raise ValueError(
                f"data state was saved with {key}={state.get(key)!r}, but this run has "
                f"{key}={mine[key]!r}; cannot resume exactly"
            )
