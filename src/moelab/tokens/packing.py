"""Cutting a concatenated token stream into fixed-length training rows (concat-and-split).

Row ``r`` is the ``seq_len + 1`` tokens starting at ``r * seq_len``: inputs are the first
``seq_len``, targets the last ``seq_len``, so consecutive rows share one token and every token
after the first is a target exactly once. Documents are not aligned to rows; a row may hold the
end of one document and the start of the next, separated by the EOS that tokenization appended.

For optional document masking, ``segment_ids`` numbers the documents inside each row (0 for the
document the row starts in) and ``position_ids`` restarts at 0 where a document starts; a
trainer builds a block-diagonal causal mask from ``segment_ids``. A token belongs to the
document whose end (exclusive) is the first one above its position, so an EOS belongs to the
document it ends. ``document_causal_mask`` turns segment ids into the (B, T, T) mask.

BOS-aligned packing (``bos_aligned_starts``) is the other row layout: every row starts at a
document start (OLMo/nanochat-style, simple variant). A row takes ``seq_len + 1`` tokens from a
document start, across following documents if they fit, and the next row starts at the first
document start at or after the previous row's last input; the cropped remainder of a long
document is never trained on. No row then begins mid-document, at the cost of those tokens.

What this module does not know: files, shuffling or ranks. It is pure index arithmetic on
numpy arrays. (Best-fit bin packing of whole documents is not implemented.)
"""

from __future__ import annotations

import numpy as np


def num_rows(num_tokens: int, seq_len: int) -> int:
    """How many full rows of ``seq_len + 1`` tokens (stride ``seq_len``) the stream holds."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    return max(0, (num_tokens - 1) // seq_len)


def bos_aligned_starts(doc_ends: np.ndarray, seq_len: int) -> np.ndarray:
    """First token of every BOS-aligned row (int64, ascending); each is a document start.

    Greedy: a row starts at document start ``s`` if ``s + seq_len + 1`` tokens exist; the next
    row starts at the first document start ``>= s + seq_len`` (rows share no target token).
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    doc_ends = np.asarray(doc_ends, dtype=np.int64)
    total = int(doc_ends[-1]) if len(doc_ends) else 0
    doc_starts = np.concatenate([[0], doc_ends[:-1]]) if len(doc_ends) else doc_ends
    out = []
    i = 0
    while i < len(doc_starts) and doc_starts[i] + seq_len + 1 <= total:
        start = int(doc_starts[i])
        out.append(start)
        i = int(np.searchsorted(doc_starts, start + seq_len, side="left"))
    return np.array(out, dtype=np.int64)


def row_starts(rows: np.ndarray, seq_len: int) -> np.ndarray:
    """First token of each row; shape: rows.shape."""
    return np.asarray(rows, dtype=np.int64) * seq_len


def segment_ids(doc_ends: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """Row-local document index of each token; shape: (len(starts), length), int32.

    Args:
        doc_ends: global cumulative document ends (exclusive), int64, sorted.
        starts: global first token of each row.
        length: tokens per row (``seq_len`` for inputs, ``seq_len + 1`` for whole rows).
    """
    positions = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(length, dtype=np.int64)
    global_doc = np.searchsorted(doc_ends, positions, side="right")
    return (global_doc - global_doc[:, :1]).astype(np.int32)


def position_ids(doc_ends: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """Position of each token within its document, counted from the row start at most.

    Shape: (len(starts), length), int32. Resets to 0 at every document start inside a row.
    """
    starts = np.asarray(starts, dtype=np.int64)
    positions = starts[:, None] + np.arange(length, dtype=np.int64)
    global_doc = np.searchsorted(doc_ends, positions, side="right")
    padded = np.concatenate([[0], doc_ends])
    doc_start = np.maximum(padded[global_doc], starts[:, None])
    return (positions - doc_start).astype(np.int32)


def document_causal_mask(segment_ids: np.ndarray) -> np.ndarray:
    """Block-diagonal causal mask: token i may attend to j iff j <= i and same document.

    Shape: (B, T) segment ids → (B, T, T) bool. Works on torch tensors too (same operators).
    """
    same_doc = segment_ids[:, :, None] == segment_ids[:, None, :]
    t = segment_ids.shape[1]
    causal = np.tril(np.ones((t, t), dtype=bool))
    if not isinstance(segment_ids, np.ndarray):  # a torch tensor
        import torch

        causal = torch.from_numpy(causal).to(segment_ids.device)
    return same_doc & causal
