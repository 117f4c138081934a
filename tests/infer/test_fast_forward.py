"""FastForward (the engine's fused inference forward) gives the model's logits.

Every check compares against the model's own full forward on each sequence alone (no cache, no
padding), in fp32 to 1e-5: ragged prompts prefilled together, then greedy decode steps with the
rows at different positions, for both families and for the attention variants the config allows
(GQA, clip_qkv, no QK-norm, attention bias). The MoE layer is also checked on its own on both of
its expert paths (gathered for few assignments, sorted grouped GEMM for many).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from moelab.infer import cpu_kernel
from moelab.infer.fast_forward import FastForward
from moelab.infer.fast_moe import FastMoE
from moelab.infer.kv_cache import KVCache
from moelab.model import build_model, get_preset

from .conftest import random_prompts

TOL = dict(atol=1e-5, rtol=1e-5)


def _model(preset: str, **attention):
    cfg = get_preset(preset)
    cfg.num_layers = 2
    for name, value in attention.items():
        setattr(cfg.attention, name, value)
    model = build_model(cfg, seed=0).eval()
    if attention.get("bias"):  # init zeroes biases: give them values that would show
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("proj.bias"):
                    p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
    return model


def _reference(model, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0]


VARIANTS = {
    "dots": ("tiny-dots", {}),
    "olmoe": ("tiny-olmoe", {}),
    "dots-gqa-clip": ("tiny-dots", {"num_kv_heads": 2, "clip_qkv": 0.05}),
    "olmoe-gqa-clip-bias": ("tiny-olmoe", {"num_kv_heads": 1, "clip_qkv": 0.05, "bias": True}),
    "no-qk-norm": ("tiny-olmoe", {"qk_norm": "none"}),
}


@pytest.mark.parametrize("kernels", ["c", "torch"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_ragged_prefill_and_cached_decode_equal_the_model(variant, kernels, monkeypatch):
    """With the C kernels (experts, top-k, RMSNorm) where they build, and with torch's alone
    (as on a machine without a C compiler)."""
    if kernels == "torch":
        monkeypatch.setattr(cpu_kernel, "load", lambda: None)
    elif cpu_kernel.load() is None:
        pytest.skip("the C kernels did not build here (no compiler?)")
    preset, attention = VARIANTS[variant]
    model = _model(preset, **attention)
    prompts = random_prompts([3, 11, 6, 1], seed=5)
    lengths = [len(p) for p in prompts]
    T = max(lengths)
    cache = KVCache.for_model(model.config, 4, 32, dtype=torch.float32, device="cpu")
    fast = FastForward(model, 32)
    cache.bind([0, 1, 2, 3], end=T)
    ids = torch.tensor([p + [0] * (T - len(p)) for p in prompts])
    all_logits = fast.prefill(ids, lengths, cache, all_logits=True)
    for b, p in enumerate(prompts):
        torch.testing.assert_close(all_logits[b, : len(p)], _reference(model, p), **TOL)
    cache.bind([0, 1, 2, 3], end=T)
    last = fast.prefill(ids, lengths, cache)
    torch.testing.assert_close(last, all_logits[range(4), [n - 1 for n in lengths]], **TOL)
    contexts = [list(p) for p in prompts]
    for _ in range(5):
        tokens = last.argmax(-1).tolist()
        for ctx, t in zip(contexts, tokens, strict=True):
            ctx.append(t)
        positions = [len(c) - 1 for c in contexts]
        cache.bind([0, 1, 2, 3], end=max(positions) + 1)
        last = fast.decode(torch.tensor(tokens), positions, cache)
        for b, ctx in enumerate(contexts):
            torch.testing.assert_close(last[b], _reference(model, ctx)[-1], **TOL)


def test_decode_on_scattered_rows_at_one_position(tiny_models):
    """Rows 3 and 1 (not contiguous, a gather) at the same position: no mask is built."""
    model = tiny_models["olmoe"]
    prompts = random_prompts([7, 7], seed=8)
    cache = KVCache.for_model(model.config, 4, 16, dtype=torch.float32, device="cpu")
    fast = FastForward(model, 16)
    cache.bind([3, 1], end=7)
    first = fast.prefill(torch.tensor(prompts), [7, 7], cache).argmax(-1).tolist()
    cache.bind([3, 1], end=8)
    out = fast.decode(torch.tensor(first), [7, 7], cache)
    for b, p in enumerate(prompts):
        torch.testing.assert_close(out[b], _reference(model, p + [first[b]])[-1], **TOL)


@pytest.mark.parametrize("family", ["dots1", "olmoe"])
def test_last_logits_prefill_runs_the_final_block_on_last_positions_only(tiny_models, family):
    """Only each prompt's last hidden state feeds its logits, so the final block's FFN/MoE sees
    B rows (not B·T), while the logits and every layer's cached keys and values (the final
    layer's included) equal the full path: ragged prompts, one of length 1, one filling T."""
    model = tiny_models[family]
    prompts = random_prompts([5, 1, 9, 3], seed=11)
    lengths = [len(p) for p in prompts]
    T = max(lengths)
    ids = torch.tensor([p + [0] * (T - len(p)) for p in prompts])
    fast = FastForward(model, 16)
    norm1_w, attn, norm2_w, ffn = fast.blocks[-1]
    ffn_rows = []

    def counting_ffn(x: torch.Tensor) -> torch.Tensor:
        ffn_rows.append(x.shape[:-1].numel())
        return ffn(x)

    fast.blocks[-1] = (norm1_w, attn, norm2_w, counting_ffn)
    caches, logits = [], []
    for all_logits in (True, False):
        caches.append(KVCache.for_model(model.config, 4, 16, dtype=torch.float32, device="cpu"))
        caches[-1].bind([0, 1, 2, 3], end=T)
        logits.append(fast.prefill(ids, lengths, caches[-1], all_logits=all_logits))
    assert ffn_rows == [4 * T, 4]
    full, last = logits
    torch.testing.assert_close(last, full[range(4), [n - 1 for n in lengths]], **TOL)
    assert torch.equal(caches[1].kv_LBSCd, caches[0].kv_LBSCd)


