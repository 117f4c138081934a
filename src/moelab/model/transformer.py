"""The decoder: embeddings, pre-norm blocks (dense or MoE per layer), final norm, lm_head.

``forward`` returns logits and one ``RouterOutput`` per MoE layer; losses are computed outside
(``moelab.model.losses``), so training, evaluation and routing analysis share one forward. The
one exception: given ``labels``, the LM head returns the mean cross-entropy instead of logits
(``linear_cross_entropy``: the head and the loss fused, the full logits never materialised),
still through the ``lm_head`` module so FSDP's hooks on it run as for the logits path.
Blocks live in a ``ModuleDict`` keyed by layer index so pipeline stages can drop layers and
keep their names. The model knows nothing of devices beyond its own parameters, of optimizers,
or of parallelism (applied from outside by moelab.parallel).

Shapes: B batch, T sequence, D hidden, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from moelab.model.attention import Attention, KVCacheProtocol
from moelab.model.config import ModelConfig
from moelab.model.experts import GroupedExperts
from moelab.model.layers import RMSNorm, RotaryEmbedding, SwiGLU
from moelab.model.losses import linear_cross_entropy
from moelab.model.moe import MoELayer
from moelab.model.router import Router, RouterOutput


@dataclass
class ModelOutput:
    logits: torch.Tensor | None
    """(B, T, V) in the model (or autocast) dtype; losses upcast to fp32. None given labels."""
    router: list[RouterOutput] = field(default_factory=list)
    """One entry per MoE layer, in layer order (dense layers have none)."""
    moe_layers: list[int] = field(default_factory=list)
    """The layer index of each router entry."""
    loss: torch.Tensor | None = None
    """Mean token cross-entropy (fp32) when ``forward`` was given labels."""
    batch_size: int = 0
    """Rows of the input (B): the sequence count the sequence-wise balance loss needs."""


class LMHead(nn.Linear):
    """The output projection; with ``labels`` it returns the loss instead of the logits."""

    def forward(self, h: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if labels is None:
            return super().forward(h)
        return linear_cross_entropy(h.reshape(-1, h.shape[-1]), self.weight, labels.reshape(-1))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.is_moe = cfg.is_moe_layer(layer_idx)
        self.mlp = MoELayer(cfg) if self.is_moe else SwiGLU(cfg.hidden_size, cfg.intermediate_size)

    def forward(
        self,
        x_BTD: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        positions_BT: torch.Tensor,
        kv_cache: KVCacheProtocol | None = None,
        document_ids_BT: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, RouterOutput | None]:
        x_BTD = x_BTD + self.self_attn(
            self.input_layernorm(x_BTD), rope, positions_BT, kv_cache, document_ids_BT
        )
        h = self.post_attention_layernorm(x_BTD)
        if self.is_moe:
            y, routing = self.mlp(h)
        else:
            y, routing = self.mlp(h), None
        return x_BTD + y, routing


class MoETransformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        # padding_idx as in transformers: the pad row gets no gradient and starts at zero.
        self.embed_tokens = nn.Embedding(
            cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id
        )
        self.layers = nn.ModuleDict(
            {str(i): TransformerBlock(cfg, i) for i in range(cfg.num_layers)}
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.attention.rope_theta)
        self.lm_head = LMHead(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        kv_cache: KVCacheProtocol | None = None,
        document_ids: torch.Tensor | None = None,
        logits_at: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> ModelOutput:
        """input_ids (B, T); positions (B, T) default to 0..T-1 (pass them when decoding).

        ``document_ids`` (B, T) packs several documents per row: attention stays within each
        document (pass positions restarting at each document too). Not combined with a cache.
        ``logits_at`` (B,) keeps one position per row: logits are (B, 1, V), and lm_head runs on
        B rows instead of B*T (generation needs only each prompt's last position).
        ``labels`` (B, T), already shifted, -100 = ignored: ``loss`` is their mean cross-entropy
        and ``logits`` is None (the head and the loss run fused, chunk by chunk).
        """
        B, T = input_ids.shape
        if document_ids is not None and kv_cache is not None:
            raise ValueError("document_ids (packed rows) cannot be combined with a KV cache")
        if positions is None:
            positions = torch.arange(T, device=input_ids.device).expand(B, T)
        h = self.embed_tokens(input_ids) if self.embed_tokens is not None else input_ids
        dtype = (
            torch.get_autocast_dtype(h.device.type)
            if torch.is_autocast_enabled(h.device.type)
            else h.dtype
        )
        rope = self.rotary(positions, dtype)
        out = ModelOutput(logits=h, batch_size=B)
        for block in self.layers.values():
            h, routing = block(h, rope, positions, kv_cache, document_ids)
            if routing is not None:
                out.router.append(routing)
                out.moe_layers.append(block.layer_idx)
        if logits_at is not None:
            h = h[torch.arange(B, device=h.device), logits_at][:, None]
        if self.norm is not None:
            h = self.norm(h)
        if labels is not None:
            if logits_at is not None or self.lm_head is None:
                raise ValueError("labels need the full sequence and the model's lm_head")
            out.logits, out.loss = None, self.lm_head(h, labels=labels.to(h.device))
            return out
        out.logits = self.lm_head(h) if self.lm_head is not None else h
        return out

    # -- initialisation --------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """Normal(0, init_std) for every matrix, truncated at 3σ; norms to one; biases to zero.

        Deterministic for a seed and independent of the order modules were built in.
        """
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        std = self.config.init_std
        for _name, module in sorted(self.named_modules(), key=lambda kv: kv[0]):
            if isinstance(module, RMSNorm):
                module.weight.fill_(1.0)
            elif isinstance(module, RotaryEmbedding):
                module.reset_parameters()
            elif isinstance(module, nn.Linear | nn.Embedding | Router | GroupedExperts):
                for pname, param in sorted(module.named_parameters(recurse=False)):
                    if pname == "bias":
                        param.zero_()
                    else:
                        _trunc_normal_(param, std, gen)
                if isinstance(module, Router) and module.expert_bias is not None:
                    module.expert_bias.zero_()
                if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                    module.weight[module.padding_idx].zero_()

    def num_params(self) -> int:
        """Parameters actually held (tied weights counted once)."""
        return sum(p.numel() for p in self.parameters())


def _trunc_normal_(param: torch.Tensor, std: float, gen: torch.Generator | None) -> None:
    if param.device.type == "meta":
        return
    sample = torch.empty(param.shape, dtype=torch.float32)
    nn.init.trunc_normal_(sample, std=std, a=-3 * std, b=3 * std, generator=gen)
    param.copy_(sample)


def build_model(
    cfg: ModelConfig,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int | None = 0,
) -> MoETransformer:
    """Build and initialise a model (on ``meta`` nothing is allocated or initialised)."""
    device = torch.device(device)
    with torch.device(device):
        model = MoETransformer(cfg)
    if device.type != "meta":
        model.init_weights(seed)
    return model.to(dtype=dtype)


def model_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6·N_active + 6·L·T·H·d.

    N_active excludes the input embedding (a lookup) but includes lm_head and every active
    expert. Attention scores and the value product cost 4·T·H·d FLOPs per token per layer in
    the forward pass with a full mask; a causal mask halves that, and forward + backward is 3×.
    (PaLM's 12·L·T·H·d counts the full mask.)
    """
    n_active = (
        cfg.num_active_params() - cfg.vocab_size * cfg.hidden_size
    )  # input embedding is a lookup
    attn = 6 * cfg.num_layers * seq_len * cfg.attention.num_heads * cfg.head_dim
    return 6 * n_active + attn
