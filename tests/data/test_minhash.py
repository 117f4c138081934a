"""MinHash-LSH: exact reference, S-curve of the dots 128×16 banding, passes on disk."""

from __future__ import annotations

import numpy as np
import pytest

from moelab.data.config import MinHashConfig
from moelab.data.dedup.base import run_in_memory as run_global
from moelab.data.dedup.base import split_contiguous as split
from moelab.data.dedup.minhash import MinHashDedup, bucket_edges, connected_roots
from moelab.data.dedup.shingles import (
    MERSENNE_61,
    NumpyMinHash,
    band_keys,
    jaccard,
    rensa_signatures,
    shingle_hashes,
    tokenize,
)
from moelab.data.document import Document


def test_numpy_minhash_is_bit_exact_against_python_integers():
    P = MERSENNE_61
    base = NumpyMinHash(64, seed=3)
    a, b = base.a.copy(), base.b.copy()
    a[:4] = [P - 1, 1, 2**60, 1]
    b[:4] = [P - 1, 0, 1, P - 1]  # slot 3 maps shingle 1 to exactly P before the last "- P"
    mh = NumpyMinHash(64, seed=3, a=a, b=b)
    rng = np.random.default_rng(0)
    shingles = rng.integers(0, 2**64, size=50, dtype=np.uint64)
    edges = [0, 1, P - 1, P, P + 1, 2**62, 2**64 - 1]
    shingles = np.r_[shingles, np.array(edges, dtype=np.uint64)]
    table = [
        [(int(a) * (int(x) % P) + int(b)) % P for a, b in zip(mh.a, mh.b, strict=True)]
        for x in shingles
    ]
    reduced = np.array([int(x) % P for x in shingles], dtype=np.uint64)
    assert mh._hash(reduced).tolist() == table, "every (shingle, hash) value, edges included"
    signature = mh.signature(shingles).tolist()
    assert signature == [min(col) for col in zip(*table, strict=True)]
    assert signature[3] == 0, "the block holding a value equal to P was reduced before its min"


def test_numpy_blocked_signatures_equal_the_per_document_minimum_of_every_hash():
    """The blocked, transposed batch path (blocks spanning and cutting documents, empty ones
    between) against the column minimum of the one-by-one hash table, value for value."""
    mh = NumpyMinHash(128, seed=4)
    rng = np.random.default_rng(2)
    sizes = (5, 0, 3000, 1, 40, 0, 7, mh.step, 2 * mh.step + 1, 0)
    sets = [rng.integers(0, 2**64, size=k, dtype=np.uint64) for k in sizes]
    offsets = np.r_[0, np.cumsum(sizes)]
    got = mh.signatures_flat(np.concatenate(sets), offsets)
    empty = np.iinfo(np.uint64).max
    for row, s in zip(got, sets, strict=True):
        reduced = np.array([int(x) % MERSENNE_61 for x in s], dtype=np.uint64)
        want = mh._hash(reduced).min(axis=0) if len(s) else np.full(128, empty, np.uint64)
        assert np.array_equal(row, want)
    assert np.array_equal(got, mh.signatures(sets))


def test_numpy_minhash_rejects_parameters_outside_the_field():
    with pytest.raises(ValueError, match="a must be"):
        NumpyMinHash(2, seed=0, a=np.array([0, 1], np.uint64), b=np.zeros(2, np.uint64))
    with pytest.raises(ValueError, match="2 values"):
        NumpyMinHash(2, seed=0, a=np.ones(3, np.uint64), b=np.zeros(2, np.uint64))


def test_tokenize_uses_dots_normalisation_and_jieba_for_chinese():
    assert tokenize("Hello, World! It's  here.") == ["hello", "world", "its", "here"]
    zh = tokenize("我们今天去北京大学。")
    assert "北京大学" in zh or "北京" in zh
    assert tokenize("我们今天", "chars") == ["我", "们", "今", "天"]
    assert len(shingle_hashes("a b c d e f".split(), 5)) == 2
    assert len(shingle_hashes(["a", "b"], 5)) == 1


