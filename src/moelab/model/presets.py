"""Named model presets: the two published models and tiny CPU-trainable versions of each.

Values for the full-size models are the published ones (see ../shared/reference/model_spec.md
§1); the parameter counts they give are checked by tests against a meta-device model:
dots.llm1 142,774,373,888 total / 14,016,581,120 active, OLMoE-1B-7B 6,919,161,856 / 1,282,017,280.
The tiny presets keep every architectural switch of their family, and also its routing
granularity (number of experts, top-k, shared experts), and shrink only the widths and depth:
routing behaviour (load, saturation, specialisation) depends on E and k, so the toy models show
the real thing. Widths are multiples of 8 so grouped GEMM strides stay 16-byte aligned in bf16.
"""

from __future__ import annotations

from collections.abc import Callable

from moelab.model.config import AttentionConfig, ModelConfig, MoEConfig


def dots_llm1() -> ModelConfig:
    """dots.llm1 (base/inst): 62 layers, MHA 32×128 with per-head QK-norm, 128 experts top-6 + 2 shared."""
    return ModelConfig(
        family="dots1",
        vocab_size=152064,
        hidden_size=4096,
        num_layers=62,
        intermediate_size=10944,
        max_position_embeddings=32768,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        init_std=0.006,
        bos_token_id=None,
        eos_token_id=151649,
        pad_token_id=None,
        attention=AttentionConfig(
            num_heads=32, num_kv_heads=32, head_dim=128, qk_norm="head", rope_theta=1e7
        ),
        moe=MoEConfig(
            num_experts=128,
            top_k=6,
            expert_intermediate_size=1408,
            num_shared_experts=2,
            first_k_dense_replace=1,
            score_func="sigmoid",
            norm_topk_prob=True,
            routed_scaling_factor=2.5,
            n_group=1,
            topk_group=1,
            expert_bias=True,
            router_fp32=True,
        ),
    )


def olmoe_1b_7b() -> ModelConfig:
    """OLMoE-1B-7B-0924: 16 layers, MHA 16×128 with whole-projection QK-norm, 64 experts top-8."""
    return ModelConfig(
        family="olmoe",
        vocab_size=50304,
        hidden_size=2048,
        num_layers=16,
        intermediate_size=1024,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        init_std=0.02,
        bos_token_id=None,
        eos_token_id=50279,
        pad_token_id=1,
        attention=AttentionConfig(
            num_heads=16, num_kv_heads=16, head_dim=128, qk_norm="full", rope_theta=10000.0
        ),
        moe=MoEConfig(
            num_experts=64,
            top_k=8,
            expert_intermediate_size=1024,
            num_shared_experts=0,
            first_k_dense_replace=0,
            score_func="softmax",
            norm_topk_prob=False,
            routed_scaling_factor=1.0,
            expert_bias=False,
            router_fp32=False,
        ),
    )


def tiny_dots() -> ModelConfig:
    """dots.llm1's architecture and routing (128 experts, top-6, 2 shared) at CPU size (~6.5M params)."""
    cfg = dots_llm1()
    cfg.vocab_size = 4096
    cfg.hidden_size = 128
    cfg.num_layers = 4
    cfg.intermediate_size = 384
    cfg.max_position_embeddings = 1024
    cfg.init_std = 0.02
    cfg.eos_token_id = None
    cfg.attention = AttentionConfig(
        num_heads=4, num_kv_heads=4, head_dim=32, qk_norm="head", rope_theta=1e7
    )
    cfg.moe.expert_intermediate_size = 32
    return cfg


def tiny_olmoe() -> ModelConfig:
    """OLMoE's architecture and routing (64 experts, top-8) at CPU size (~7.3M params)."""
    cfg = olmoe_1b_7b()
    cfg.vocab_size = 4096
    cfg.hidden_size = 128
    cfg.num_layers = 4
    cfg.intermediate_size = 64
    cfg.max_position_embeddings = 1024
    cfg.eos_token_id = None
    cfg.pad_token_id = None
    cfg.attention = AttentionConfig(
        num_heads=4, num_kv_heads=4, head_dim=32, qk_norm="full", rope_theta=10000.0
    )
    cfg.moe.expert_intermediate_size = 64
    return cfg


PRESETS: dict[str, Callable[[], ModelConfig]] = {
    "dots.llm1": dots_llm1,
    "olmoe-1b-7b": olmoe_1b_7b,
    "tiny-dots": tiny_dots,
    "tiny-olmoe": tiny_olmoe,
}


def get_preset(name: str) -> ModelConfig:
    """A fresh ModelConfig for ``name``; raises KeyError listing the known names."""
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]()
