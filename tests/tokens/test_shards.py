"""Shard files: round trip, reading across shards, and the errors a trainer must see early."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moelab.tokens.shards import ShardError, ShardReader, ShardWriter, validate_shards, write_meta

TOKENIZER = {"hash": "sha256:aaaa", "vocab_size": 1000, "family": "demo"}


def _docs(seed: int, n: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 1000, size=rng.integers(1, 50)).tolist() for _ in range(n)]


def _write_folder(directory: Path, shards: list[list[list[int]]]) -> None:
    infos = []
    for i, docs in enumerate(shards):
        writer = ShardWriter(directory, i)
        writer.write(docs[: len(docs) // 2])
        writer.write(docs[len(docs) // 2 :])
        infos.append(writer.close())
    write_meta(directory, infos, TOKENIZER, {"split": "train"})


def test_round_trip_documents_and_stream(tmp_path: Path) -> None:
    shards = [_docs(0, 7), [], _docs(1, 5)]
    _write_folder(tmp_path, shards)
    reader = ShardReader(tmp_path, tokenizer_hash="sha256:aaaa", vocab_size=1000)
    all_docs = [d for s in shards for d in s]
    assert reader.num_docs == len(all_docs) == reader.meta.num_docs
    assert [reader.document(i).tolist() for i in range(reader.num_docs)] == all_docs
    stream = np.concatenate([np.asarray(d) for d in all_docs])
    assert reader.num_tokens == len(stream)
    boundary = sum(len(d) for d in shards[0])
    np.testing.assert_array_equal(
        reader.read(boundary - 3, 10), stream[boundary - 3 : boundary + 7]
    )
    assert reader.meta.extra["split"] == "train"
    assert reader.meta.max_token_id == int(stream.max())
    assert (tmp_path / "shard_00000.bin").stat().st_size == 4 * boundary  # uint32 on disk


def test_truncated_bin_is_named(tmp_path: Path) -> None:
    _write_folder(tmp_path, [_docs(0, 4), _docs(1, 4)])
    path = tmp_path / "shard_00001.bin"
    path.write_bytes(path.read_bytes()[:-6])
    with pytest.raises(ShardError, match=r"shard_00001\.bin is .* truncated"):
        ShardReader(tmp_path)


def test_missing_meta_says_unfinished(tmp_path: Path) -> None:
    _write_folder(tmp_path, [_docs(0, 4)])
    (tmp_path / "meta.json").unlink()
    with pytest.raises(ShardError, match="meta.json is missing.*not a finished shard folder"):
        validate_shards(tmp_path)
    with pytest.raises(ShardError, match="does not exist"):
        validate_shards(tmp_path / "nope")


def test_other_tokenizer_is_refused(tmp_path: Path) -> None:
    _write_folder(tmp_path, [_docs(0, 4)])
    with pytest.raises(
        ShardError, match="tokenized with tokenizer sha256:aaaa, but this run uses sha256:bbbb"
    ):
        validate_shards(tmp_path, tokenizer_hash="sha256:bbbb")


def test_vocabulary_must_fit_the_model(tmp_path: Path) -> None:
    _write_folder(tmp_path, [_docs(0, 4)])
    with pytest.raises(
        ShardError, match=r"vocabulary \(1000 ids.*does not fit the model's vocab_size \(512\)"
    ):
        validate_shards(tmp_path, vocab_size=512)
    assert validate_shards(tmp_path, vocab_size=1024).num_docs == 4


def test_writer_exception_leaves_no_shard(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), ShardWriter(tmp_path, 3) as writer:
        writer.write([[1, 2, 3]])
        raise RuntimeError("worker died")
    assert list(tmp_path.iterdir()) == []


def test_token_ids_must_fit_uint32(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path, 0)
    with pytest.raises(ShardError, match="uint32"):
        writer.write([[1, 2**32]])
    writer.abort()


def test_packed_writes_equal_per_document_writes(tmp_path: Path) -> None:
    docs = _docs(2, 9)
    _write_folder(tmp_path / "lists", [docs])
    writer = ShardWriter(tmp_path / "packed", 0)
    for part in (docs[:4], [], docs[4:]):
        tokens = np.array([t for d in part for t in d], dtype=np.uint32)
        writer.write_packed(tokens, np.cumsum([len(d) for d in part], dtype=np.int64))
    write_meta(tmp_path / "packed", [writer.close()], TOKENIZER, {"split": "train"})
    for name in ("shard_00000.bin", "shard_00000.idx", "meta.json"):
        assert (tmp_path / "packed" / name).read_bytes() == (tmp_path / "lists" / name).read_bytes()


def test_packed_write_checks_its_index(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path, 0)
    tokens = np.arange(6, dtype=np.uint32)
    with pytest.raises(ShardError, match="not an index"):
        writer.write_packed(tokens, np.array([2, 5]))  # ends short of the tokens
    with pytest.raises(ShardError, match="not an index"):
        writer.write_packed(tokens, np.array([4, 2, 6]))
    with pytest.raises(ShardError, match="uint32"):
        writer.write_packed(tokens.astype(np.int64), np.array([6]))
    assert writer.tokens == 0
    writer.abort()
