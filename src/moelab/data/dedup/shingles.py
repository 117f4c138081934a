"""Documents → word 5-gram shingle hashes → MinHash signatures → LSH band keys.

dots (App. C.2): same normalisation as exact dedup, jieba segmentation for Chinese, word 5-grams,
2,048 MinHash values in 128 bands × 16 rows. Shingles are built as 64-bit integers (a polynomial
hash per word over its UTF-8 bytes, combined per 5-gram, all in numpy), never as Python strings.

Two signature backends:

* ``rensa`` (default, measured fastest): R-MinHash over the flat shingle-hash buffer, in Rust.
  It is not classical k-permutation MinHash but its per-slot collision probability is the Jaccard
  similarity (data_anchors §4.3; tests/data/test_minhash.py checks the S-curve).
* ``numpy``: the exact reference, ``h_i(x) = (a_i·x + b_i) mod (2^61 − 1)`` with the product
  computed exactly in 31-bit limbs (no 2^64 wrap-around, the quirk datasketch 2.0 dropped). Fast
  enough at 128 hashes, ≈40× slower than rensa at 2,048; it is the oracle, checked bit-exact
  against pure Python in the tests.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable

import numpy as np

from moelab.data.normalize import dots_normalize

MERSENNE_61 = (1 << 61) - 1
_P = np.uint64(MERSENNE_61)
_MULT = np.uint64(0x9E3779B97F4A7C15)
_CJK = __import__("re").compile(r"[\u3400-\u9fff]")


_ASCII_PUNCT = {c: None for c in range(128) if unicodedata.category(chr(c)).startswith("P")}
_ASCII_LOWER = bytes(range(256)).lower()
_ASCII_TOKEN_BYTES = _ASCII_LOWER.replace(b"\n", b" ")
"""Lower case and newlines made spaces: batch_shingles separates documents by newline."""
_ASCII_PUNCT_BYTES = bytes(_ASCII_PUNCT)
"""``bytes.translate`` lower-cases and deletes punctuation in one C pass, 4× ``str.translate``."""
_IS_SPACE = np.zeros(256, dtype=bool)
_IS_SPACE[[9, 10, 11, 12, 13, 28, 29, 30, 31, 32]] = True
"""The bytes ``str.split()`` splits ASCII text on."""
_POLY = np.uint64(0x100000001B3)
_POWERS: list[np.ndarray] = [np.ones(1, np.uint64), np.ones(1, np.uint64)]


def tokenize(text: str, zh_tokenizer: str = "jieba") -> list[str]:
    """Words of the dots-normalised text; jieba (or rjieba, or characters) when it has Chinese."""
    if text.isascii():  # NFD is the identity on ASCII and \p{P} is a fixed set: a fast path
        return text.encode().translate(_ASCII_LOWER, _ASCII_PUNCT_BYTES).decode().split()
    norm = dots_normalize(text)
    if not _CJK.search(norm):
        return norm.split()
    if zh_tokenizer == "chars":
        return [t for word in norm.split() for t in (list(word) if _CJK.search(word) else [word])]
    return [t for t in zh_cutter(zh_tokenizer)(norm) if not t.isspace()]


def zh_cutter(name: str) -> Callable[[str], list[str]]:
    """The Chinese word cutter ``minhash.zh_tokenizer`` names: a function text -> tokens.

    * ``jieba`` (default): :func:`moelab.data.dedup.zh.cut`, jieba.lcut's tokens exactly (the dots
      recipe), ≈2.5× jieba itself;
    * ``rjieba``: the Rust port (``pip install 'moelab[zh-fast]'``), ≈15× faster; its HMM output
      matched jieba's on the synthetic web, but it keeps runs of CJK characters outside jieba's
      range (extension B) as one token where jieba splits them;
    * ``auto``: rjieba when it is installed, else jieba.
    """
    if name not in _ZH_CUTTERS:
        from moelab.data.dedup import zh

        if name == "jieba":
            _ZH_CUTTERS[name] = zh.cut
        elif name in ("rjieba", "auto"):
            try:
                import rjieba
            except ImportError as err:
                if name == "rjieba":
                    raise ImportError(
                        "minhash.zh_tokenizer=rjieba needs rjieba: pip install 'moelab[zh-fast]'"
                    ) from err
                _ZH_CUTTERS[name] = zh.cut
            else:
                _ZH_CUTTERS[name] = rjieba.cut  # HMM on, as jieba.lcut
        else:
            raise ValueError(f"unknown Chinese tokenizer {name!r} (jieba, rjieba, auto, chars)")
    return _ZH_CUTTERS[name]


_ZH_CUTTERS: dict[str, Callable[[str], list[str]]] = {}


def _fmix(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser: spreads every input bit over the output."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(33))
        x = x * np.uint64(0xFF51AFD7ED558CCD)
        x = x ^ (x >> np.uint64(33))
        x = x * np.uint64(0xC4CEB9FE1A85EC53)
        return x ^ (x >> np.uint64(33))


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """P^i and P^-i (mod 2^64) for i < n; P is odd so it is invertible mod 2^64."""
    if len(_POWERS[0]) < n:
        size = max(n, 2 * len(_POWERS[0]))
        inv = np.uint64(pow(int(_POLY), -1, 1 << 64))
        with np.errstate(over="ignore"):
            fwd = np.cumprod(np.full(size, _POLY, dtype=np.uint64))
            bwd = np.cumprod(np.full(size, inv, dtype=np.uint64))
        _POWERS[0] = np.r_[np.ones(1, np.uint64), fwd[:-1]]
        _POWERS[1] = np.r_[np.ones(1, np.uint64), bwd[:-1]]
    return _POWERS[0], _POWERS[1]


def batch_shingles(token_texts: list[str], n: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Word n-gram hashes of many documents at once: (flat hashes, row offsets).

    Each input is a document's tokens separated by whitespace other than newlines (what
    :func:`token_text` gives); newlines separate the documents in the batch buffer.
    Words are hashed by a polynomial over their UTF-8 bytes (prefix sums, so the whole batch is a
    few numpy operations), n-grams by combining n word hashes; a document with fewer than n words
    has one shingle of all its words, an empty one none. Duplicates are kept: a MinHash minimum
    does not change with them, and dropping them would cost a sort per document.
    """
    text = "\n".join(token_texts)
    if text.count("\n") != len(token_texts) - 1:
        raise ValueError("token texts must not contain newlines (use token_text())")
    buf = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    docs = len(token_texts)
    # Word bytes are those above 32, and the few control bytes str.split() does not split on:
    # a comparison plus a fix-up of the low bytes, 7x faster than a table lookup per byte.
    word = np.zeros(len(buf) + 2, dtype=bool)
    np.greater(buf, 32, out=word[1:-1])
    low = np.flatnonzero(buf < 32)
    word[low + 1] = ~_IS_SPACE[buf[low]]
    edges = np.flatnonzero(word[1:] != word[:-1])
    starts, ends = edges[0::2], edges[1::2]
    doc_breaks = low[buf[low] == 10]
    word_doc = np.searchsorted(doc_breaks, starts)
    fwd, inv = _powers(len(buf) + 1)
    with np.errstate(over="ignore"):
        prefix = np.zeros(len(buf) + 1, dtype=np.uint64)
        np.multiply(buf, fwd[: len(buf)], out=prefix[1:])
        np.cumsum(prefix[1:], out=prefix[1:])
        raw = (prefix[ends] - prefix[starts]) * inv[starts]
        words = _fmix(raw ^ (ends - starts).astype(np.uint64))
    counts = np.bincount(word_doc, minlength=docs)
    m = len(words) - n + 1
    keys = np.zeros(max(m, 0), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            keys = keys * _MULT + words[j : j + max(m, 0)]
    valid = word_doc[: max(m, 0)] == word_doc[n - 1 : n - 1 + max(m, 0)]
    keys, key_doc = _fmix(keys[valid]), word_doc[: max(m, 0)][valid]
    short = np.flatnonzero((counts > 0) & (counts < n))
    if len(short):
        first = np.r_[0, np.cumsum(counts)[:-1]]
        extra = []
        with np.errstate(over="ignore"):
            for d in short:
                k = np.uint64(0)
                for w in words[first[d] : first[d] + counts[d]]:
                    k = k * _MULT + w
                extra.append(k)
        keys = np.r_[keys, _fmix(np.array(extra, dtype=np.uint64))]
        key_doc = np.r_[key_doc, short]
        order = np.argsort(key_doc, kind="stable")
        keys, key_doc = keys[order], key_doc[order]
    offsets = np.r_[0, np.cumsum(np.bincount(key_doc, minlength=docs))].astype(np.uint64)
    return keys, offsets


def token_text(text: str, zh_tokenizer: str = "jieba") -> str:
    """A document's tokens, space-separated (ASCII text is only stripped and lower-cased)."""
    if text.isascii():
        return text.encode().translate(_ASCII_TOKEN_BYTES, _ASCII_PUNCT_BYTES).decode()
    return " ".join(tokenize(text, zh_tokenizer))


def shingle_hashes(words: list[str], n: int = 5) -> np.ndarray:
    """Distinct n-gram hashes of one document's words (the same hashes as the batch path)."""
    keys, _ = batch_shingles([" ".join(words)], n)
    return np.unique(keys)


def _affine61_into(a1, a0, b, x1, x2, x0, v: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``(a·x + b) mod (2^61 − 1)`` into ``v``, left in ``[0, P + 7]`` (``t`` is scratch).

    From 31-bit limbs: a·x = a1·x1·2^62 + (a1·x0 + a0·x1)·2^31 + a0·x0 and 2^61 ≡ 1, so
    a1·x1·2^62 ≡ a1·x2 with ``x2 = 2·x1`` precomputed per shingle. Every partial product fits 64
    bits and the sum stays below 2^63 + 2^61 + 2^32 before the one fold, so nothing wraps. 15
    in-place operations per value on buffers that stay in cache. The value is congruent to the hash
    but not yet reduced: a value ≥ P (probability ≈ 2^-58) needs one more ``− P``, which
    :func:`_reduce_into` does and the block loop applies only to a block that has one.
    """
    np.multiply(a1, x0, out=v)
    np.multiply(a0, x1, out=t)
    v += t  # mid < 2^62
    np.bitwise_and(v, _M30, out=t)
    t <<= _S31
    v >>= _S30
    v += t  # mid·2^31 folded: < 2^61 + 2^32
    np.multiply(a1, x2, out=t)  # a1·x1·2^62 ≡ 2·a1·x1 < 2^61
    v += t
    np.multiply(a0, x0, out=t)  # < 2^62
    v += t
    v += b  # < 2^63 + 2^61 + 2^32
    np.right_shift(v, _S61, out=t)
    v &= _P
    v += t  # ≤ P + 7
    return v


def _reduce_into(v: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Values in ``[0, P + 7]`` fully reduced mod P, in place."""
    np.subtract(v, _P, out=t)  # wraps around when v < P
    return np.minimum(v, t, out=v)


_M30 = np.uint64((1 << 30) - 1)
_M31 = np.uint64((1 << 31) - 1)
_S30, _S31, _S61 = np.uint64(30), np.uint64(31), np.uint64(61)
_BLOCK = 1 << 17
"""Values per block (1 MB of uint64): measured fastest at 128 hashes on this machine (1.45× the
old layout, against 1.34× at half and 0.96× at twice the size)."""
_MIN_STEP = 128
"""Fewest shingles per block: measured fastest at 512 and 2,048 hashes (per-block overhead)."""


def _limbs(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return v >> _S31, v & _M31


def _mod61(v: np.ndarray) -> np.ndarray:
    v = (v & _P) + (v >> _S61)
    return np.where(v >= _P, v - _P, v)


class NumpyMinHash:
    """Exact classical MinHash with ``num_perm`` universal hashes mod 2^61 − 1.

    ``a`` and ``b`` (each below 2^61, ``a`` nonzero) are drawn from ``seed`` unless given.
    """

    def __init__(
        self, num_perm: int, seed: int, a: np.ndarray | None = None, b: np.ndarray | None = None
    ):
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, MERSENNE_61, size=num_perm, dtype=np.uint64) if a is None else a
        self.b = rng.integers(0, MERSENNE_61, size=num_perm, dtype=np.uint64) if b is None else b
        self.a = np.array(self.a, dtype=np.uint64)
        self.b = np.array(self.b, dtype=np.uint64)
        if self.a.shape != (num_perm,) or self.b.shape != (num_perm,):
            raise ValueError(f"a and b must have {num_perm} values each")
        if (self.a == 0).any() or (self.a >= _P).any() or (self.b >= _P).any():
            raise ValueError("a must be in [1, 2^61 − 1) and b in [0, 2^61 − 1)")
        self.a.flags.writeable = self.b.flags.writeable = False
        self.step = max(_MIN_STEP, _BLOCK // num_perm)
        # Full-block constants, (num_perm, step): a multiply whose inner-loop operand has stride 0
        # ran at half the speed of one over two contiguous rows, so the hashes are the rows and
        # the shingles (one contiguous row each, broadcast over hashes) the columns.
        a1, a0 = _limbs(self.a)
        self._a1, self._a0, self._b = (
            np.ascontiguousarray(np.broadcast_to(c[:, None], (num_perm, self.step)))
            for c in (a1, a0, self.b)
        )

    def _hash(self, x: np.ndarray) -> np.ndarray:
        """(len(x), num_perm) values of every hash on reduced shingles ``x`` (< 2^61), one by one."""
        x1, x0 = _limbs(np.asarray(x, dtype=np.uint64)[:, None])
        a1, a0 = _limbs(self.a[None, :])
        v = np.empty((len(x), len(self.a)), dtype=np.uint64)
        t = np.empty_like(v)
        return _reduce_into(_affine61_into(a1, a0, self.b[None, :], x1, x1 << 1, x0, v, t), t)

    def signature(self, shingles: np.ndarray) -> np.ndarray:
        """(num_perm,) uint64 minimum of each hash over the shingles (all-ones if empty)."""
        offsets = np.array([0, len(shingles)], dtype=np.int64)
        return self.signatures_flat(np.asarray(shingles, dtype=np.uint64), offsets)[0]

    def signatures_flat(self, flat: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Signatures of rows ``flat[offsets[i]:offsets[i+1]]`` (all-ones for an empty row).

        Shingles of many documents are hashed a cache-sized (hashes × ``step``) block at a time (a
        block may span documents or cut one), then each document's part of the block is reduced
        along the contiguous axis: ``min`` for a block inside one document, ``minimum.reduceat``
        otherwise (along axis 0 of the transposed layout it was 7× slower per value).
        """
        offsets = np.asarray(offsets, dtype=np.int64)
        docs, perm = len(offsets) - 1, len(self.a)
        out = np.full((docs, perm), np.iinfo(np.uint64).max, dtype=np.uint64)
        x1s, x0s = _limbs(_mod61(np.asarray(flat, dtype=np.uint64)))
        x2s = x1s << np.uint64(1)
        doc_of = np.repeat(np.arange(docs), np.diff(offsets))
        v = np.empty((perm, self.step), dtype=np.uint64)
        t = np.empty_like(v)
        for lo in range(0, len(x1s), self.step):
            hi = min(lo + self.step, len(x1s))
            n, x = hi - lo, slice(lo, hi)
            vals = _affine61_into(
                self._a1[:, :n],
                self._a0[:, :n],
                self._b[:, :n],
                x1s[None, x],
                x2s[None, x],
                x0s[None, x],
                v[:, :n],
                t[:, :n],
            )
            if vals.max() >= _P:  # a min over unreduced values would miss a wrapped one
                _reduce_into(vals, t[:, :n])
            d = doc_of[x]
            if d[0] == d[-1]:
                rows, mins = d[:1], vals.min(axis=1)[None, :]
            else:
                starts = np.flatnonzero(np.r_[True, d[1:] != d[:-1]])
                rows, mins = d[starts], np.minimum.reduceat(vals, starts, axis=1).T
            out[rows] = np.minimum(out[rows], mins)
        return out

    def signatures(self, shingle_sets: list[np.ndarray]) -> np.ndarray:
        sizes = [len(s) for s in shingle_sets]
        offsets = np.r_[0, np.cumsum(sizes)].astype(np.int64)
        flat = np.concatenate(shingle_sets) if shingle_sets else np.zeros(0, np.uint64)
        return self.signatures_flat(flat.astype(np.uint64), offsets)


def rensa_signatures(shingle_sets: list[np.ndarray], num_perm: int, seed: int) -> np.ndarray:
    """(docs, num_perm) uint32 R-MinHash signatures from rensa, one Rust call per batch."""
    if not shingle_sets:
        return np.zeros((0, num_perm), dtype=np.uint32)
    sizes = np.array([len(s) for s in shingle_sets], dtype=np.uint64)
    offsets = np.r_[np.zeros(1, np.uint64), np.cumsum(sizes)].astype(np.uint64)
    flat = np.concatenate(shingle_sets).astype(np.uint64)
    return rensa_signatures_flat(flat, offsets, num_perm, seed)


def rensa_signatures_flat(
    flat: np.ndarray, offsets: np.ndarray, num_perm: int, seed: int
) -> np.ndarray:
    """Signatures of rows ``flat[offsets[i]:offsets[i+1]]``; an empty row hashes one 0 token."""
    import rensa

    rows = len(offsets) - 1
    if rows <= 0:
        return np.zeros((0, num_perm), dtype=np.uint32)
    sizes = np.diff(offsets.astype(np.int64))
    if (sizes == 0).any():
        parts = np.split(flat, offsets[1:-1].astype(np.int64))
        parts = [p if len(p) else np.zeros(1, np.uint64) for p in parts]
        flat = np.concatenate(parts)
        offsets = np.r_[0, np.cumsum([len(p) for p in parts])].astype(np.uint64)
    flat = np.ascontiguousarray(flat, dtype=np.uint64)
    offsets = np.ascontiguousarray(offsets, dtype=np.uint64)
    matrix = rensa.RMinHash.digest_matrix_from_flat_token_hashes(flat, offsets, num_perm, seed)
    return matrix_to_numpy(matrix, rows, num_perm)


_RENSA_LAYOUT: list = []  # [word index of the data pointer] once probed, [None] if unusable


def _rensa_buffer_word(matrix, n: int) -> int | None:
    """Word index of the row-major ``Vec<u32>`` pointer inside a rensa digest-matrix object.

    rensa 0.5 exposes the matrix only as Python lists (``to_rows``), which costs more than the
    sketch itself at 2,048 values. Its object holds a Rust ``Vec`` laid out as (capacity, pointer,
    length) with length = rows × num_perm; we find that triple in the object's own memory.
    """
    import ctypes

    words = list((ctypes.c_uint64 * (type(matrix).__basicsize__ // 8)).from_address(id(matrix)))
    for i in range(1, len(words) - 1):
        if words[i + 1] == n and words[i - 1] >= n and words[i] > 4096:
            return i
    return None


def matrix_to_numpy(matrix, rows: int, num_perm: int) -> np.ndarray:
    """Copy a rensa digest matrix into numpy: directly from its buffer when the layout was
    verified against ``to_rows()`` on a probe in this process, else through ``to_rows()``."""
    import ctypes

    if not _RENSA_LAYOUT:
        _RENSA_LAYOUT.append(_probe_rensa_layout())
    word = _RENSA_LAYOUT[0]
    n = rows * num_perm
    if word is not None and rows > 0:
        words = (ctypes.c_uint64 * (type(matrix).__basicsize__ // 8)).from_address(id(matrix))
        if words[word + 1] == n and words[word - 1] >= n:
            raw = ctypes.string_at(words[word], n * 4)
            return np.frombuffer(raw, dtype=np.uint32).reshape(rows, num_perm).copy()
    out = np.empty((rows, num_perm), dtype=np.uint32)
    for i, row in enumerate(matrix.to_rows()):
        out[i] = row
    return out


def _probe_rensa_layout() -> int | None:
    import rensa

    rng = np.random.default_rng(0)
    for rows, perm in ((3, 16), (5, 48)):
        flat = rng.integers(0, 2**63, size=rows * 40, dtype=np.uint64)
        offsets = np.arange(0, rows * 40 + 1, 40, dtype=np.uint64)
        matrix = rensa.RMinHash.digest_matrix_from_flat_token_hashes(flat, offsets, perm, 7)
        word = _rensa_buffer_word(matrix, rows * perm)
        if word is None:
            return None
        import ctypes

        words = (ctypes.c_uint64 * (type(matrix).__basicsize__ // 8)).from_address(id(matrix))
        got = np.frombuffer(ctypes.string_at(words[word], rows * perm * 4), dtype=np.uint32)
        if not np.array_equal(got.reshape(rows, perm), np.array(matrix.to_rows(), np.uint32)):
            return None
    return word


def band_keys(signatures: np.ndarray, num_bands: int, rows: int) -> np.ndarray:
    """(docs, num_bands) uint64 key per band: a hash of its ``rows`` signature values."""
    n = len(signatures)
    if signatures.shape[1] < num_bands * rows:
        raise ValueError(f"signature has {signatures.shape[1]} values, need {num_bands * rows}")
    sig = np.ascontiguousarray(signatures[:, : num_bands * rows])
    if sig.dtype == np.uint32 and rows % 2 == 0:  # two 32-bit values per 64-bit word
        sig = sig.view(np.uint64)
        rows //= 2
    sig = sig.astype(np.uint64, copy=False).reshape(n, num_bands, rows)
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
