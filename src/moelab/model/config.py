"""Model configuration: one dataclass per component, plus closed-form parameter counts.

One ``ModelConfig`` describes both families. The switches that separate them:

* ``attention.qk_norm``: ``"head"`` (dots.llm1: RMSNorm over head_dim after the head reshape,
  one weight shared by all heads) or ``"full"`` (OLMoE: RMSNorm over the whole projection,
  before the reshape) or ``"none"``.
* ``moe.score_func``: ``"sigmoid"`` (dots, DeepSeek-V3 router with selection-only bias,
  renormalised top-k and a routed scaling factor) or ``"softmax"`` (OLMoE, no renormalisation).
* ``moe.first_k_dense_replace``: the first k layers use a dense SwiGLU of ``intermediate_size``.

Defaults are deliberately those of neither model: use a preset (``moelab.model.presets``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from moelab.config import Config, ConfigError


@dataclass
class AttentionConfig(Config):
    num_heads: int = 4
    """Query heads."""
    num_kv_heads: int | None = None
    """Key/value heads; null means num_heads (MHA). Fewer gives GQA."""
    head_dim: int | None = None
    """Per-head width; null means hidden_size // num_heads."""
    qk_norm: Literal["none", "head", "full"] = "head"
    """Where QK RMSNorm sits: per head (dots) or over the whole projection (OLMoE)."""
    rope_theta: float = 10000.0
    """RoPE base (dots.llm1 1e7, OLMoE 1e4)."""
    bias: bool = False
    """Biases on the q/k/v/o projections (false for both families)."""
    clip_qkv: float | None = None
    """Clamp q, k, v to ±clip_qkv after projection (OLMoE option, null there)."""
    impl: Literal["sdpa", "eager"] = "sdpa"
    """`sdpa` is fastest; `eager` follows transformers' eager op order (for bf16 parity)."""

    def validate(self, path: str) -> None:
        if self.num_heads < 1:
            raise ConfigError(f"{path}.num_heads", f"must be >= 1, got {self.num_heads}")
        kv = self.num_kv_heads
        if kv is not None and (kv < 1 or self.num_heads % kv):
            raise ConfigError(
                f"{path}.num_kv_heads",
                f"({kv}) must be >= 1 and divide num_heads ({self.num_heads})",
            )
        if self.head_dim is not None and (self.head_dim < 2 or self.head_dim % 2):
            raise ConfigError(
                f"{path}.head_dim", f"must be a positive even number, got {self.head_dim}"
            )
        if self.rope_theta <= 0:
            raise ConfigError(f"{path}.rope_theta", f"must be > 0, got {self.rope_theta}")
        if self.clip_qkv is not None and self.clip_qkv <= 0:
            raise ConfigError(f"{path}.clip_qkv", f"must be > 0 or null, got {self.clip_qkv}")


@dataclass
class MoEConfig(Config):
    num_experts: int = 8
    """Routed experts per MoE layer (dots 128, OLMoE 64)."""
    top_k: int = 2
    """Experts chosen per token (dots 6, OLMoE 8)."""
    expert_intermediate_size: int = 64
    """Width of each routed expert's SwiGLU (dots 1408, OLMoE 1024)."""
    num_shared_experts: int = 0
    """Shared experts, fused into one SwiGLU of width num_shared * expert width (dots 2)."""
    first_k_dense_replace: int = 0
    """The first k layers are dense SwiGLU layers of model.intermediate_size (dots 1)."""
    score_func: Literal["softmax", "sigmoid"] = "softmax"
    """Router affinity: softmax over experts (OLMoE) or per-expert sigmoid (dots)."""
    norm_topk_prob: bool = False
    """Renormalise the chosen top-k weights to sum to one (dots true, OLMoE false)."""
    routed_scaling_factor: float = 1.0
    """Multiplies the routed weights after normalisation; shared experts are not scaled (dots 2.5)."""
    n_group: int = 1
    """Expert groups for group-limited routing (DeepSeek-V3); 1 disables it."""
    topk_group: int = 1
    """Groups kept per token when n_group > 1."""
    expert_bias: bool = False
    """Per-expert fp32 correction bias added to the scores for selection only (aux-loss-free)."""
    router_fp32: bool = False
    """Router linear in fp32 (dots, DeepSeek-V3) instead of the model dtype (OLMoE)."""
    dispatch: Literal["grouped_mm", "loop"] = "grouped_mm"
    """Expert computation: one grouped GEMM, or a per-expert loop (fallback, reference)."""

    def validate(self, path: str) -> None:
        def bad(name: str, msg: str) -> ConfigError:
            return ConfigError(f"{path}.{name}", msg)

        if self.num_experts < 1:
            raise bad("num_experts", f"must be >= 1, got {self.num_experts}")
        if not 1 <= self.top_k <= self.num_experts:
            raise bad(
                "top_k", f"({self.top_k}) must be between 1 and num_experts ({self.num_experts})"
            )
        if self.expert_intermediate_size < 1:
            raise bad(
                "expert_intermediate_size", f"must be >= 1, got {self.expert_intermediate_size}"
            )
        if self.num_shared_experts < 0:
            raise bad("num_shared_experts", f"must be >= 0, got {self.num_shared_experts}")
        if self.first_k_dense_replace < 0:
            raise bad("first_k_dense_replace", f"must be >= 0, got {self.first_k_dense_replace}")
        if self.n_group < 1 or self.num_experts % self.n_group:
            raise bad("n_group", f"({self.n_group}) must divide num_experts ({self.num_experts})")
        if not 1 <= self.topk_group <= self.n_group:
            raise bad(
                "topk_group", f"({self.topk_group}) must be between 1 and n_group ({self.n_group})"
            )
        if self.n_group > 1:
            per_group = self.num_experts // self.n_group
            if per_group < 2:
                raise bad("n_group", "group-limited routing needs at least 2 experts per group")
            if self.top_k > self.topk_group * per_group:
                raise bad(
                    "top_k",
                    f"({self.top_k}) exceeds the experts in topk_group groups ({self.topk_group * per_group})",
                )
        if self.routed_scaling_factor <= 0:
            raise bad("routed_scaling_factor", f"must be > 0, got {self.routed_scaling_factor}")


