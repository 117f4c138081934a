"""Attention: QK-norm placement, GQA, eager == sdpa, and the KV-cache hook."""

from __future__ import annotations

import pytest
import torch

from moelab.infer.kv_cache import KVCache
from moelab.model import build_model, get_preset


@pytest.mark.parametrize("preset", ["tiny-dots", "tiny-olmoe"])
@pytest.mark.parametrize("kv_heads", [None, 2])
def test_cached_decode_equals_full_recompute(preset, kv_heads):
    cfg = get_preset(preset)
    cfg.attention.num_kv_heads = kv_heads
    model = build_model(cfg).eval()
    x = torch.randint(0, cfg.vocab_size, (2, 12))
    with torch.no_grad():
        full = model(x).logits
        cache = KVCache.for_model(cfg, 2, 16, dtype=torch.float32, device="cpu")
        steps = [model(x[:, :8], kv_cache=cache).logits]
        for t in range(8, 12):
            pos = torch.full((2, 1), t)
            steps.append(model(x[:, t : t + 1], positions=pos, kv_cache=cache).logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("preset", ["tiny-dots", "tiny-olmoe"])
def test_eager_equals_sdpa(preset):
    cfg = get_preset(preset)
    model = build_model(cfg).eval()
    x = torch.randint(0, cfg.vocab_size, (2, 10))
    with torch.no_grad():
        sdpa = model(x).logits
        for block in model.layers.values():
            block.self_attn.impl = "eager"
        eager = model(x).logits
    torch.testing.assert_close(sdpa, eager, atol=1e-5, rtol=1e-5)


def test_qk_norm_shapes_per_family():
    dots = build_model(get_preset("tiny-dots"))
    olmoe = build_model(get_preset("tiny-olmoe"))
    assert dots.layers["0"].self_attn.q_norm.weight.shape == (32,)  # head_dim, shared by heads
    assert olmoe.layers["0"].self_attn.q_norm.weight.shape == (128,)  # whole projection


def test_causality():
    cfg = get_preset("tiny-olmoe")
    model = build_model(cfg).eval()
    x = torch.randint(0, cfg.vocab_size, (1, 10))
    y = x.clone()
    y[0, 7:] = (y[0, 7:] + 1) % cfg.vocab_size
    with torch.no_grad():
        a, b = model(x).logits, model(y).logits
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_ragged_rows_decode_at_their_own_positions():
    """Row 0 has a 5-token prompt, row 1 a 9-token one; each decodes from its own position."""
    cfg = get_preset("tiny-dots")
    model = build_model(cfg).eval()
    x = torch.randint(0, cfg.vocab_size, (2, 12))
    with torch.no_grad():
        cache = KVCache.for_model(cfg, 2, 16, dtype=torch.float32, device="cpu")
        model(x[:1, :5], kv_cache=_RowView(cache, 0))
        model(x[1:, :9], kv_cache=_RowView(cache, 1))
        pos = torch.tensor([[5], [9]])
        step = model(torch.stack([x[0, 5:6], x[1, 9:10]]), positions=pos, kv_cache=cache).logits
        ref0 = model(x[:1, :6]).logits[0, -1]
        ref1 = model(x[1:, :10]).logits[0, -1]
    torch.testing.assert_close(step[0, -1], ref0, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(step[1, -1], ref1, atol=2e-5, rtol=1e-4)


class _RowView:
    """Prefill one row of a shared cache (test helper)."""

    def __init__(self, cache: KVCache, row: int):
        self.cache, self.row = cache, row

    def update(self, layer, k, v, positions):
        c = self.cache
        T = k.shape[2]
        c.k_LBKSd[layer, self.row, :, :T] = k[0]
        c.v_LBKSd[layer, self.row, :, :T] = v[0]
        c.end = max(c.end, T)
        return k, v, positions, None


def test_cache_overflow_is_a_clear_error():
    cfg = get_preset("tiny-olmoe")
    model = build_model(cfg).eval()
    cache = KVCache.for_model(cfg, 1, 4, dtype=torch.float32, device="cpu")
    with pytest.raises(ValueError, match="do not fit a KV cache of 4 slots"):
        model(torch.zeros(1, 6, dtype=torch.long), kv_cache=cache)
