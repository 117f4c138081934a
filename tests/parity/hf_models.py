"""Tiny random transformers Dots1 / OLMoE models, built and saved in the test (nothing downloaded)."""

from __future__ import annotations

from pathlib import Path

import torch

transformers = __import__("pytest").importorskip("transformers")


def dots1_config(n_group: int = 1, topk_group: int = 1, **overrides):
    values = dict(
        vocab_size=320,
        hidden_size=64,
        intermediate_size=96,
        moe_intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=16,
        n_shared_experts=2,
        n_routed_experts=8,
        num_experts_per_tok=3,
        first_k_dense_replace=1,
        n_group=n_group,
        topk_group=topk_group,
        norm_topk_prob=True,
        routed_scaling_factor=2.5,
        rope_parameters={"rope_type": "default", "rope_theta": 1e7},
        rms_norm_eps=1e-5,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        sliding_window=None,
    )
    values.update(overrides)
    return transformers.Dots1Config(**values)


def olmoe_config(**overrides):
    values = dict(
        vocab_size=320,
        hidden_size=64,
        intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,
        num_experts=8,
        num_experts_per_tok=3,
        norm_topk_prob=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        rms_norm_eps=1e-5,
        max_position_embeddings=256,
        pad_token_id=1,
        eos_token_id=2,
        output_router_logits=True,
    )
    values.update(overrides)
    return transformers.OlmoeConfig(**values)


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Random weights everywhere, norms and the dots correction bias included (non-trivial)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                param.copy_(1.0 + 0.2 * torch.randn(param.shape, generator=gen))
            else:
                param.copy_(0.05 * torch.randn(param.shape, generator=gen))
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.copy_(0.1 * torch.randn(buf.shape, generator=gen))


def make_hf_model(kind: str, seed: int = 0, experts_impl: str = "eager", **cfg_kw):
    config = dots1_config(**cfg_kw) if kind == "dots1" else olmoe_config(**cfg_kw)
    config._attn_implementation = "eager"
    config._experts_implementation = experts_impl
    cls = transformers.Dots1ForCausalLM if kind == "dots1" else transformers.OlmoeForCausalLM
    torch.manual_seed(seed)
    model = cls(config).eval()
    randomize(model, seed)
    return model


def save_hf(model, path: Path, **kw) -> Path:
    model.save_pretrained(path, **kw)
    return path


def load_hf(path: Path, kind: str, dtype=torch.float32, experts_impl: str = "eager"):
    cls = transformers.Dots1ForCausalLM if kind == "dots1" else transformers.OlmoeForCausalLM
    return cls.from_pretrained(
        path, dtype=dtype, attn_implementation="eager", experts_implementation=experts_impl
    ).eval()
