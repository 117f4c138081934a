"""Parity with transformers' Dots1ForCausalLM and OlmoeForCausalLM on the same weights.

Tiny random models are built and saved by transformers in the test, loaded by moelab from
disk, and compared: logits (fp32 ≤ 1e-5), the experts each token selects, routing weights,
the OLMoE aux loss, bf16 logits, and the reverse round trip moelab → HF files → transformers.
"""

from __future__ import annotations

import pytest
import torch

import moelab
from moelab.model.losses import load_balancing_loss, load_balancing_loss_hf

from .hf_models import load_hf, make_hf_model

CASES = {
    "dots1": ("dots1", {}),
    "dots1-group4-top2": ("dots1", {"n_group": 4, "topk_group": 2}),
    "olmoe": ("olmoe", {}),
}


def _tokens(seed: int = 1, batch: int = 2, length: int = 24) -> torch.Tensor:
    return torch.randint(0, 320, (batch, length), generator=torch.Generator().manual_seed(seed))


def _capture_hf_routing(hf_model) -> list[tuple]:
    """Forward hooks on each HF router: (logits, weights, indices) per MoE layer, in order."""
    captured = []
    for layer in hf_model.model.layers:
        gate = getattr(layer.mlp, "gate", None)
        if gate is not None:
            gate.register_forward_hook(lambda _m, _i, out: captured.append(out))
    return captured


@pytest.fixture(scope="module", params=list(CASES))
def pair(request, tmp_path_factory):
    kind, kw = CASES[request.param]
    hf = make_hf_model(kind, seed=3, **kw)
    path = tmp_path_factory.mktemp(request.param) / "hf"
    hf.save_pretrained(path)
    return kind, hf, moelab.load_pretrained(path), path


@pytest.mark.parametrize("dispatch", ["grouped_mm", "loop"])
def test_fp32_logits_match(pair, dispatch):
    kind, hf, _, path = pair
    model = moelab.load_pretrained(path, config_overrides=[f"moe.dispatch={dispatch}"])
    x = _tokens()
    with torch.no_grad():
        ref, out = hf(x).logits, model(x).logits
    delta = (ref - out).abs().max().item()
    assert delta <= 1e-5, f"{kind}/{dispatch}: max |Δlogit| = {delta:.2e}"


def test_same_experts_and_weights(pair):
    kind, hf, model, _ = pair
    captured = _capture_hf_routing(hf)
    x = _tokens(seed=2)
    with torch.no_grad():
        hf(x)
        out = model(x)
    assert len(captured) == len(out.router) > 0
    for (ref_logits, ref_weights, ref_ids), ours in zip(captured, out.router, strict=True):
        torch.testing.assert_close(ours.logits_TE.float(), ref_logits.float(), atol=1e-5, rtol=0)
        ref_sorted, ref_perm = ref_ids.sort(dim=-1)
        our_sorted, our_perm = ours.expert_ids_TK.sort(dim=-1)
        assert torch.equal(ref_sorted, our_sorted), f"{kind}: selected experts differ"
        torch.testing.assert_close(
            ours.weights_TK.gather(1, our_perm).float(),
            ref_weights.gather(1, ref_perm).float(),
            atol=1e-6,
            rtol=0,
        )


def test_dots_weights_come_from_unbiased_scores(tmp_path):
    """The dots correction bias steers selection only: weights are unbiased sigmoid scores."""
    make_hf_model("dots1", seed=11).save_pretrained(tmp_path / "m")
    model = moelab.load_pretrained(tmp_path / "m")
    with torch.no_grad():
        out = model(_tokens(seed=4))
        r = out.router[0]
        gate = model.layers[str(out.moe_layers[0])].mlp.gate
        raw = r.scores_TE.gather(1, r.expert_ids_TK)
        expected = raw / raw.sum(-1, keepdim=True) * gate.scaling
        torch.testing.assert_close(r.weights_TK, expected)
        assert gate.expert_bias.abs().sum() > 0


def test_olmoe_aux_loss_equals_transformers(tmp_path):
    hf = make_hf_model("olmoe", seed=5)
    hf.save_pretrained(tmp_path / "m")
    model = moelab.load_pretrained(tmp_path / "m")
    x = _tokens(seed=6)
    with torch.no_grad():
        ref = hf(x, labels=x, output_router_logits=True)
        out = model(x)
    cfg = model.config.moe
    ours = load_balancing_loss_hf([r.logits_TE for r in out.router], cfg.num_experts, cfg.top_k)
    assert abs(ours.item() - ref.aux_loss.item()) < 1e-6, (ours.item(), ref.aux_loss.item())
    # On one layer the training-code convention is the pooled value divided by k.
    single = load_balancing_loss(out.router[:1], cfg.num_experts, cfg.top_k)
    pooled_one = load_balancing_loss_hf([out.router[0].logits_TE], cfg.num_experts, cfg.top_k)
    assert abs(single.item() - pooled_one.item() / cfg.top_k) < 1e-6