@pytest.mark.parametrize("family", ["dots1", "olmoe"])
@pytest.mark.parametrize("tokens", [1, 8, 40])
@pytest.mark.parametrize("kernel", ["c", "torch"])
def test_moe_layer_equals_the_model_on_every_expert_path(tiny_models, family, tokens, kernel):
    """The C kernel (moelab.infer.cpu_kernel) where it builds; the torch paths: 1 and 8 tokens
    gathered (a copy under GATHER_MAX_NUMEL), 40 sorted grouped GEMM (tiny-olmoe copies at
    most 85 assignments, tiny-dots 170)."""
    layer = tiny_models[family].layers["1"].mlp
    x = torch.randn(1, tokens, layer.experts.dim, generator=torch.Generator().manual_seed(tokens))
    with torch.no_grad():
        ref, _ = layer(x)
    fast = FastMoE(layer)
    if kernel == "torch":
        fast.kernel = None
    elif fast.kernel is None:
        pytest.skip("the C expert kernel did not build here (no compiler?)")
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), ref, **TOL)


def test_engine_uses_the_fast_path_and_matches_the_reference_engine(tiny_models):
    from moelab.infer.engine import Engine
    from moelab.infer.sampling import SamplingParams

    model = tiny_models["dots1"]
    prompts = random_prompts([4, 9, 2], seed=2)
    params = SamplingParams(max_new_tokens=6)
    fast = Engine(model, max_batch=2, max_len=32)
    slow = Engine(model, max_batch=2, max_len=32, fast=False)
    assert fast.fast is not None and slow.fast is None
    assert [r.output for r in fast.generate(prompts, params)] == [
        r.output for r in slow.generate(prompts, params)
    ]


