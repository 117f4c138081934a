"""Exact and line-level dedup: what must be removed, what must survive, shard-independence."""

from __future__ import annotations

import numpy as np

from moelab.data.dedup.base import run_in_memory as run_global
from moelab.data.dedup.base import split_contiguous as split
from moelab.data.dedup.exact import ExactDedup
from moelab.data.dedup.lines import LineDedup, candidate_lines
from moelab.data.document import Document
from moelab.data.normalize import dots_md5, dots_normalize
from moelab.data.synth.text import english_sentences


def test_dots_normalisation():
    assert dots_normalize("  Hello,   WORLD!!  ") == "hello world"
    assert dots_normalize("你好，世界。") == "你好世界"
    assert dots_md5("It's a Test.") == dots_md5("its   a test")
    assert dots_md5("a test") != dots_md5("a tent")


def test_exact_dedup_removes_every_perturbed_copy_and_nothing_else(tmp_path):
    s = english_sentences()
    originals = [Document(f"o{i}", " ".join(s[i * 5 : i * 5 + 5])) for i in range(30)]
    copies = []
    for i in range(0, 30, 3):
        t = originals[i].text
        copies.append(Document(f"c{i}a", t.upper().replace(" ", "   ")))
        copies.append(Document(f"c{i}b", t.replace(".", "!").replace(",", "")))
    near = Document("near", originals[1].text + " extra")
    docs = originals + copies + [near]
    kept, drops = run_global(ExactDedup(seed=0), split(docs, 4), tmp_path / "w")
    assert len(drops) == 20 and all(r == "exact_duplicate" for _, r, _ in drops)
    family = {d.id: d.id.lstrip("oc").rstrip("ab") for d in docs}
    for removed, _, meta in drops:
        assert family[removed] == family[meta["duplicate_of"]], "no false merge"
    assert "near" in {d.id for d in kept}
    assert len({dots_md5(d.text) for d in kept}) == len(kept)


def test_exact_dedup_keeper_is_random_but_independent_of_sharding(tmp_path):
    docs = [Document(f"d{i}", "the same text") for i in range(50)]
    keepers = set()
    for n in (1, 3, 7):
        kept, _ = run_global(ExactDedup(seed=5), split(docs, n), tmp_path / f"w{n}")
        keepers.add(kept[0].id)
    assert len(keepers) == 1
    by_seed = {
        run_global(ExactDedup(seed=k), [docs], tmp_path / f"s{k}")[0][0].id for k in range(5)
    }
    assert len(by_seed) > 1, "the keeper is random (seeded), not always the first copy"


def _line_corpus(n_docs: int = 120, seed: int = 0) -> list[Document]:
    """Documents whose heads/tails draw from a few repeated lines; bodies are unique."""
    rng = np.random.default_rng(seed)
    s = english_sentences()
    heads = [
        "Breaking news from the newsroom",
        "Menu Home About Contact",
        "Sign up for our newsletter",
    ]
    docs = []
    for i in range(n_docs):
        body = [s[(i * 7 + k) % len(s)] for k in range(int(rng.integers(1, 12)))]
        head = [heads[int(rng.integers(3))]] if rng.random() < 0.8 else []
        tail = ["Share this story", "***", ""] if rng.random() < 0.7 else []
        middle = ["Menu Home About Contact"] if len(body) > 10 else []
        docs.append(Document(f"d{i:04d}", "\n".join(head + body[:5] + middle + body[5:] + tail)))
    return docs


def _sequential_reference(docs: list[Document], cap: int) -> list[str]:
    """The dots rule written as the plainest possible single pass over the corpus."""
    seen: dict[str, int] = {}
    out = []
    for doc in docs:
        lines = doc.text.split("\n")
        n = len(lines)
        positions = sorted(set(range(min(5, n))) | set(range(max(n - 5, 0), n)))
        drop = set()
        for i in positions:
            key = lines[i].strip()
            if not key or not any(ch.isalnum() for ch in key):
                continue
            seen[key] = seen.get(key, 0) + 1
            if seen[key] > cap:
                drop.add(i)
        text = "\n".join(x for i, x in enumerate(lines) if i not in drop)
        if text.strip():
            out.append(f"{doc.id}\t{text}")
    return out


def test_line_dedup_keeps_first_n_occurrences_in_corpus_order(tmp_path):
    docs = _line_corpus()
    cap = 10
    kept, drops = run_global(LineDedup(5, 5, cap), split(docs, 4), tmp_path / "w")
    assert [f"{d.id}\t{d.text}" for d in kept] == _sequential_reference(docs, cap)
    counts: dict[str, int] = {}
    for d in kept:
        for pos, _ in candidate_lines(d.text.split("\n"), 5, 5):
            line = d.text.split("\n")[pos].strip()
            counts[line] = counts.get(line, 0) + 1
    assert counts["Share this story"] == cap
    assert any("***" in d.text for d in kept[cap + 5 :]), "symbol-only lines are never counted"


def test_line_dedup_is_identical_for_any_sharding(tmp_path):
    docs = _line_corpus(200, seed=3)
    outputs = set()
    for n in (1, 2, 5, 13):
        kept, _ = run_global(LineDedup(5, 5, 7), split(docs, n), tmp_path / f"w{n}")
        outputs.add(tuple((d.id, d.text) for d in kept))
    assert len(outputs) == 1


def test_line_dedup_leaves_middle_lines_and_drops_emptied_docs(tmp_path):
    s = english_sentences()
    body = [s[i] for i in range(12)]
    repeated = "Menu Home About Contact"
    docs = [
        Document(f"d{i}", "\n".join([repeated, *body[:5], repeated, *body[5:]])) for i in range(5)
    ]
    docs += [Document("only", repeated)]
    kept, drops = run_global(LineDedup(5, 5, 2), [docs], tmp_path / "w")
    assert kept[4].text.split("\n")[0] != repeated
    assert repeated in kept[4].text, "a repeated line in the middle of a document is not touched"
    assert drops == [("only", "all_lines_removed", {})]


def test_line_dedup_incremental_run_equals_the_batch_run(tmp_path):
    docs = _line_corpus(240, seed=7)
    first, second = docs[:100], docs[100:]
    batch, _ = run_global(LineDedup(5, 5, 9), split(docs, 3), tmp_path / "batch")
    run_global(LineDedup(5, 5, 9), split(first, 2), tmp_path / "a")
    state = str(tmp_path / "a" / "line_counts.npz")
    inc, _ = run_global(LineDedup(5, 5, 9, state_in=state), split(second, 4), tmp_path / "b")
    tail = [(d.id, d.text) for d in batch if int(d.id[1:]) >= 100]
    assert [(d.id, d.text) for d in inc] == tail


def test_line_dedup_handles_an_empty_corpus(tmp_path):
    kept, drops = run_global(LineDedup(), [[], [Document("a", "")]], tmp_path / "w")
    assert [d.id for d in kept] == ["a"] and not drops
