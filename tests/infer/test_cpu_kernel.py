"""The C kernel for routed experts (moelab.infer.cpu_kernel): same numbers as torch, safe to lack.

Equality is checked against a plain per-(token, slot) torch loop in fp32 (1e-5): both families'
widths, token counts on either side of the 4-row tile and of a work item (an expert given more
than CHUNK tokens is split), one and two threads. Then the edges: bad expert ids, unsupported
inputs, and the build itself (cache reuse, opt-out, no compiler, a compiler that fails), where
the contract is "None and the torch path", never an exception.
"""

from __future__ import annotations

import logging
import os

import pytest
import torch
import torch.nn.functional as F

from moelab.infer import cpu_kernel

TOL = dict(atol=1e-5, rtol=1e-5)
CHOOSE = {"rows": 10**9, "cols": 0, "auto": None}
"""cols_min pinning each form: rows always, token-major always, or the kernel's own choice."""


@pytest.fixture
def kernel():
    k = cpu_kernel.load()
    if k is None:
        pytest.skip("the C expert kernel did not build here (no compiler?)")
    return k


@pytest.fixture
def fresh_load(monkeypatch, tmp_path):
    """load() with an empty cache folder and no memo of an earlier load; restored afterwards."""
    monkeypatch.setenv("MOELAB_KERNEL_CACHE", str(tmp_path / "kernels"))
    cpu_kernel.load.cache_clear()
    yield cpu_kernel.load
    cpu_kernel.load.cache_clear()


