"""Documents → word 5-gram shingle hashes → MinHash signatures → LSH band keys.

dots (App. C.2): same normalisation as exact dedup, jieba segmentation for Chinese, word 5-grams,
2,048 MinHash values in 128 bands × 16 rows. Shingles are built as 64-bit integers (xxh3 per word,
combined per 5-gram with numpy), never as Python strings.

Two signature backends:

* ``rensa`` (default, measured fastest): R-MinHash over the flat shingle-hash buffer, in Rust.
  It is not classical k-permutation MinHash but its per-slot collision probability is the Jaccard
  similarity (data_anchors §4.3; tests/data/test_minhash.py checks the S-curve).
* ``numpy``: the exact reference, ``h_i(x) = (a_i·x + b_i) mod (2^61 − 1)`` with the product
  computed exactly in 31-bit limbs (no 2^64 wrap-around, the quirk datasketch 2.0 dropped). Slow at
  2,048 hashes; it is the oracle, checked bit-exact against pure Python in the tests.
"""

from __future__ import annotations

import numpy as np
import xxhash

from moelab.data.normalize import dots_normalize

MERSENNE_61 = (1 << 61) - 1
_P = np.uint64(MERSENNE_61)
_MULT = np.uint64(0x9E3779B97F4A7C15)
_CJK = __import__("re").compile(r"[\u3400-\u9fff]")


def tokenize(text: str, zh_tokenizer: str = "jieba") -> list[str]:
    """Words of the dots-normalised text; jieba (or rjieba, or characters) when it has Chinese."""
    norm = dots_normalize(text)
    if not _CJK.search(norm):
        return norm.split()
    if zh_tokenizer == "chars":
        return [t for word in norm.split() for t in (list(word) if _CJK.search(word) else [word])]
    if zh_tokenizer == "rjieba":
        import rjieba

        return [t for t in rjieba.cut(norm) if not t.isspace()]
    import jieba

    jieba.setLogLevel(60)
    return [t for t in jieba.lcut(norm) if not t.isspace()]


def shingle_hashes(words: list[str], n: int = 5) -> np.ndarray:
    """Distinct 64-bit hashes of the word n-grams (one n-gram of all words if fewer than n)."""
    if not words:
        return np.zeros(0, dtype=np.uint64)
    h = np.fromiter(
        (xxhash.xxh3_64_intdigest(w.encode("utf-8")) for w in words), np.uint64, len(words)
    )
    k = min(n, len(h))
    m = len(h) - k + 1
    key = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(k):
            key = key * _MULT + h[j : j + m]
    return np.unique(key)


def _mulmod61(a: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Exact ``(a * x) mod (2^61 − 1)`` for a, x < 2^61, broadcasting, in 31-bit limbs."""
    mask31 = np.uint64((1 << 31) - 1)
    a1, a0 = a >> np.uint64(31), a & mask31
    x1, x0 = x >> np.uint64(31), x & mask31
    hi = a1 * x1  # < 2^60, weight 2^62 ≡ 2
    mid = a1 * x0 + a0 * x1  # < 2^62, weight 2^31
    lo = a0 * x0  # < 2^62
    mid_hi, mid_lo = mid >> np.uint64(30), mid & np.uint64((1 << 30) - 1)
    v = _mod61(hi * np.uint64(2)) + mid_hi + _mod61(mid_lo << np.uint64(31)) + _mod61(lo)
    return _mod61(_mod61(v))


def _mod61(v: np.ndarray) -> np.ndarray:
    v = (v & _P) + (v >> np.uint64(61))
    return np.where(v >= _P, v - _P, v)


class NumpyMinHash:
    """Exact classical MinHash with ``num_perm`` universal hashes mod 2^61 − 1."""

    def __init__(self, num_perm: int, seed: int):
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, MERSENNE_61, size=num_perm, dtype=np.uint64)
        self.b = rng.integers(0, MERSENNE_61, size=num_perm, dtype=np.uint64)

    def signature(self, shingles: np.ndarray) -> np.ndarray:
        """(num_perm,) uint64 minimum of each hash over the shingles (all-ones if empty)."""
        if len(shingles) == 0:
            return np.full(len(self.a), np.iinfo(np.uint64).max, dtype=np.uint64)
        x = _mod61(shingles)
        out = np.full(len(self.a), np.iinfo(np.uint64).max, dtype=np.uint64)
        step = max(1, (1 << 18) // len(self.a))
        for s in range(0, len(x), step):
            chunk = x[s : s + step, None]
            vals = _mod61(_mulmod61(self.a[None, :], chunk) + self.b[None, :])
            out = np.minimum(out, vals.min(axis=0))
        return out

    def signatures(self, shingle_sets: list[np.ndarray]) -> np.ndarray:
        return (
            np.stack([self.signature(s) for s in shingle_sets])
            if shingle_sets
            else (np.zeros((0, len(self.a)), np.uint64))
        )


def rensa_signatures(shingle_sets: list[np.ndarray], num_perm: int, seed: int) -> np.ndarray:
    """(docs, num_perm) uint32 R-MinHash signatures from rensa, one Rust call per batch."""
    import rensa

    if not shingle_sets:
        return np.zeros((0, num_perm), dtype=np.uint32)
    sizes = np.array([max(len(s), 1) for s in shingle_sets], dtype=np.uint64)
    flat = np.concatenate([s if len(s) else np.zeros(1, np.uint64) for s in shingle_sets])
    offsets = np.zeros(len(sizes) + 1, dtype=np.uint64)
    np.cumsum(sizes, out=offsets[1:])
    matrix = rensa.RMinHash.digest_matrix_from_flat_token_hashes(flat, offsets, num_perm, seed)
    out = np.empty((len(shingle_sets), num_perm), dtype=np.uint32)
    for i, row in enumerate(matrix.to_rows()):
        out[i] = row
    return out


def band_keys(signatures: np.ndarray, num_bands: int, rows: int) -> np.ndarray:
    """(docs, num_bands) uint64 key per band: a hash of its ``rows`` signature values."""
    n = len(signatures)
    if signatures.shape[1] < num_bands * rows:
        raise ValueError(f"signature has {signatures.shape[1]} values, need {num_bands * rows}")
    sig = signatures[:, : num_bands * rows].astype(np.uint64).reshape(n, num_bands, rows)
    key = np.zeros((n, num_bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for r in range(rows):
            key = (key ^ sig[:, :, r]) * _MULT
            key ^= key >> np.uint64(29)
    return key


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two shingle-hash sets."""
    if len(a) == 0 and len(b) == 0:
        return 1.0
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)
