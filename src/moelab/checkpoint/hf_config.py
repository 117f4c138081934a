"""Mapping between Hugging Face ``config.json`` (model_type ``dots1`` / ``olmoe``) and ModelConfig.

Every value is read from config.json; a key the model needs and the file lacks falls back to
the value *transformers itself* would use for that file (its class default), never to a
moelab default, so that loading reproduces what ``from_pretrained`` builds. Features neither
family's transformers class can express (sliding windows, RoPE scaling, non-SiLU
activations) are refused with the reason rather than loaded wrong.
"""

from __future__ import annotations

from typing import Any

from moelab.model.config import AttentionConfig, ModelConfig, MoEConfig

SUPPORTED_MODEL_TYPES = ("dots1", "olmoe")


class UnsupportedConfigError(ValueError):
    """A config.json (or a moelab config) that the other side cannot represent faithfully."""


def _rope_theta(raw: dict, default: float) -> float:
    params = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    rope_type = params.get("rope_type") or params.get("type") or "default"
    if rope_type != "default":
        raise UnsupportedConfigError(
            f"RoPE type {rope_type!r} is not supported (only default RoPE)"
        )
    theta = params.get("rope_theta", raw.get("rope_theta", default))
    return float(theta)


def _check_common(raw: dict) -> None:
    act = raw.get("hidden_act", "silu")
    if act != "silu":
        raise UnsupportedConfigError(
            f"hidden_act {act!r} is not supported (SwiGLU experts use silu)"
        )
    if raw.get("attention_dropout", 0.0):
        raise UnsupportedConfigError("attention_dropout > 0 is not supported")


def _dots_sliding_layers(raw: dict, num_layers: int) -> list[int]:
    layer_types = raw.get("layer_types")
    if layer_types is None:
        window, max_window = raw.get("sliding_window", 4096), raw.get("max_window_layers", 62)
        return [i for i in range(num_layers) if window is not None and i >= max_window]
    return [i for i, kind in enumerate(layer_types) if kind != "full_attention"]