def _weights(E: int, D: int, hidden: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    gate_up = torch.randn(E, 2 * hidden, D, generator=gen) / D**0.5
    down = torch.randn(E, D, hidden, generator=gen) / hidden**0.5
    return gate_up, down


def _reference(x, ids, w, gate_up, down):
    """sum_k w[n,k] · down_e(silu(gate_e(x)) · up_e(x)), one (token, slot) at a time."""
    out = torch.zeros_like(x)
    hidden = down.shape[2]
    for n in range(x.shape[0]):
        for k in range(ids.shape[1]):
            e = int(ids[n, k])
            h = gate_up[e] @ x[n]
            out[n] += w[n, k] * (down[e] @ (F.silu(h[:hidden]) * h[hidden:]))
    return out


@pytest.mark.parametrize(
    "E, K, D, hidden",
    [(128, 6, 128, 32), (64, 8, 128, 64), (8, 2, 64, 48)],
    ids=["dots-tiny", "olmoe-tiny", "odd-hidden"],
)
@pytest.mark.parametrize("N", [1, 3, 5, 37])
@pytest.mark.parametrize("form", ["rows", "cols"])
def test_kernel_equals_the_torch_reference(kernel, E, K, D, hidden, N, form):
    """Both forms on every item: dot products along rows, and token-major (padded to VL)."""
    if D % kernel.vector_width or hidden % kernel.vector_width:
        pytest.skip(f"widths not a multiple of this build's vector width {kernel.vector_width}")
    gate_up, down = _weights(E, D, hidden, seed=N)
    gen = torch.Generator().manual_seed(100 + N)
    x = torch.randn(N, D, generator=gen)
    ids = torch.stack([torch.randperm(E, generator=gen)[:K] for _ in range(N)])
    w = torch.rand(N, K, generator=gen)
    with torch.inference_mode():
        assert kernel.supports(x, gate_up, down)
        got = kernel.experts(x, ids, w, gate_up, down, cols_min=CHOOSE[form])
    torch.testing.assert_close(got, _reference(x, ids, w, gate_up, down), **TOL)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("form", ["rows", "cols", "auto"])
def test_an_expert_with_more_than_a_work_item_of_tokens(kernel, threads, form):
    """Skewed routing (random-init routers do this): 150 tokens all on expert 3 in slot 0 is
    three work items of at most CHUNK (the last one of 22: not a multiple of the vector width);
    slot 1 spreads. Same result on one and two threads, either form."""
    E, K, D, hidden, N = 16, 2, 64, 32, 150
    assert N > 2 * cpu_kernel.CHUNK
    gate_up, down = _weights(E, D, hidden, seed=7)
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(N, D, generator=gen)
    ids = torch.stack([torch.full((N,), 3), torch.randint(4, E, (N,), generator=gen)], dim=1)
    w = torch.rand(N, K, generator=gen)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            got = kernel.experts(x, ids, w, gate_up, down, cols_min=CHOOSE[form])
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(got, _reference(x, ids, w, gate_up, down), **TOL)


def test_expert_ids_out_of_range_raise(kernel):
    gate_up, down = _weights(4, 64, 16, seed=0)
    x, w = torch.randn(2, 64), torch.rand(2, 2)
    for bad in (4, -1):
        with pytest.raises(ValueError, match="expert ids outside 0..3"):
            kernel.experts(x, torch.tensor([[0, 1], [2, bad]]), w, gate_up, down)


def test_what_the_kernel_does_not_take(kernel):
    """bf16, autograd, widths off the vector width, strided weights: supports() says no (the
    engine takes the torch path) and experts() refuses with the reason, never reads garbage."""
    gate_up, down = _weights(4, 64, 16, seed=0)
    x, ids, w = torch.randn(2, 64), torch.tensor([[0, 1], [2, 3]]), torch.rand(2, 2)
    odd_up, odd_down = _weights(4, 64 + 4, 16, seed=0)
    cases = {
        "fp32 CPU": (x.bfloat16(), gate_up.bfloat16(), down.bfloat16()),
        "multiples of": (torch.randn(2, 68), odd_up, odd_down),
        "contiguous": (x, gate_up, down.transpose(1, 2).contiguous().transpose(1, 2)),
        "do not fit": (torch.randn(2, 32), gate_up, down),
    }
    with torch.inference_mode():
        assert kernel.supports(x, gate_up, down)
        for reason, args in cases.items():
            assert not kernel.supports(*args)
            with pytest.raises(ValueError, match=reason):
                kernel.experts(args[0], ids, w, args[1], args[2])
        with pytest.raises(ValueError, match="for 2 tokens"):
            kernel.experts(x, ids[:1], w, gate_up, down)
    with torch.enable_grad():
        assert not kernel.supports(x, gate_up, down)


def test_a_long_input_goes_through_in_token_blocks(kernel, monkeypatch):
    """With the scratch bound at 7 tokens' outputs, 30 tokens take 5 blocks: same numbers."""
    E, K, D, hidden, N = 8, 2, 64, 16, 30
    gate_up, down = _weights(E, D, hidden, seed=3)
    gen = torch.Generator().manual_seed(4)
    x, w = torch.randn(N, D, generator=gen), torch.rand(N, K, generator=gen)
    ids = torch.randint(0, E, (N, K), generator=gen)
    monkeypatch.setattr(cpu_kernel, "SCRATCH_BYTES", 7 * K * D * 4)
    calls = []
    block = kernel._experts_block
    monkeypatch.setattr(kernel, "_experts_block", lambda *a: calls.append(1) or block(*a))
    with torch.inference_mode():
        got = kernel.experts(x, ids, w, gate_up, down)
    assert len(calls) == 5
    torch.testing.assert_close(got, _reference(x, ids, w, gate_up, down), **TOL)


def test_built_once_then_loaded_from_the_cache(fresh_load, tmp_path, monkeypatch):
    first = fresh_load()
    if first is None:
        pytest.skip("the C expert kernel did not build here (no compiler?)")
    assert first.path.parent == tmp_path / "kernels"
    assert [p.name for p in first.path.parent.iterdir()] == [first.path.name]  # no temp left
    cpu_kernel.load.cache_clear()

    def no_build(*args):
        raise AssertionError("rebuilt although the cache held the kernel")

    monkeypatch.setattr(cpu_kernel, "_build", no_build)
    assert fresh_load().path == first.path


def test_opt_out_and_missing_compiler_give_none(fresh_load, monkeypatch, caplog):
    monkeypatch.setenv("MOELAB_CPU_KERNEL", "0")
    assert fresh_load() is None
    cpu_kernel.load.cache_clear()
    monkeypatch.delenv("MOELAB_CPU_KERNEL")
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with caplog.at_level(logging.WARNING, logger="moelab.infer.cpu_kernel"):
        assert fresh_load() is None
    assert "no C compiler" in caplog.text


def test_a_failing_compiler_gives_none_and_says_why(fresh_load, monkeypatch, tmp_path, caplog):
    bad_cc = tmp_path / "cc"
    bad_cc.write_text("#!/bin/sh\necho 'fatal: this compiler is broken' >&2\nexit 1\n")
    bad_cc.chmod(0o755)
    monkeypatch.setenv("CC", str(bad_cc))
    with caplog.at_level(logging.WARNING, logger="moelab.infer.cpu_kernel"):
        assert fresh_load() is None
    assert "this compiler is broken" in caplog.text
    assert list((tmp_path / "kernels").glob("*")) == []  # no half-written library left


@pytest.mark.parametrize("T, E, k", [(1, 8, 2), (37, 64, 8), (600, 128, 6), (5, 16, 16)])
def test_topk_picks_what_torch_picks_in_its_order(kernel, T, E, k):
    """Distinct scores: the same indices in the same (descending) order as torch.topk; the
    600-row case runs on the OpenMP path."""
    scores = torch.randn(T, E, generator=torch.Generator().manual_seed(T))
    assert torch.equal(kernel.topk(scores, k), torch.topk(scores, k, dim=-1).indices)


def test_topk_ties_nans_and_bad_k(kernel):
    scores = torch.tensor([[0.5, 1.0, 1.0, 0.2], [float("nan"), 0.1, 0.3, 0.2]])
    assert kernel.topk(scores, 2).tolist() == [[1, 2], [2, 3]]  # lower index first; NaN never
    with pytest.raises(ValueError, match="fewer than 2 numbers"):
        kernel.topk(torch.tensor([[float("nan"), float("nan"), 1.0]]), 2)
    with pytest.raises(ValueError, match="top-5 of 4"):
        kernel.topk(scores, 5)
    assert torch.equal(kernel.topk(scores.double(), 2), torch.topk(scores.double(), 2).indices)


@pytest.mark.parametrize("preset", ["tiny-dots", "tiny-olmoe"])
def test_router_with_the_kernel_topk_routes_like_the_model(kernel, preset):
    """Same experts and weights per token (dots' unsorted top-k: as sets, weights matched)."""
    from moelab.model import build_model, get_preset

    model = build_model(get_preset(preset), seed=0).eval()
    router = next(b.mlp.gate for b in model.layers.values() if b.is_moe)
    x = torch.randn(300, model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref, got = router(x), router(x, topk=kernel.topk)
    order_ref, order_got = ref.expert_ids_TK.argsort(-1), got.expert_ids_TK.argsort(-1)
    assert torch.equal(
        ref.expert_ids_TK.gather(1, order_ref), got.expert_ids_TK.gather(1, order_got)
    )
    torch.testing.assert_close(
        ref.weights_TK.gather(1, order_ref), got.weights_TK.gather(1, order_got), **TOL
    )
    assert torch.equal(ref.tokens_per_expert_E, got.tokens_per_expert_E)


@pytest.mark.parametrize("groups, d", [(1, 128), (6, 32), (1, 40)])
def test_rms_norm_of_a_slice_equals_torch(kernel, groups, d):
    """Rows taken as a slice of a wider fused projection (no copy), written into a slice of a
    wider output, per-group weights: F.rms_norm's numbers."""
    gen = torch.Generator().manual_seed(d)
    wide = torch.randn(9, groups * d + 24, generator=gen) * 3
    x = wide[:, 8 : 8 + groups * d]
    w = torch.randn(groups, d, generator=gen)
    out_wide = torch.full((9, groups * d + 5), float("nan"))
    kernel.rms_norm_into(x, w, 1e-6, out_wide[:, 5:])
    ref = F.rms_norm(x.view(9, groups, d), (d,), eps=1e-6) * w
    torch.testing.assert_close(out_wide[:, 5:], ref.view(9, -1), **TOL)
    assert out_wide[:, :5].isnan().all()  # nothing written outside the slice
    with pytest.raises(ValueError, match="unit column stride"):
        kernel.rms_norm_into(wide[:, ::2][:, : groups * d], w, 1e-6, out_wide[:, 5:])


def test_fast_rms_norm_takes_the_kernel_or_torch_alike():
    from moelab.infer.fast_layers import rms_norm

    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(2, 5, 4 * 16, generator=gen), torch.randn(4, 16, generator=gen)
    ref = (F.rms_norm(x.view(2, 5, 4, 16), (16,), eps=1e-5) * w).view(2, 5, 64)
    with torch.inference_mode():
        torch.testing.assert_close(rms_norm(x, w, 1e-5, groups=4), ref, **TOL)
    torch.testing.assert_close(rms_norm(x, w, 1e-5, groups=4), ref, **TOL)  # grad on: torch
    w1 = torch.randn(64, generator=gen)
    with torch.inference_mode():
        torch.testing.assert_close(rms_norm(x, w1, 1e-5), F.rms_norm(x, (64,), w1, 1e-5), **TOL)


def test_a_cache_others_can_write_to_is_not_loaded(fresh_load, tmp_path, caplog):
    """Loading a cached library runs its code: a world-writable cache folder is refused."""
    if fresh_load() is None:
        pytest.skip("the C expert kernel did not build here (no compiler?)")
    folder = tmp_path / "kernels"
    folder.chmod(0o777)
    cpu_kernel.load.cache_clear()
    with caplog.at_level(logging.WARNING, logger="moelab.infer.cpu_kernel"):
        assert fresh_load() is None
    assert "writable by group or others" in caplog.text


def test_the_8_wide_build_computes_the_same(kernel, tmp_path):
    """The portable path (8-lane vectors, 4x2 and 1x8 row tiles, 8x8 transposes), built here
    with AVX-512 switched off, against the same references as the native build."""
    if kernel.vector_width != 16:
        pytest.skip("this machine's native build is already the 8-wide one")
    import ctypes

    out = tmp_path / "moe_cpu_vl8.so"
    error = cpu_kernel._build(os.environ.get("CC", "cc"), out, True, ("-mno-avx512f",))
    if error is not None:
        pytest.skip(f"the compiler would not build without AVX-512: {error}")
    vl8 = cpu_kernel.ExpertKernel(ctypes.CDLL(str(out)), out, openmp=True)
    assert vl8.vector_width == 8
    for E, K, D, hidden, N in [(16, 2, 64, 40, 37), (64, 8, 128, 64, 150), (8, 2, 64, 48, 3)]:
        gate_up, down = _weights(E, D, hidden, seed=N)
        gen = torch.Generator().manual_seed(N)
        x, w = torch.randn(N, D, generator=gen), torch.rand(N, K, generator=gen)
        ids = torch.stack([torch.randperm(E, generator=gen)[:K] for _ in range(N)])
        ref = _reference(x, ids, w, gate_up, down)
        for form in ("rows", "cols"):
            got = vl8.experts(x, ids, w, gate_up, down, cols_min=CHOOSE[form])
            torch.testing.assert_close(got, ref, **TOL)
    scores = torch.randn(50, 64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(vl8.topk(scores, 8), torch.topk(scores, 8).indices)
    x, wn = torch.randn(7, 96), torch.randn(3, 32)
    out_n = torch.empty(7, 96)
    vl8.rms_norm_into(x, wn, 1e-6, out_n)
    ref_n = (F.rms_norm(x.view(7, 3, 32), (32,), eps=1e-6) * wn).view(7, 96)
    torch.testing.assert_close(out_n, ref_n, **TOL)
