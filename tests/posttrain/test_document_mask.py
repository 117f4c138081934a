"""Packed rows: with document_ids and restarting positions, each conversation computes as if alone."""

from __future__ import annotations

import pytest
import torch

from moelab.model import build_model
from moelab.model.config import ModelConfig
from moelab.posttrain.packing import Example, PackedLoader, best_fit

from .conftest import VOCAB, model_dict


@pytest.mark.parametrize("family", ["dots1", "olmoe"])
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_packed_row_equals_each_document_alone(family, impl):
    cfg = ModelConfig.from_dict(model_dict(family), [f"attention.impl={impl}"])
    model = build_model(cfg, seed=0).eval()
    gen = torch.Generator().manual_seed(0)
    docs = [torch.randint(0, VOCAB, (n,), generator=gen) for n in (7, 12, 5)]
    packed = torch.cat([*docs, torch.zeros(4, dtype=torch.long)])[None]  # 4 padding tokens
    document_ids = torch.cat(
        [torch.full((len(d),), i) for i, d in enumerate(docs)] + [torch.full((4,), -1)]
    )
    positions = torch.cat([torch.arange(len(d)) for d in docs] + [torch.arange(4)])
    with torch.no_grad():
        together = model(packed, positions=positions[None], document_ids=document_ids[None]).logits[
            0
        ]
        alone = torch.cat([model(d[None]).logits[0] for d in docs])
        unmasked = model(packed).logits[0, : alone.shape[0]]
    torch.testing.assert_close(together[: alone.shape[0]], alone, rtol=0, atol=2e-5)
    # Without the mask the later documents would see the earlier ones: the test can fail.
    assert (unmasked[7:] - alone[7:]).abs().max() > 1e-2


def test_one_document_is_the_plain_causal_path():
    model = build_model(ModelConfig.from_dict(model_dict("dots1")), seed=0).eval()
    x = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = model(x).logits
        masked = model(x, document_ids=torch.zeros_like(x)).logits
    torch.testing.assert_close(masked, plain, rtol=0, atol=1e-5)


def test_document_ids_with_a_kv_cache_is_refused():
    from moelab.infer.kv_cache import KVCache

    cfg = ModelConfig.from_dict(model_dict("olmoe"))
    model = build_model(cfg, seed=0)
    cache = KVCache.for_model(cfg, 1, 16, dtype=torch.float32, device=torch.device("cpu"))
    x = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="KV cache"):
        model(x, kv_cache=cache, document_ids=torch.zeros_like(x))


def test_best_fit_fills_rows_and_keeps_every_item():
    lengths = [30, 20, 40, 10, 25, 5, 64]
    rows = best_fit(lengths, 64)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= 64 for r in rows)
    assert len(rows) == 4  # 194 tokens need at least 4 rows of 64
    with pytest.raises(ValueError, match="capacity"):
        best_fit([65], 64)


def test_packed_rows_carry_documents_positions_and_ignored_padding():
    import numpy as np

    examples = [
        Example(np.arange(1, n + 1), np.where(np.arange(n) % 2 == 0, -100, 7)) for n in (5, 9, 3, 6)
    ]
    loader = PackedLoader(examples, seq_len=12, batch_size=1, seed=0)
    batch = next(iter(loader))
    docs, pos, targets = batch.document_ids[0], batch.positions[0], batch.targets[0]
    members = loader.rows(0)[0]
    at = 0
    for slot, i in enumerate(members):
        n = len(examples[i].inputs)
        assert docs[at : at + n].tolist() == [slot] * n
        assert pos[at : at + n].tolist() == list(range(n))
        at += n
    assert docs[at:].tolist() == [-1] * (12 - at) and (targets[at:] == -100).all()
    assert batch.trained_tokens == int((targets != -100).sum())
