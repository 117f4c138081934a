"""`moelab tokens tokenize`: documents → shards, split by id hash, parallel, resumable."""

from __future__ import annotations

import filecmp
import json
import subprocess
import sys
from pathlib import Path

import pytest

from moelab.cli import main
from moelab.data.document import read_documents
from moelab.tokens.config import TokenizeConfig
from moelab.tokens.loader import TokenLoader
from moelab.tokens.pipeline import SPLITS, split_of, tokenize
from moelab.tokens.shards import ShardError, ShardReader, ShardWriter
from moelab.tokens.tokenizer import Tokenizer


def _cfg(docs: Path, out: Path, tok: Path, **kw) -> TokenizeConfig:
    base = {
        "docs_dir": str(docs),
        "out_dir": str(out),
        "tokenizer": str(tok),
        "validation_fraction": 0.2,
    }
    return TokenizeConfig.from_dict({**base, "batch_docs": 16, **kw})


def _shard_files(out: Path) -> list[Path]:
    return sorted(p.relative_to(out) for split in SPLITS for p in (out / split).glob("shard_*"))


def _same_output(a: Path, b: Path) -> bool:
    files = _shard_files(a)
    return files == _shard_files(b) and all(filecmp.cmp(a / f, b / f, shallow=False) for f in files)


def test_every_document_lands_once_in_its_split(tmp_path, docs_factory, tokenizer_dir) -> None:
    docs_dir = docs_factory(tmp_path, n_files=3, per_file=40)
    summary = tokenize(_cfg(docs_dir, tmp_path / "out", tokenizer_dir))
    tk = Tokenizer.from_file(tokenizer_dir)
    expected = {split: [] for split in SPLITS}
    for path in sorted(docs_dir.iterdir()):
        for doc in read_documents(path):
            expected[split_of(doc.id, 0.2)].append(tk.encode(doc.text) + [tk.eos_id])
    for split in SPLITS:
        reader = ShardReader(
            tmp_path / "out" / split, tokenizer_hash=tk.hash, vocab_size=tk.vocab_size
        )
        got = [reader.document(i).tolist() for i in range(reader.num_docs)]
        assert got == expected[split]
        assert summary[split] == {"tokens": reader.num_tokens, "docs": len(got)}
        assert reader.meta.extra["tokenizer"]["eos_id"] == tk.eos_id
    assert 0 < len(expected["validation"]) < len(expected["train"])
    assert summary["processed"] == 3 and summary["skipped"] == 0
    loader = TokenLoader(tmp_path / "out" / "train", 32, 4, tokenizer_hash=tk.hash, shuffle=False)
    stream = [t for ids in expected["train"] for t in ids]
    assert next(iter(loader)).inputs[0].tolist() == stream[:32]  # the trainer reads these shards


def test_split_depends_only_on_the_id() -> None:
    ids = [f"doc-{i}" for i in range(4000)]
    first = [split_of(i, 0.1) for i in ids]
    assert first == [split_of(i, 0.1) for i in ids]
    assert 0.08 < first.count("validation") / len(ids) < 0.12
    assert [split_of(i, 0.1, salt="other") for i in ids] != first


def test_two_workers_write_the_same_bytes(
    tmp_path, docs_factory, tokenizer_dir, monkeypatch
) -> None:
    docs_dir = docs_factory(tmp_path, n_files=4, per_file=30)
    tokenize(_cfg(docs_dir, tmp_path / "one", tokenizer_dir, workers=1))
    tokenize(_cfg(docs_dir, tmp_path / "two", tokenizer_dir, workers=2))
    assert _same_output(tmp_path / "one", tmp_path / "two")
    # nor do the batch sizes: one document per tokenizers call and a write every few
    # documents, against everything in one call and one write per shard and split
    writes = []
    real_write = ShardWriter.write_packed
    monkeypatch.setattr(
        ShardWriter, "write_packed", lambda self, *a: writes.append(1) or real_write(self, *a)
    )
    tokenize(_cfg(docs_dir, tmp_path / "small", tokenizer_dir, batch_docs=1, write_chars=200))
    assert len(writes) > 4 * 10  # several writes to every shard
    writes.clear()
    tokenize(_cfg(docs_dir, tmp_path / "big", tokenizer_dir, batch_docs=10_000))
    assert len(writes) == 4 * len(SPLITS)
    assert _same_output(tmp_path / "one", tmp_path / "small")
    assert _same_output(tmp_path / "one", tmp_path / "big")
    for split in SPLITS:
        meta_one = json.loads((tmp_path / "one" / split / "meta.json").read_text())
        meta_two = json.loads((tmp_path / "two" / split / "meta.json").read_text())
        assert meta_one["shards"] == meta_two["shards"]


def test_shards_do_not_depend_on_the_gzip_reader(
    tmp_path, docs_factory, tokenizer_dir, monkeypatch
) -> None:
    import gzip

    from moelab.data import document

    pytest.importorskip("isal")  # the `data` extra; without it both runs use zlib
    docs_dir = docs_factory(tmp_path, n_files=2, per_file=30)
    assert document._read_gzip is not gzip
    tokenize(_cfg(docs_dir, tmp_path / "isal", tokenizer_dir))
    monkeypatch.setattr(document, "_read_gzip", gzip)
    tokenize(_cfg(docs_dir, tmp_path / "zlib", tokenizer_dir))
    assert _same_output(tmp_path / "isal", tmp_path / "zlib")