@dataclass
class ModelConfig(Config):
    family: Literal["dots1", "olmoe"] = "olmoe"
    """Which published architecture (and Hugging Face layout) this config follows."""
    vocab_size: int = 256
    hidden_size: int = 64
    num_layers: int = 2
    intermediate_size: int = 128
    """Width of dense SwiGLU layers (the first_k_dense_replace layers)."""
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    init_std: float = 0.02
    """Std of the normal init of every matrix (dots.llm1 used 0.006, OLMoE 0.02 truncated at 3σ)."""
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    """End-of-sequence id(s); a list when several ids stop generation."""
    pad_token_id: int | None = None
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    moe: MoEConfig = field(default_factory=MoEConfig)

    @classmethod
    def preset(cls, name: str) -> ModelConfig:
        from moelab.model.presets import get_preset

        return get_preset(name)

    # -- derived sizes -------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.attention.head_dim or self.hidden_size // self.attention.num_heads

    @property
    def num_kv_heads(self) -> int:
        return self.attention.num_kv_heads or self.attention.num_heads

    @property
    def num_dense_layers(self) -> int:
        return self.moe.first_k_dense_replace

    @property
    def num_moe_layers(self) -> int:
        return self.num_layers - self.moe.first_k_dense_replace

    def is_moe_layer(self, layer: int) -> bool:
        return layer >= self.moe.first_k_dense_replace

    def validate(self, path: str) -> None:
        def bad(name: str, msg: str) -> ConfigError:
            return ConfigError(f"{path}.{name}" if path else name, msg)

        for name in ("vocab_size", "hidden_size", "num_layers", "intermediate_size"):
            if getattr(self, name) < 1:
                raise bad(name, f"must be >= 1, got {getattr(self, name)}")
        heads = self.attention.num_heads
        if self.attention.head_dim is None and self.hidden_size % heads:
            raise bad(
                "attention.num_heads",
                f"({heads}) must divide hidden_size ({self.hidden_size}) when head_dim is null",
            )
        if self.attention.head_dim is None and (self.hidden_size // heads) % 2:
            raise bad("attention.num_heads", "hidden_size // num_heads must be even for RoPE")
        if self.moe.first_k_dense_replace > self.num_layers:
            raise bad(
                "moe.first_k_dense_replace",
                f"({self.moe.first_k_dense_replace}) exceeds num_layers ({self.num_layers})",
            )
        if self.rms_norm_eps <= 0:
            raise bad("rms_norm_eps", f"must be > 0, got {self.rms_norm_eps}")
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, name)
            for tok in value if isinstance(value, list) else [value]:
                if tok is not None and not 0 <= tok < self.vocab_size:
                    raise bad(name, f"({tok}) must be in [0, vocab_size={self.vocab_size})")

    # -- parameter counts ------------------------------------------------------------------
    def _attention_params(self) -> int:
        h, d, nh, nkv = self.hidden_size, self.head_dim, self.attention.num_heads, self.num_kv_heads
        proj = h * nh * d + 2 * h * nkv * d + nh * d * h
        if self.attention.bias:
            proj += nh * d + 2 * nkv * d + h
        norms = {"none": 0, "head": 2 * d, "full": nh * d + nkv * d}[self.attention.qk_norm]
        return proj + norms

    def _moe_params(self, experts_counted: int) -> int:
        h, m = self.hidden_size, self.moe
        expert = 3 * h * m.expert_intermediate_size
        shared = 3 * h * m.num_shared_experts * m.expert_intermediate_size
        router = m.num_experts * h
        return experts_counted * expert + shared + router

    def _count(self, experts_counted: int) -> int:
        h, v = self.hidden_size, self.vocab_size
        embeddings = v * h if self.tie_word_embeddings else 2 * v * h
        per_layer = self._attention_params() + 2 * h
        dense = 3 * h * self.intermediate_size
        return (
            embeddings
            + self.num_layers * per_layer
            + self.num_dense_layers * dense
            + self.num_moe_layers * self._moe_params(experts_counted)
            + h  # final norm
        )

    def num_params(self) -> int:
        """Every trainable parameter (buffers such as the expert bias are not counted)."""
        return self._count(self.moe.num_experts)

    def num_active_params(self) -> int:
        """Parameters one token touches: routed experts count top_k times, embeddings included."""
        return self._count(self.moe.top_k)