def _chinese_texts(seed: int, n: int) -> list[str]:
    """Dictionary-word paragraphs, raw and dots-normalised, random Han runs (the HMM path) and
    Chinese mixed with letters, digits and rare characters."""
    from moelab.data.normalize import dots_normalize
    from moelab.data.synth.text import chinese_paragraph

    rng = np.random.default_rng(seed)

    def han(k: int) -> str:
        return "".join(chr(c) for c in rng.integers(0x4E00, 0x9FD6, size=k))

    texts = []
    for i in range(n):
        para = "".join(chinese_paragraph(rng, 4) for _ in range(2))
        parts = [para[:40], "abc 12.5% x", han(20), "中文English混合a1b2", " 龘靐齉爩 ", "\r\n"]
        mixed = "".join(parts[j] for j in rng.integers(0, len(parts), size=6))
        texts.append((para, dots_normalize(para), han(int(rng.integers(1, 200))), mixed)[i % 4])
    return texts


def test_fused_jieba_gives_jiebas_tokens_exactly():
    import jieba

    from moelab.data.dedup import zh

    texts = _chinese_texts(7, 160)
    texts += [
        "结婚的和尚未结婚的 北京大学生前来应聘 乒乓球拍卖完了",  # classic ambiguous segmentations
        "中文 English mixed 123 文本, 还有-连字符_和%号 \r\n 空格  结束",
        "",
        " ",
        "的",
        "龘靐齉爩",  # rare characters: the HMM's unknown-run path
    ]
    zh._STATE.get("hmm", {}).clear()
    for text in texts:
        assert zh.cut(text) == jieba.lcut(text), text
    for text in texts:
        assert zh.cut(text) == jieba.lcut(text), "memoised HMM answers stay the same"


def test_zh_tokenizer_rjieba_matches_jieba_on_jiebas_han_range():
    import jieba

    from moelab.data.normalize import dots_normalize

    pytest.importorskip("rjieba")
    texts = [dots_normalize(t) for t in _chinese_texts(3, 40)]
    want = [[w for w in jieba.lcut(t) if not w.isspace()] for t in texts]
    assert [tokenize(t, "jieba") for t in texts] == want
    assert [tokenize(t, "rjieba") for t in texts] == want, "rjieba's HMM cuts as jieba's does"
    assert [tokenize(t, "auto") for t in texts] == want
    # but it keeps a run of CJK extension-B characters (outside jieba's range) as one token
    assert tokenize("𠀀𠀁 中文", "rjieba") != tokenize("𠀀𠀁 中文", "jieba")


def test_zh_tokenizer_without_rjieba(monkeypatch):
    from moelab.data.dedup import shingles

    monkeypatch.setitem(__import__("sys").modules, "rjieba", None)  # as if not installed
    monkeypatch.setattr(shingles, "_ZH_CUTTERS", {})
    text = "我们今天去北京大学看看"
    assert tokenize(text, "auto") == tokenize(text, "jieba"), "auto falls back to jieba"
    with pytest.raises(ImportError, match="zh-fast"):
        MinHashDedup(MinHashConfig(zh_tokenizer="rjieba"))
    with pytest.raises(ValueError, match="unknown Chinese tokenizer"):
        tokenize(text, "pkuseg")


def _pairs_at_jaccard(rng, n_pairs: int, words: int = 200):
    """(shingles A, shingles B, exact J) for pairs sharing a controlled run of shingle hashes."""
    out = []
    for _ in range(n_pairs):
        target = rng.uniform(0.45, 1.0)
        common = rng.integers(0, 2**63, size=int(words * target), dtype=np.uint64)
        rest = words - len(common)
        a = np.unique(np.r_[common, rng.integers(0, 2**63, size=rest, dtype=np.uint64)])
        b = np.unique(np.r_[common, rng.integers(0, 2**63, size=rest, dtype=np.uint64)])
        out.append((a, b, jaccard(a, b)))
    return out


@pytest.mark.slow
def test_rensa_dots_banding_follows_the_theoretical_s_curve():
    """Recall ≥ 0.97 at J∈[0.8,0.9), 1.0 at ≥ 0.9, curve within ±0.05 of 1-(1-J^16)^128."""
    rng = np.random.default_rng(0)
    pairs = _pairs_at_jaccard(rng, 3000)
    sig_a = rensa_signatures([p[0] for p in pairs], 2048, 1)
    sig_b = rensa_signatures([p[1] for p in pairs], 2048, 1)
    hit = (band_keys(sig_a, 128, 16) == band_keys(sig_b, 128, 16)).any(axis=1)
    js = np.array([p[2] for p in pairs])
    for lo, hi in [(0.5, 0.6), (0.6, 0.7), (0.7, 0.75), (0.75, 0.8), (0.8, 0.9), (0.9, 1.01)]:
        sel = (js >= lo) & (js < hi)
        assert sel.sum() >= 100
        theory = np.mean(1 - (1 - js[sel] ** 16) ** 128)
        assert abs(hit[sel].mean() - theory) <= 0.05, (lo, hit[sel].mean(), theory)
    assert hit[(js >= 0.8) & (js < 0.9)].mean() >= 0.97
    assert hit[js >= 0.9].all()
    assert (js[hit] < 0.5).mean() <= 0.01, "at most 1% of candidates below J = 0.5"
    low = rng.integers(0, 2**63, size=(400, 200), dtype=np.uint64)
    keys = band_keys(rensa_signatures(list(low), 2048, 1), 128, 16)
    shared = sum(len(bucket_edges(keys[:, b])) for b in range(128))
    assert shared == 0, "unrelated documents never share a band"


