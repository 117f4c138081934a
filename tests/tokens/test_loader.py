"""The trainer's loader: rows, document boundaries, determinism, rank sharding, exact resume."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import numpy as np
import pytest

from moelab.tokens import packing
from moelab.tokens.loader import TokenLoader
from moelab.tokens.shards import ShardError, ShardWriter, write_meta

EOS = 0


@pytest.fixture()
def shards(tmp_path: Path) -> Path:
    """Three shards of documents whose tokens are 1..(len) and end with EOS 0."""
    rng = np.random.default_rng(0)
    infos = []
    for i in range(3):
        writer = ShardWriter(tmp_path, i)
        docs = [list(range(1, int(n))) + [EOS] for n in rng.integers(2, 40, size=60)]
        writer.write(docs)
        infos.append(writer.close())
    write_meta(tmp_path, infos, {"hash": "sha256:test", "vocab_size": 64})
    return tmp_path


def _batches(loader: TokenLoader, n: int) -> list:
    return list(islice(iter(loader), n))


def test_rows_are_the_stream_shifted_by_one(shards: Path) -> None:
    loader = TokenLoader(shards, seq_len=16, batch_size=4, shuffle=False)
    stream = loader.reader.read(0, loader.reader.num_tokens).astype(np.int64)
    first = _batches(loader, 2)
    inputs = np.concatenate([b.inputs for b in first]).reshape(-1)
    np.testing.assert_array_equal(inputs, stream[: 8 * 16])
    np.testing.assert_array_equal(first[0].targets[:, :-1], first[0].inputs[:, 1:])
    np.testing.assert_array_equal(first[0].targets[0, -1], stream[16])
    assert first[0].inputs.dtype == np.int64 and first[0].inputs.shape == (4, 16)


def test_segments_and_positions_restart_after_each_eos(shards: Path) -> None:
    loader = TokenLoader(shards, seq_len=32, batch_size=8, seed=3)
    batch = next(iter(loader))
    after_eos = np.zeros_like(batch.inputs, dtype=bool)
    after_eos[:, 1:] = batch.inputs[:, :-1] == EOS
    np.testing.assert_array_equal(np.diff(batch.segment_ids, axis=1), after_eos[:, 1:])
    assert (batch.segment_ids[:, 0] == 0).all()
    assert (batch.position_ids[after_eos] == 0).all()
    # the documents count up from token 1, so where a document starts inside the row, position == token - 1
    starts_here = after_eos
    np.testing.assert_array_equal(batch.position_ids[starts_here], batch.inputs[starts_here] - 1)


def test_hand_computed_segments() -> None:
    ends = np.array([3, 5, 9])
    np.testing.assert_array_equal(packing.segment_ids(ends, np.array([2]), 5), [[0, 1, 1, 2, 2]])
    np.testing.assert_array_equal(packing.position_ids(ends, np.array([2]), 5), [[0, 0, 1, 0, 1]])
    assert packing.num_rows(33, 16) == 2 and packing.num_rows(32, 16) == 1


def test_same_seed_same_batches_other_seed_other_order(shards: Path) -> None:
    a = _batches(TokenLoader(shards, seq_len=16, batch_size=4, seed=1), 5)
    b = _batches(TokenLoader(shards, seq_len=16, batch_size=4, seed=1), 5)
    c = _batches(TokenLoader(shards, seq_len=16, batch_size=4, seed=2), 5)
    assert all((x.inputs == y.inputs).all() for x, y in zip(a, b, strict=True))
    assert not all((x.inputs == y.inputs).all() for x, y in zip(a, c, strict=True))


def test_ranks_split_each_global_batch_without_overlap(shards: Path) -> None:
    loaders = [
        TokenLoader(shards, seq_len=16, batch_size=3, seed=5, rank=r, world_size=2)
        for r in range(2)
    ]
    single = TokenLoader(shards, seq_len=16, batch_size=6, seed=5)
    assert loaders[0].batches_per_epoch == loaders[1].batches_per_epoch == single.batches_per_epoch
    for step in range(single.batches_per_epoch):
        parts = [ld.rows_for(0, step) for ld in loaders]
        assert not set(parts[0]) & set(parts[1])
        np.testing.assert_array_equal(np.concatenate(parts), single.rows_for(0, step))


@pytest.mark.parametrize("where", ["mid-epoch", "next-epoch"])
def test_resume_equals_uninterrupted(shards: Path, where: str) -> None:
    kwargs = {"seq_len": 64, "batch_size": 2, "seed": 7, "rank": 1, "world_size": 2}
    first = TokenLoader(shards, **kwargs)
    stop = 3 if where == "mid-epoch" else first.batches_per_epoch + 2
    straight = _batches(TokenLoader(shards, **kwargs), first.batches_per_epoch + 6)
    _batches(first, stop)
    state = first.state_dict()
    assert state["epoch"] == (0 if where == "mid-epoch" else 1)
    resumed = TokenLoader(shards, **kwargs)
    resumed.load_state_dict(state)
    for want, got in zip(straight[stop:], _batches(resumed, 6), strict=False):
        np.testing.assert_array_equal(want.inputs, got.inputs)
        np.testing.assert_array_equal(want.targets, got.targets)
        np.testing.assert_array_equal(want.segment_ids, got.segment_ids)


def _global_rows(loaders: list[TokenLoader], steps: int) -> list[int]:
    """The rows all ranks take over ``steps`` batches, in global order (advancing the loaders)."""
    rows = []
    for _ in range(steps):
        for ld in loaders:
            rows.extend(ld.rows_for(ld.epoch, ld.batch).tolist())
        for ld in loaders:
            ld.batch += 1
    return rows


@pytest.mark.parametrize(("world", "batch_size"), [(1, 4), (1, 2), (4, 1), (4, 2)])
def test_state_from_two_ranks_continues_the_global_order_on_another_layout(
    shards: Path, world: int, batch_size: int
) -> None:
    kwargs = {"seq_len": 16, "seed": 3}
    two = [TokenLoader(shards, batch_size=2, rank=r, world_size=2, **kwargs) for r in range(2)]
    straight = _global_rows(
        [TokenLoader(shards, batch_size=2, rank=r, world_size=2, **kwargs) for r in range(2)], 8
    )
    _global_rows(two, 4)  # 16 rows consumed: a multiple of 4 and of 8
    state = two[1].state_dict()  # any rank's state: the position is global
    assert state["rows"] == 16 and state == {**two[0].state_dict(), "rank": 1}
    resumed = [
        TokenLoader(shards, batch_size=batch_size, rank=r, world_size=world, **kwargs)
        for r in range(world)
    ]
    for ld in resumed:
        ld.load_state_dict(state)
    steps = 16 // (world * batch_size)
    assert _global_rows(resumed, steps) == straight[16:]
    # and what one rank yields is its block of those rows
    ld = TokenLoader(shards, batch_size=batch_size, rank=world - 1, world_size=world, **kwargs)
    ld.load_state_dict(state)
    got = next(iter(ld)).inputs
    want = ld.make_batch(np.array(straight[16 + (world - 1) * batch_size :][:batch_size])).inputs
    np.testing.assert_array_equal(got, want)


def test_other_layout_refused_off_its_batch_boundary(shards: Path) -> None:
    two = [TokenLoader(shards, seq_len=16, batch_size=2, rank=r, world_size=2) for r in range(2)]
    _global_rows(two, 3)  # 12 rows: not a multiple of 4 ranks x 2
    state = two[0].state_dict()
    with pytest.raises(ValueError, match=r"12 rows into epoch 0 .*4 x 2 = 8"):
        TokenLoader(shards, seq_len=16, batch_size=2, rank=0, world_size=4).load_state_dict(state)


def test_version_one_state_converts(shards: Path) -> None:
    kwargs = {"seq_len": 16, "batch_size": 2, "seed": 4, "world_size": 2}
    old = {
        **TokenLoader(shards, **kwargs).state_dict(),
        "version": 1,
        "batch": 3,
    }
    del old["rows"]
    resumed = TokenLoader(shards, seq_len=16, batch_size=3, seed=4)  # 3 x 2 x 2 = 12 = 3 x 4
    resumed.load_state_dict(old)
    assert (resumed.epoch, resumed.batch) == (0, 4)
    with pytest.raises(ValueError, match="unknown loader state version 9"):
        resumed.load_state_dict({**old, "version": 9})


def test_resume_refuses_other_settings(shards: Path) -> None:
    state = TokenLoader(shards, seq_len=16, batch_size=4, seed=1).state_dict()
    with pytest.raises(ValueError, match="seed=1.*seed=2"):
        TokenLoader(shards, seq_len=16, batch_size=4, seed=2).load_state_dict(state)


def test_torch_tensors_and_early_checks(shards: Path) -> None:
    import torch

    batch = next(iter(TokenLoader(shards, seq_len=16, batch_size=2, as_torch=True)))
    assert batch.inputs.dtype == torch.int64 and batch.segment_ids.dtype == torch.int32
    with pytest.raises(ShardError, match="does not fit"):
        TokenLoader(shards, seq_len=16, batch_size=2, vocab_size=32)
    with pytest.raises(ShardError, match="this run uses sha256:other"):
        TokenLoader(shards, seq_len=16, batch_size=2, tokenizer_hash="sha256:other")
    with pytest.raises(ValueError, match="fewer than one global batch"):
        TokenLoader(shards, seq_len=4000, batch_size=2)
    loader = TokenLoader(shards, seq_len=16, batch_size=4, max_epochs=1)
    assert len(list(loader)) == loader.batches_per_epoch


def test_document_mask_blocks_attention_across_documents() -> None:
    import torch

    seg = np.array([[0, 0, 1, 1, 1, 2]])
    mask = packing.document_causal_mask(seg)[0]
    assert mask[1, 0] and not mask[0, 1]  # causal inside a document
    assert not mask[2, 1] and mask[4, 2] and not mask[5, 4]  # nothing crosses a boundary
    assert mask.sum() == 3 + 6 + 1
    np.testing.assert_array_equal(
        packing.document_causal_mask(torch.from_numpy(seg)).numpy()[0], mask
    )


def test_bos_aligned_rows_start_at_document_starts_and_crop_the_rest(shards: Path) -> None:
    loader = TokenLoader(shards, seq_len=16, batch_size=4, seed=3, packing="bos_aligned")
    ends = loader.reader.doc_ends
    doc_starts = set(np.concatenate([[0], ends[:-1]]).tolist())
    starts = packing.bos_aligned_starts(ends, 16)
    assert set(starts.tolist()) <= doc_starts and len(starts) == loader.num_rows
    assert (np.diff(starts) >= 16).all()  # rows never share a target token
    # the skipped gap before each next row is only the cropped tail of one document
    for a, b in zip(starts[:-1], starts[1:], strict=True):
        between = [s for s in doc_starts if a + 16 <= s < b]
        assert between == []
    for batch in _batches(loader, loader.batches_per_epoch):
        assert (batch.position_ids[:, 0] == 0).all() and (batch.segment_ids[:, 0] == 0).all()
        # documents in these shards count 1, 2, 3, ...: a row starts with token 1
        assert (batch.inputs[:, 0] == 1).all()
        np.testing.assert_array_equal(batch.inputs[:, 1:], batch.targets[:, :-1])
    concat = TokenLoader(shards, seq_len=16, batch_size=4, seed=3)
    assert concat.packing == "concat" and concat.num_rows > loader.num_rows  # default unchanged
    assert (np.asarray([b.inputs[:, 0] for b in _batches(concat, 5)]) != 1).any()


def test_bos_aligned_hand_computed_and_resume(shards: Path) -> None:
    # documents of 3, 10, 2, 6 tokens: starts 0, 3, 13, 15; rows of 4+1 tokens
    assert packing.bos_aligned_starts(np.array([3, 13, 15, 21]), 4).tolist() == [0, 13]
    assert packing.bos_aligned_starts(np.array([3, 13, 15, 21]), 2).tolist() == [0, 3, 13, 15]
    kwargs = {"seq_len": 16, "batch_size": 2, "seed": 5, "packing": "bos_aligned"}
    first = TokenLoader(shards, **kwargs)
    straight = _batches(TokenLoader(shards, **kwargs), 8)
    _batches(first, 3)
    resumed = TokenLoader(shards, **kwargs)
    resumed.load_state_dict(first.state_dict())
    for want, got in zip(straight[3:], _batches(resumed, 5), strict=True):
        np.testing.assert_array_equal(want.inputs, got.inputs)
    with pytest.raises(ValueError, match="packing"):
        TokenLoader(shards, seq_len=16, batch_size=2, seed=5).load_state_dict(first.state_dict())
    old = TokenLoader(shards, seq_len=16, batch_size=2, seed=5).state_dict()
    del old["packing"]  # a state saved before the option existed resumes as concat
    TokenLoader(shards, seq_len=16, batch_size=2, seed=5).load_state_dict(old)
