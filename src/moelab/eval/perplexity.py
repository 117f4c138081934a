"""Held-out loss, perplexity and bits per byte of a model on token shards, streamed in batches.

The shard stream (all shards concatenated, as the trainer sees it) is cut into consecutive
windows of ``seq_len + 1`` tokens that overlap by one, so every token after the first is
predicted exactly once, with at most ``seq_len`` tokens of context and no document masking (the
trainer does not mask documents either). Windows are read lazily from the memory map and batched;
the short tail window is evaluated on its own. Sums are kept in float64.

Bits per byte need the number of UTF-8 bytes the predicted tokens stand for. Decoding a window
and counting its bytes is wrong at window edges (a multi-byte character split between two
tokens decodes to U+FFFD), so bytes come from a per-id table instead: for byte-level BPE (the
dots.llm1 and OLMoE tokenizers, and the demo's) each vocabulary string maps back to an exact byte
string through the GPT-2 byte alphabet; special tokens (EOS) count zero bytes. Other tokenizers
fall back to the UTF-8 length of each id decoded alone. Without a tokenizer, bits per byte is
left out rather than guessed.

What this module does not know: where the model came from (a checkpoint, an HF directory) or
how the shards were made; it takes a model and a shard folder.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from moelab.tokens.shards import ShardReader
from moelab.tokens.tokenizer import Tokenizer


@dataclass
class PerplexityResult:
    """Totals over every predicted token of the evaluated stream."""

    tokens: int
    """Predicted tokens (targets)."""
    loss: float
    """Mean cross-entropy in nats per token."""
    perplexity: float
    """exp(loss)."""
    bytes: int | None = None
    """UTF-8 bytes the targets stand for (None without a tokenizer)."""
    bits_per_byte: float | None = None
    """Total loss in bits divided by ``bytes``."""
    seconds: float = 0.0
    tokens_per_s: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's ``bytes_to_unicode``: printable stand-in character -> byte value."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(keep, chars, strict=True)}


def _is_byte_level(tokenizer: Tokenizer) -> bool:
    decoder = json.loads(tokenizer.hf.to_str()).get("decoder") or {}
    parts = decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]
    return any(p.get("type") == "ByteLevel" for p in parts)


def token_byte_lengths(tokenizer: Tokenizer) -> np.ndarray:
    """UTF-8 bytes each token id stands for (int64, length ``vocab_size``); specials count 0."""
    lengths = np.zeros(tokenizer.vocab_size, dtype=np.int64)
    added = tokenizer.hf.get_added_tokens_decoder()
    table = _byte_decoder() if _is_byte_level(tokenizer) else None
    for token, idx in tokenizer.hf.get_vocab(with_added_tokens=True).items():
        if idx >= len(lengths):
            continue
        if idx in added:
            lengths[idx] = 0 if added[idx].special else len(token.encode("utf-8"))
        elif table is not None and all(ch in table for ch in token):
            lengths[idx] = len(token)
        else:
            lengths[idx] = len(tokenizer.decode([idx]).encode("utf-8"))
    return lengths


def _windows(reader: ShardReader, seq_len: int, limit: int) -> Iterator[np.ndarray]:
    """Consecutive windows of ``seq_len + 1`` tokens (the last may be shorter), overlapping by 1."""
    start = 0
    while start + 1 < limit:
        length = min(seq_len + 1, limit - start)
        yield reader.read(start, length).astype(np.int64)
        start += length - 1


def _batches(windows: Iterator[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    """Stack equal-length windows; a shorter (tail) window comes out alone."""
    pending: list[np.ndarray] = []
    for window in windows:
        if pending and (len(window) != len(pending[0]) or len(pending) == batch_size):
            yield np.stack(pending)
            pending = []
        pending.append(window)
    if pending:
        yield np.stack(pending)


def unigram_counts(shards: str | Path | ShardReader, vocab_size: int) -> np.ndarray:
    """Occurrences of each token id in a shard folder (for the unigram baseline)."""
    reader = shards if isinstance(shards, ShardReader) else ShardReader(shards)
    counts = np.zeros(vocab_size, dtype=np.int64)
    step = 1 << 22
    for start in range(0, reader.num_tokens, step):
        chunk = reader.read(start, min(step, reader.num_tokens - start))
        counts += np.bincount(chunk, minlength=vocab_size)[:vocab_size]
    return counts


def unigram_perplexity(
    counts: np.ndarray,
    shards: str | Path | ShardReader,
    *,
    max_tokens: int | None = None,
    byte_lengths: np.ndarray | None = None,
) -> PerplexityResult:
    """The baseline a model must beat: add-one smoothed unigram probabilities from ``counts``,
    scored on exactly the targets ``evaluate_perplexity`` scores (every token but the first)."""
    reader = shards if isinstance(shards, ShardReader) else ShardReader(shards)
    limit = reader.num_tokens if max_tokens is None else min(max_tokens, reader.num_tokens)
    if limit < 2:
        raise ValueError(f"{reader.directory}: need at least 2 tokens to evaluate, have {limit}")
    logp = np.log((counts + 1.0) / (counts.sum() + len(counts)))
    targets = reader.read(1, limit - 1).astype(np.int64)
    if int(targets.max()) >= len(counts):
        raise ValueError(f"token id {int(targets.max())} outside the {len(counts)} counted ids")
    nats = float(-logp[targets].sum())
    result = PerplexityResult(len(targets), nats / len(targets), math.exp(nats / len(targets)))
    if byte_lengths is not None:
        result.bytes = int(byte_lengths[targets].sum())
        result.bits_per_byte = nats / math.log(2) / result.bytes if result.bytes else None
    return result


@torch.no_grad()
def _batch_nats(model: torch.nn.Module, rows: np.ndarray, device: torch.device) -> float:
    data = torch.from_numpy(rows).to(device)
    logits = model(data[:, :-1]).logits.float()
    loss = F.cross_entropy(logits.flatten(0, 1), data[:, 1:].flatten(), reduction="none")
    return float(loss.double().sum())  # an fp32 sum over a long batch loses ~1e-6


def evaluate_perplexity(
    model: torch.nn.Module,
    shards: str | Path | ShardReader,
    *,
    seq_len: int = 512,
    batch_size: int = 8,
    max_tokens: int | None = None,
    byte_lengths: np.ndarray | None = None,
    log=None,
) -> PerplexityResult:
    """Loss, perplexity and (given ``byte_lengths``) bits per byte of ``model`` on ``shards``.

    Args:
        model: returns ``.logits`` of shape (B, T, V) for input ids (B, T).
        shards: a shard folder or an open ``ShardReader``.
        seq_len: context per window (tokens predicted per full window).
        batch_size: windows per forward pass.
        max_tokens: evaluate only the first this many tokens of the stream (None: all).
        byte_lengths: bytes per token id, e.g. from ``token_byte_lengths``.
        log: optional callable for progress lines.

    Raises:
        ValueError: on bad sizes or when the stream holds fewer than two tokens.
    """
    if seq_len < 1 or batch_size < 1:
        raise ValueError(f"seq_len and batch_size must be >= 1, got {seq_len}, {batch_size}")
    reader = shards if isinstance(shards, ShardReader) else ShardReader(shards)
    limit = reader.num_tokens if max_tokens is None else min(max_tokens, reader.num_tokens)
    if limit < 2:
        raise ValueError(f"{reader.directory}: need at least 2 tokens to evaluate, have {limit}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nats, count, nbytes, t0 = 0.0, 0, 0, time.perf_counter()
    try:
        for i, rows in enumerate(_batches(_windows(reader, seq_len, limit), batch_size)):
            nats += _batch_nats(model, rows, device)
            count += rows[:, 1:].size
            if byte_lengths is not None:
                nbytes += int(byte_lengths[rows[:, 1:]].sum())
            if log is not None and i % 50 == 0:
                log(f"{count:,}/{limit - 1:,} tokens, loss {nats / count:.4f}")
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - t0
    loss = nats / count
    result = PerplexityResult(count, loss, math.exp(loss), seconds=seconds)
    result.tokens_per_s = count / seconds if seconds > 0 else 0.0
    if byte_lengths is not None:
        result.bytes = nbytes
        result.bits_per_byte = nats / math.log(2) / nbytes if nbytes else None
    return result