def from_hf_config(raw: dict[str, Any]) -> ModelConfig:
    """ModelConfig for a transformers config.json dict; raises for unsupported types/features."""
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedConfigError(
            f"model_type {model_type!r} is not supported; moelab loads {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    _check_common(raw)
    return _from_dots1(raw) if model_type == "dots1" else _from_olmoe(raw)


def _from_dots1(raw: dict) -> ModelConfig:
    layers = raw.get("num_hidden_layers", 62)
    sliding = _dots_sliding_layers(raw, layers)
    if sliding:
        raise UnsupportedConfigError(
            f"sliding-window attention on layers {sliding} is not supported"
        )
    hidden, heads = raw.get("hidden_size", 4608), raw.get("num_attention_heads", 32)
    return ModelConfig(
        family="dots1",
        vocab_size=raw.get("vocab_size", 152064),
        hidden_size=hidden,
        num_layers=layers,
        intermediate_size=raw.get("intermediate_size", 10944),
        max_position_embeddings=raw.get("max_position_embeddings", 2048),
        rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
        tie_word_embeddings=raw.get("tie_word_embeddings", False),
        init_std=raw.get("initializer_range", 0.02),
        bos_token_id=raw.get("bos_token_id"),
        eos_token_id=raw.get("eos_token_id"),
        pad_token_id=raw.get("pad_token_id"),
        attention=AttentionConfig(
            num_heads=heads,
            num_kv_heads=raw.get("num_key_value_heads") or heads,
            head_dim=raw.get("head_dim") or hidden // heads,
            qk_norm="head",
            rope_theta=_rope_theta(raw, 10000.0),
            bias=raw.get("attention_bias", False),
        ),
        moe=MoEConfig(
            num_experts=raw["n_routed_experts"],
            top_k=raw["num_experts_per_tok"],
            expert_intermediate_size=raw.get("moe_intermediate_size", 1408),
            num_shared_experts=raw.get("n_shared_experts") or 0,
            first_k_dense_replace=raw.get("first_k_dense_replace") or 0,
            score_func="sigmoid",
            norm_topk_prob=bool(raw.get("norm_topk_prob", False)),
            routed_scaling_factor=float(raw.get("routed_scaling_factor", 1.0)),
            n_group=raw.get("n_group") or 1,  # null means 1 (model_spec pitfall 2)
            topk_group=raw.get("topk_group") or 1,
            expert_bias=True,
            router_fp32=True,
        ),
    )


def _from_olmoe(raw: dict) -> ModelConfig:
    hidden, heads = raw.get("hidden_size", 2048), raw.get("num_attention_heads", 16)
    width = raw.get("intermediate_size", 2048)
    return ModelConfig(
        family="olmoe",
        vocab_size=raw.get("vocab_size", 50304),
        hidden_size=hidden,
        num_layers=raw.get("num_hidden_layers", 16),
        intermediate_size=width,
        max_position_embeddings=raw.get("max_position_embeddings", 4096),
        rms_norm_eps=raw.get("rms_norm_eps", 1e-5),
        tie_word_embeddings=raw.get("tie_word_embeddings", False),
        init_std=raw.get("initializer_range", 0.02),
        bos_token_id=raw.get("bos_token_id"),
        eos_token_id=raw.get("eos_token_id", 50279),
        pad_token_id=raw.get("pad_token_id", 1),
        attention=AttentionConfig(
            num_heads=heads,
            num_kv_heads=raw.get("num_key_value_heads") or heads,
            head_dim=hidden // heads,
            qk_norm="full",
            rope_theta=_rope_theta(raw, 10000.0),
            bias=raw.get("attention_bias", False),
            clip_qkv=raw.get("clip_qkv"),
        ),
        moe=MoEConfig(
            num_experts=raw.get("num_experts", 64),
            top_k=raw.get("num_experts_per_tok", 8),
            expert_intermediate_size=width,
            num_shared_experts=0,
            first_k_dense_replace=0,
            score_func="softmax",
            norm_topk_prob=bool(raw.get("norm_topk_prob", False)),
            routed_scaling_factor=1.0,
            expert_bias=False,
            router_fp32=False,
        ),
    )


def to_hf_config(cfg: ModelConfig, dtype_name: str = "float32") -> dict[str, Any]:
    """config.json contents transformers reads back into the same model; refuses what it can't express."""
    problems = hf_incompatibilities(cfg)
    if problems:
        raise UnsupportedConfigError(
            f"this model cannot be written as a transformers {cfg.family!r} config: "
            + "; ".join(problems)
        )
    a, m = cfg.attention, cfg.moe
    common = {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": a.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "initializer_range": cfg.init_std,
        "hidden_act": "silu",
        "attention_bias": a.bias,
        "attention_dropout": 0.0,
        "rope_theta": a.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": a.rope_theta},
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
        "num_experts_per_tok": m.top_k,
        "norm_topk_prob": m.norm_topk_prob,
        "torch_dtype": dtype_name,
        "dtype": dtype_name,
    }
    if cfg.family == "dots1":
        return {
            "architectures": ["Dots1ForCausalLM"],
            "model_type": "dots1",
            **common,
            "head_dim": cfg.head_dim,
            "intermediate_size": cfg.intermediate_size,
            "moe_intermediate_size": m.expert_intermediate_size,
            "n_routed_experts": m.num_experts,
            "n_shared_experts": m.num_shared_experts,
            "first_k_dense_replace": m.first_k_dense_replace,
            "n_group": m.n_group,
            "topk_group": m.topk_group,
            "routed_scaling_factor": m.routed_scaling_factor,
            "scoring_func": "noaux_tc",
            "sliding_window": None,
            "max_window_layers": cfg.num_layers,
            "layer_types": ["full_attention"] * cfg.num_layers,
        }
    return {
        "architectures": ["OlmoeForCausalLM"],
        "model_type": "olmoe",
        **common,
        "intermediate_size": m.expert_intermediate_size,
        "num_experts": m.num_experts,
        "clip_qkv": a.clip_qkv,
        "output_router_logits": False,
        "router_aux_loss_coef": 0.01,
    }


def hf_incompatibilities(cfg: ModelConfig) -> list[str]:
    """Why transformers' class for ``cfg.family`` would compute something else (empty if it wouldn't)."""
    a, m, problems = cfg.attention, cfg.moe, []
    if a.qk_norm != ("head" if cfg.family == "dots1" else "full"):
        problems.append(f"attention.qk_norm={a.qk_norm!r} (transformers {cfg.family} fixes it)")
    if cfg.family == "dots1":
        if m.score_func != "sigmoid" or not m.router_fp32:
            problems.append(
                "dots1 routes with an fp32 sigmoid router (moe.score_func=sigmoid, router_fp32=true)"
            )
        if not m.expert_bias:
            problems.append("dots1 always has the correction bias (moe.expert_bias=true)")
        if m.num_experts % m.n_group:
            problems.append("moe.n_group must divide num_experts")
    else:
        if m.score_func != "softmax" or m.router_fp32 or m.expert_bias:
            problems.append("olmoe routes with a model-dtype softmax router and no expert bias")
        if m.num_shared_experts or m.first_k_dense_replace:
            problems.append("olmoe has no shared experts and no dense layers")
        if m.routed_scaling_factor != 1.0 or m.n_group != 1:
            problems.append("olmoe has no routed scaling factor and no group-limited routing")
        if a.head_dim is not None and a.head_dim != cfg.hidden_size // a.num_heads:
            problems.append("olmoe's head_dim is always hidden_size // num_heads")
    return problems