@pytest.mark.parametrize("case", list(CASES))
def test_bf16_logits(case, tmp_path):
    """bf16, transformers pinned to eager attention and its grouped_mm experts path.

    Tolerance: zero. moelab follows the same op order and combine precision as transformers'
    grouped_mm path (products summed over the k slots in the weight dtype, cast once), so the
    logits are bit-identical. Against transformers' *eager* experts loop (bf16 index_add in
    expert order) the difference is ~1e-2, which is why the reference path is pinned.
    """
    kind, kw = CASES[case]
    hf = make_hf_model(kind, seed=7, **kw)
    hf.save_pretrained(tmp_path / "m")
    ref_model = load_hf(tmp_path / "m", kind, dtype=torch.bfloat16, experts_impl="grouped_mm")
    model = moelab.load_pretrained(
        tmp_path / "m", dtype=torch.bfloat16, config_overrides=["attention.impl=eager"]
    )
    if kind == "dots1":
        gate = model.layers["1"].mlp.gate  # fp32 like transformers' _keep_in_fp32_modules
        assert gate.expert_bias.dtype == gate.weight.dtype == torch.float32
    x = _tokens(seed=8)
    with torch.no_grad():
        ref, out = ref_model(x).logits.float(), model(x).logits.float()
    delta = (ref - out).abs().max().item()
    assert delta == 0.0, f"{case}: bf16 max |Δlogit| = {delta:.3e} (expected bit-exact)"


@pytest.mark.parametrize("case", list(CASES))
def test_roundtrip_moelab_to_transformers(case, tmp_path):
    """moelab → HF files (sharded) → transformers gives the same logits."""
    kind, kw = CASES[case]
    hf = make_hf_model(kind, seed=9, **kw)
    hf.save_pretrained(tmp_path / "src")
    model = moelab.load_pretrained(tmp_path / "src")
    moelab.save_pretrained(model, tmp_path / "out", max_shard_bytes=200_000)
    assert (tmp_path / "out" / "model.safetensors.index.json").exists()
    reloaded = load_hf(tmp_path / "out", kind)
    x = _tokens(seed=10)
    with torch.no_grad():
        delta = (reloaded(x).logits - model(x).logits).abs().max().item()
    assert delta <= 1e-5, f"{case}: round trip max |Δlogit| = {delta:.2e}"
    # moelab reads back exactly what it wrote.
    again = moelab.load_pretrained(tmp_path / "out")
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_loads_transformers_5_fused_expert_keys(tmp_path):
    """A file written from transformers 5.x's in-memory state dict (fused experts) loads too."""
    from safetensors.torch import save_file

    hf = make_hf_model("olmoe", seed=12)
    (tmp_path / "m").mkdir()
    hf.config.save_pretrained(tmp_path / "m")
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    assert any(k.endswith("mlp.experts.gate_up_proj") for k in state)
    save_file(state, str(tmp_path / "m" / "model.safetensors"))
    model = moelab.load_pretrained(tmp_path / "m")
    x = _tokens(seed=13)
    with torch.no_grad():
        delta = (hf(x).logits - model(x).logits).abs().max().item()
    assert delta <= 1e-5


def test_olmoe_padding_row_gets_no_gradient(tmp_path):
    """OLMoE's embedding has padding_idx=1 in transformers: the pad row is never trained."""
    make_hf_model("olmoe", seed=14).save_pretrained(tmp_path / "m")
    model = moelab.load_pretrained(tmp_path / "m")
    assert model.config.pad_token_id == 1
    x = _tokens(seed=14)
    x[0, :3] = model.config.pad_token_id
    model.zero_grad()
    model(x).logits.float().logsumexp(-1).mean().backward()
    grad = model.embed_tokens.weight.grad
    assert grad[model.config.pad_token_id].abs().sum() == 0
    assert grad[x[1, 0]].abs().sum() > 0


def test_engine_greedy_decode_equals_hf_generate(pair):
    """The engine (FastForward, KV cache) and transformers' generate() pick the same tokens."""
    from moelab.infer.engine import Engine
    from moelab.infer.sampling import SamplingParams

    kind, hf, model, _ = pair
    x = _tokens(seed=5, batch=2, length=12)
    with torch.no_grad():
        ref = hf.generate(x, max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None)
    engine = Engine(model, max_batch=2, max_len=32)
    assert engine.fast is not None
    out = engine.generate(x.tolist(), SamplingParams(max_new_tokens=8))
    assert [r.output for r in out] == ref[:, 12:].tolist(), kind