def test_numpy_backend_agrees_with_theory_on_a_small_sample():
    rng = np.random.default_rng(1)
    pairs = [p for p in _pairs_at_jaccard(rng, 60, words=80) if p[2] >= 0.9 or p[2] < 0.55]
    mh = NumpyMinHash(512, seed=2)
    a = band_keys(mh.signatures([p[0] for p in pairs]), 32, 16)
    b = band_keys(mh.signatures([p[1] for p in pairs]), 32, 16)
    hit = (a == b).any(axis=1)
    js = np.array([p[2] for p in pairs])
    assert hit[js >= 0.9].mean() >= 0.9 and hit[js < 0.55].mean() <= 0.1


def test_bucket_edges_and_components():
    keys = np.array([5, 7, 5, 9, 7, 5], dtype=np.uint64)
    edges = {tuple(e) for e in bucket_edges(keys).tolist()}
    assert edges == {(0, 2), (0, 5), (1, 4)}
    roots = connected_roots(7, np.array([[5, 6], [3, 5], [1, 2]]))
    assert roots.tolist() == [0, 1, 1, 3, 4, 3, 3]


def _near_dup_corpus(seed: int = 0):
    from moelab.data.synth.text import english_sentences

    rng = np.random.default_rng(seed)
    s = english_sentences()
    vocab = sorted({w for x in s for w in x.split() if w.isalpha()})
    docs = []
    for i in range(40):
        idx = rng.choice(len(s), size=12, replace=False)
        docs.append(Document(f"o{i:02d}", " ".join(s[k] for k in idx)))
    for i in range(0, 40, 2):
        words = docs[i].text.split()
        for k in rng.choice(len(words), size=len(words) // 50, replace=False):
            words[k] = vocab[int(rng.integers(len(vocab)))]
        docs.append(Document(f"n{i:02d}", " ".join(words)))
    rng.shuffle(docs)
    return docs


@pytest.mark.parametrize("backend", ["rensa", "numpy"])
def test_minhash_passes_remove_near_duplicates_only(tmp_path, backend):
    docs = _near_dup_corpus()
    cfg = MinHashConfig(backend=backend)
    outputs = set()
    for n in (1, 3):
        kept, drops = run_global(MinHashDedup(cfg), split(docs, n), tmp_path / f"w{n}")
        assert len(drops) == 20
        for removed, reason, meta in drops:
            assert reason == "near_duplicate" and removed[1:] == meta["duplicate_of"][1:]
        outputs.add(tuple(d.id for d in kept))
    assert len(outputs) == 1, "the same documents survive for any sharding"
    work = tmp_path / "w3"
    assert (work / "buckets" / "band_000.npy").exists() and (work / "clusters.npz").exists()


def test_batch_shingles_do_not_depend_on_the_batch():
    from moelab.data.dedup.shingles import batch_shingles, token_text
    from moelab.data.normalize import dots_normalize

    texts = [
        "One two, three four five six!",
        "",
        "short one",
        "Tabs\tand\nnew  lines here ok",
        "中文文本的测试，我们今天去北京大学看看。",
        "Ünïcödé wörds arë normalised too, yes indeed.",
    ]
    for t in texts:
        assert tokenize(t) == dots_normalize(t).split() or "\u4e00" <= t[:1] <= "\u9fff"
    flat, offsets = batch_shingles([token_text(t) for t in texts])
    for i, t in enumerate(texts):
        alone = np.unique(batch_shingles([token_text(t)])[0])
        assert np.array_equal(np.unique(flat[offsets[i] : offsets[i + 1]]), alone)
        assert np.array_equal(alone, shingle_hashes(tokenize(t)))
    assert offsets[2] - offsets[1] == 0 and offsets[3] - offsets[2] == 1