@pytest.mark.parametrize(
    "shape, bias, strided",
    [((40, 128), False, False), ((2, 20, 96), True, False), ((3, 16, 64), False, True)],
)
def test_linear_through_onednn_equals_f_linear(shape, bias, strided):
    """``fast_layers.linear`` takes oneDNN at >= ONEDNN_MIN_ROWS rows (all three shapes here):
    same numbers as F.linear, for 2-D and 3-D inputs, with a bias, on a strided input."""
    from moelab.infer import fast_layers

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape[:-1], 2 * shape[-1], generator=gen)
    x = x[..., ::2] if strided else x[..., : shape[-1]]
    w = torch.randn(48, shape[-1], generator=gen)
    b = torch.randn(48, generator=gen) if bias else None
    with torch.inference_mode():
        torch.testing.assert_close(fast_layers.linear(x, w, b), F.linear(x, w, b), **TOL)
    x.requires_grad_(True)  # autograd: F.linear (oneDNN's op has no backward)
    fast_layers.linear(x, w, b).sum().backward()
    torch.testing.assert_close(x.grad, w.sum(0).expand_as(x), **TOL)


def test_onednn_can_be_turned_off(monkeypatch):
    from moelab.infer import fast_layers

    monkeypatch.setenv("MOELAB_ONEDNN", "0")
    assert not fast_layers._onednn_linear_works()


def test_the_kernel_writes_keys_and_values_for_every_layer(tiny_models, monkeypatch):
    """Where the C kernel built, each layer's QK-norm/RoPE/cache write is one kernel call (a
    prefill and a decode on rows 2 and 0: 2 + 2 calls for 2 layers), the cache ends up as the
    torch path leaves it, and a position past the cache is refused before anything is written."""
    kernel = cpu_kernel.load()
    if kernel is None:
        pytest.skip("the C kernels did not build here (no compiler?)")
    model = tiny_models["dots1"]
    prompts = random_prompts([6, 4], seed=3)
    ids = torch.tensor([p + [0] * (6 - len(p)) for p in prompts])
    caches, logits = [], []
    calls = []
    store = kernel.qk_rope_store
    for use_kernel in (True, False):
        if not use_kernel:
            monkeypatch.setattr(cpu_kernel, "load", lambda: None)
        else:
            monkeypatch.setattr(kernel, "qk_rope_store", lambda *a: calls.append(1) or store(*a))
        fast = FastForward(model, 16)
        cache = KVCache.for_model(model.config, 3, 16, dtype=torch.float32, device="cpu")
        cache.bind([2, 0], end=6)
        first = fast.prefill(ids, [6, 4], cache).argmax(-1)
        cache.bind([2, 0], end=7)
        logits.append(fast.decode(first, [6, 4], cache))
        caches.append(cache.kv_LBSCd)
    assert len(calls) == 2 * model.config.num_layers
    torch.testing.assert_close(logits[0], logits[1], **TOL)
    torch.testing.assert_close(caches[0], caches[1], **TOL)
    monkeypatch.undo()
    fast = FastForward(model, 16)
    cache.bind([2, 0], end=16)
    with pytest.raises(ValueError, match="outside the KV cache"):
        fast.decode(first, [16, 4], cache)
    short_rope = FastForward(model, 8)  # a RoPE table shorter than the cache
    with pytest.raises(ValueError, match="RoPE table's 0..7"):
        short_rope.decode(first, [9, 4], cache)


def test_two_threads_give_the_one_thread_logits(tiny_models):
    """The kernels' OpenMP loops (experts, top-k, norms, the attention pass: 3 x 40 tokens is
    past their thresholds) on 2 threads give the 1-thread prefill and decode."""
    model = tiny_models["olmoe"]
    prompts = random_prompts([40, 33, 40], seed=12)
    ids = torch.tensor([p + [0] * (40 - len(p)) for p in prompts])
    outs = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            fast = FastForward(model, 48)
            cache = KVCache.for_model(model.config, 3, 48, dtype=torch.float32, device="cpu")
            cache.bind([0, 1, 2], end=40)
            all_logits = fast.prefill(ids, [40, 33, 40], cache, all_logits=True)
            cache.bind([0, 1, 2], end=41)
            step = fast.decode(torch.tensor([5, 6, 7]), [40, 33, 40], cache)
            outs.append((all_logits, step))
    finally:
        torch.set_num_threads(before)
    for one, two in zip(*outs, strict=True):
        torch.testing.assert_close(two, one, **TOL)
