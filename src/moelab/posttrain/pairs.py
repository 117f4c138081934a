"""Preference pairs: JSONL records → (chosen, rejected) token rows, and their resumable loader.

A record is ``{"prompt": P, "chosen": C, "rejected": R}``. ``P`` is a string (one user turn) or
a list of messages ending with a user turn (an optional system prompt first); ``C``/``R`` are a
string (one assistant reply) or a list of messages that continue the prompt (a list that
repeats the prompt first, as some published sets do, has it removed). Only the response, the
turns after the prompt, is scored: its tokens carry targets, the prompt's are -100.

A micro batch of ``B`` pairs is one forward of ``2B`` rows, chosen rows first, right-padded to
the longest row of the batch (causal attention never lets a real token see padding). The order
is a function of (seed, epoch) as in ``TokenLoader``, so the state is ``(epoch, batch)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from moelab.infer.chat import ChatTemplate, Message
from moelab.posttrain.data import RecordError, check_conversation
from moelab.posttrain.packing import IGNORE, Example, check_resumable
from moelab.posttrain.render import encode_chat
from moelab.tokens.tokenizer import Tokenizer

_MUST_MATCH = ("seed", "batch_size", "world_size", "num_pairs", "fingerprint")


@dataclass
class Pair:
    chosen: Example
    rejected: Example
    index: int = 0
    """Position in the data file's usable pairs (keys precomputed reference log-probs)."""


@dataclass
class PairBatch:
    inputs: torch.Tensor
    """(2B, T): the B chosen rows, then the B rejected rows."""
    targets: torch.Tensor
    """(2B, T): response token ids, -100 elsewhere."""
    index: torch.Tensor
    """(B,) pair indices."""


def _messages(value: Any, role: str, name: str) -> list:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list):
        return value
    raise RecordError(f"{name} must be a string or a list of messages")


def _strip_prompt(side: list, prompt: list[Message]) -> list:
    head = [
        {"role": m.get("role"), "content": m.get("content")} if isinstance(m, dict) else m
        for m in side[: len(prompt)]
    ]
    return side[len(prompt) :] if len(side) > len(prompt) and head == prompt else side


def dpo_pair(obj: Any, tokenizer: Tokenizer, template: ChatTemplate, max_tokens: int) -> Pair:
    """One JSONL record as a chosen and a rejected example (RecordError if malformed)."""
    if not isinstance(obj, dict):
        raise RecordError("a record must be an object with prompt, chosen and rejected")
    missing = [k for k in ("prompt", "chosen", "rejected") if k not in obj]
    if missing:
        raise RecordError(f"missing {', '.join(missing)}")
    prompt = check_conversation(
        _messages(obj["prompt"], "user", "prompt"), end="user", name="prompt"
    )
    sides, texts = [], []
    for name in ("chosen", "rejected"):
        response = _strip_prompt(_messages(obj[name], "assistant", name), prompt)
        full = check_conversation(prompt + response, name=f"prompt+{name}")
        enc = encode_chat(tokenizer, template, full, train_from=len(prompt), max_tokens=max_tokens)
        ids = np.asarray(enc.ids, dtype=np.int64)
        sides.append(Example(ids[:-1], np.where(np.asarray(enc.trained[1:]), ids[1:], IGNORE)))
        texts.append(full[len(prompt) :])
    if texts[0] == texts[1]:
        raise RecordError("chosen and rejected are the same response")
    return Pair(*sides)


class PairLoader:
    """Deterministic, rank-sharded, exactly resumable micro batches of preference pairs."""

    def __init__(
        self,
        pairs: list[Pair],
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pad_id: int = 0,
        fingerprint: str = "",
    ):
        self.pairs, self.batch_size, self.seed = pairs, batch_size, seed
        self.rank, self.world_size, self.pad_id = rank, world_size, pad_id
        self.fingerprint = fingerprint
        self.batches_per_epoch = len(pairs) // (batch_size * world_size)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{len(pairs)} pairs are fewer than one global batch ({batch_size} × {world_size})"
            )
        self.epoch, self.batch = 0, 0

    def make_batch(self, indices: list[int]) -> PairBatch:
        rows = [self.pairs[i].chosen for i in indices] + [self.pairs[i].rejected for i in indices]
        T = max(len(r.inputs) for r in rows)
        inputs = np.full((len(rows), T), self.pad_id, dtype=np.int64)
        targets = np.full((len(rows), T), IGNORE, dtype=np.int64)
        for k, r in enumerate(rows):
            inputs[k, : len(r.inputs)], targets[k, : len(r.targets)] = r.inputs, r.targets
        return PairBatch(torch.from_numpy(inputs), torch.from_numpy(targets), torch.tensor(indices))

    def __iter__(self) -> Iterator[PairBatch]:
        while True:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.pairs))
            while self.batch < self.batches_per_epoch:
                first = (self.batch * self.world_size + self.rank) * self.batch_size
                indices = [int(i) for i in order[first : first + self.batch_size]]
                self.batch += 1
                yield self.make_batch(indices)
            self.epoch, self.batch = self.epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batch": self.batch,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "rank": self.rank,
            "world_size": self.world_size,
            "num_pairs": len(self.pairs),
            "fingerprint": self.fingerprint,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_resumable(state, self.state_dict(), _MUST_MATCH)
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