WORKERS_MUST_NOT_HASH = """
import os, sys
from moelab.tokens.config import TokenizeConfig
from moelab.tokens.pipeline import _start_method, tokenize
from moelab.tokens.tokenizer import Tokenizer

assert _start_method() == "fork", "torch was imported: workers would be spawned, not patched"
parent, real = os.getpid(), Tokenizer._content_hash

def parent_only(self):
    if os.getpid() != parent:
        raise RuntimeError("a worker hashed the tokenizer again")
    return real(self)

def not_rebuilt(*args, **kwargs):
    raise RuntimeError("a forked worker rebuilt the tokenizer instead of inheriting it")

Tokenizer._content_hash = parent_only
Tokenizer.from_str = not_rebuilt
docs, out, tok = sys.argv[1:]
tokenize(TokenizeConfig.from_dict({"docs_dir": docs, "out_dir": out, "tokenizer": tok, "workers": 2}))
"""


def test_forked_workers_reuse_the_parents_tokenizer(tmp_path, docs_factory, tokenizer_dir) -> None:
    # its own process: this one may have imported torch, which makes the pool spawn workers
    (tokenizer_dir / "tokenizer_config.json").unlink()  # no recorded hash: the parent hashes
    docs_dir = docs_factory(tmp_path, n_files=2, per_file=10)
    args = [str(docs_dir), str(tmp_path / "out"), str(tokenizer_dir)]
    run = subprocess.run(
        [sys.executable, "-c", WORKERS_MUST_NOT_HASH, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert len(list((tmp_path / "out" / "completions").glob("*.json"))) == 2


def test_resume_after_a_crash_finishes_without_duplicates(
    tmp_path, docs_factory, tokenizer_dir
) -> None:
    docs_dir = docs_factory(tmp_path, n_files=4, per_file=30)
    tokenize(_cfg(docs_dir, tmp_path / "clean", tokenizer_dir))
    broken = docs_dir / "00003.jsonl"
    good_text = broken.read_text()
    broken.write_text(good_text + "{not json\n")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="00003.jsonl:31: not a document"):
        tokenize(_cfg(docs_dir, out, tokenizer_dir))
    markers = sorted(p.name for p in (out / "completions").iterdir())
    assert markers == ["00000.json", "00001.json", "00002.json"]
    assert not (out / "train" / "meta.json").exists()
    assert not list(out.rglob("*.tmp"))
    (out / "train" / "shard_00003.bin.tmp").write_bytes(b"left over by a killed worker")
    finished = {p: p.stat().st_mtime_ns for p in (out / "train").glob("shard_0000[0-2].bin")}
    broken.write_text(good_text)
    summary = tokenize(_cfg(docs_dir, out, tokenizer_dir))
    assert (summary["processed"], summary["skipped"]) == (1, 3)
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # finished work untouched
    assert _same_output(tmp_path / "clean", out)
    assert not list(out.rglob("*.tmp"))
    again = tokenize(_cfg(docs_dir, out, tokenizer_dir))
    assert (again["processed"], again["skipped"]) == (0, 4)
    assert again["train"] == summary["train"]
    (docs_dir / "00004.jsonl").write_text("{not json\n")  # a new input that fails
    with pytest.raises(ValueError):
        tokenize(_cfg(docs_dir, out, tokenizer_dir))
    assert not (out / "train" / "meta.json").exists()  # never a meta.json over a changing folder


def test_rerun_with_another_tokenizer_or_split_is_refused(
    tmp_path, docs_factory, tokenizer_dir, texts
) -> None:
    from moelab.tokens.tokenizer import train_bpe

    docs_dir = docs_factory(tmp_path, n_files=1, per_file=10)
    tokenize(_cfg(docs_dir, tmp_path / "out", tokenizer_dir))
    other = train_bpe(texts(50, seed=9), vocab_size=300).save(tmp_path / "other")
    with pytest.raises(ShardError, match="belongs to another run"):
        tokenize(_cfg(docs_dir, tmp_path / "out", other))
    with pytest.raises(ShardError, match="'validation_fraction': 0.5"):
        tokenize(_cfg(docs_dir, tmp_path / "out", tokenizer_dir, validation_fraction=0.5))


def test_cli_trains_tokenizes_and_checks(tmp_path, docs_factory, capsys) -> None:
    docs_dir = docs_factory(tmp_path, n_files=2, per_file=20)
    tok, out = tmp_path / "tok", tmp_path / "shards"
    train = [f"docs_dir={docs_dir}", f"out_dir={tok}", "vocab_size=320"]
    assert main(["tokens", "train-tokenizer", *train]) == 0
    assert json.loads(capsys.readouterr().out)["vocab_size"] <= 320
    args = [f"docs_dir={docs_dir}", f"out_dir={out}", f"tokenizer={tok}", "validation_fraction=0.1"]
    assert main(["tokens", "tokenize", *args]) == 0
    assert json.loads(capsys.readouterr().out)["train"]["docs"] > 0
    assert main(["tokens", "check", str(out / "train"), "--tokenizer", str(tok)]) == 0
    capsys.readouterr()
    assert main(["tokens", "check", str(out / "train"), "--vocab-size", "100"]) == 1
    assert "does not fit the model's vocab_size (100)" in capsys.readouterr().err
    assert main(["tokens", "tokenize", f"docs_dir={docs_dir}", "workers=0"]) == 2
    assert "out_dir: is required" in capsys.readouterr().err
