"""Attention: QK-norm placement, GQA, eager == sdpa, and the KV-cache hook."""

from __future__ import annotations

import pytest
import torch

from moelab.model import build_model, get_preset


class SimpleKVCache:
    """A minimal preallocated cache implementing the model's hook (inference owns the real one)."""

    def __init__(self, layers: int, batch: int, kv_heads: int, max_len: int, head_dim: int):
        self.k = torch.zeros(layers, batch, kv_heads, max_len, head_dim)
        self.v = torch.zeros_like(self.k)
        self.pos = torch.full((batch, max_len), 1 << 30)
        self.length = 0

    def update(self, layer, k, v, positions):
        T = k.shape[2]
        start = positions[0, 0].item()
        self.k[layer, :, :, start : start + T] = k
        self.v[layer, :, :, start : start + T] = v
        self.pos[:, start : start + T] = positions
        end = start + T
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end], self.pos[:, :end], None


@pytest.mark.parametrize("preset", ["tiny-dots", "tiny-olmoe"])
@pytest.mark.parametrize("kv_heads", [None, 2])
def test_cached_decode_equals_full_recompute(preset, kv_heads):
    cfg = get_preset(preset)
    cfg.attention.num_kv_heads = kv_heads
    model = build_model(cfg).eval()
    x = torch.randint(0, cfg.vocab_size, (2, 12))
    with torch.no_grad():
        full = model(x).logits
        cache = SimpleKVCache(cfg.num_layers, 2, cfg.num_kv_heads, 16, cfg.head_dim)
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
