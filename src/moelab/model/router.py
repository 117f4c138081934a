"""Token-choice routers of both families, returning a ``RouterOutput`` for training and analysis.

OLMoE (``score_func="softmax"``): logits in the model dtype, softmax in fp32, top-k of the
probabilities, no renormalisation, weights cast back to the model dtype.

dots.llm1 / DeepSeek-V3 (``score_func="sigmoid"``): logits in fp32 (input and weight upcast
first), sigmoid scores, an fp32 correction bias added for *selection only*, optional
group-limited selection (group score = sum of its top-2 biased scores; experts outside the
kept groups are masked to -inf), ``topk(sorted=False)`` as transformers does (slot order
changes the fp32 combine sum), weights taken from the *unbiased* scores, renormalised
(+1e-20) and multiplied by the routed scaling factor. Weights stay fp32.

The bias is a buffer: it gets no gradient and the optimizer never sees it; the trainer updates
it once per optimizer step from ``tokens_per_expert`` (aux-loss-free balancing).

Shapes: T tokens, D hidden, E experts, K top_k.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from moelab.model.config import MoEConfig

TopK = Callable[[torch.Tensor, int, bool], torch.Tensor]
"""(scores (T, E), k, sorted) -> indices (T, k) of each row's k largest, largest first if sorted."""


def torch_topk(scores_TE: torch.Tensor, k: int, sorted: bool) -> torch.Tensor:
    return torch.topk(scores_TE, k, dim=-1, sorted=sorted).indices


@dataclass
class RouterOutput:
    """What one MoE layer decided. Everything the losses, the bias update and analysis need."""

    logits_TE: torch.Tensor
    """Pre-activation router logits (fp32 for dots, model dtype for OLMoE)."""
    scores_TE: torch.Tensor
    """Affinities in fp32: softmax probabilities or sigmoid scores (no bias)."""
    expert_ids_TK: torch.Tensor
    """Chosen experts (int64)."""
    weights_TK: torch.Tensor
    """Combine weights for the chosen experts."""
    tokens_per_expert_E: torch.Tensor
    """How many (token, slot) assignments each expert got (int64); sums to T*K."""


class Router(nn.Module):
    def __init__(self, dim: int, cfg: MoEConfig):
        super().__init__()
        self.num_experts, self.top_k = cfg.num_experts, cfg.top_k
        self.score_func = cfg.score_func
        self.norm_topk_prob = cfg.norm_topk_prob
        self.scaling = cfg.routed_scaling_factor
        self.n_group, self.topk_group = cfg.n_group, cfg.topk_group
        self.router_fp32 = cfg.router_fp32
        self.weight = nn.Parameter(torch.empty(cfg.num_experts, dim))
        if cfg.expert_bias:
            self.register_buffer("expert_bias", torch.zeros(cfg.num_experts, dtype=torch.float32))
        else:
            self.expert_bias = None

    def _apply(self, fn, recurse=True):
        # Keep the fp32 state fp32 whatever dtype the model is cast to: the correction bias
        # always (a bf16 bias flips expert choices) and, for an fp32 router (dots), its weight
        # (transformers >= 5.24 keeps ``gate.weight`` fp32 too). Only the device follows ``fn``;
        # Module._apply does the rest (Parameter identity, grads, meta -> real tensors).
        kept = [getattr(self, name) for name in self.fp32_names()]
        kept += [t.grad for t in kept if t.grad is not None]
        if not kept:
            return super()._apply(fn, recurse)

        def fn_keeping_fp32(t: torch.Tensor) -> torch.Tensor:
            return _fp32_like(fn, t) if any(t is k for k in kept) else fn(t)

        return super()._apply(fn_keeping_fp32, recurse)

    def fp32_names(self) -> set[str]:
        """Names of this router's tensors that stay fp32 under any dtype cast or load."""
        names = {"expert_bias"} if self._buffers.get("expert_bias") is not None else set()
        return names | ({"weight"} if self.router_fp32 else set())

    def forward(
        self,
        x_TD: torch.Tensor,
        topk: TopK | None = None,
        linear: Callable[..., torch.Tensor] = F.linear,
    ) -> RouterOutput:
        """``topk`` picks the k best per row (default ``torch.topk``) and ``linear`` makes the
        logits: the inference engine passes its own (a C top-k, oneDNN), same numbers."""
        if self.router_fp32:
            logits = linear(x_TD.float(), self.weight.float())
        else:
            logits = linear(x_TD, self.weight)
        if self.score_func == "softmax":
            scores = F.softmax(logits, dim=-1, dtype=torch.float32)
        else:
            scores = logits.float().sigmoid()
        ids = self._select(scores, topk or torch_topk)
        weights = scores.gather(1, ids)
        if self.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        if self.scaling != 1.0:
            weights = weights * self.scaling
        if self.score_func == "softmax":
            weights = weights.to(logits.dtype)
        flat = ids.flatten()
        counts = flat.new_zeros(self.num_experts).scatter_add_(0, flat, torch.ones_like(flat))
        return RouterOutput(logits, scores, ids, weights, counts)

    def _select(self, scores_TE: torch.Tensor, topk: TopK) -> torch.Tensor:
        if self.score_func == "softmax" and self.expert_bias is None:
            # torch.topk(sorted=True) as in transformers' OLMoE router.
            return topk(scores_TE, self.top_k, True)
        choice = scores_TE if self.expert_bias is None else scores_TE + self.expert_bias
        if self.n_group > 1:
            choice = self._mask_groups(choice)
        return topk(choice, self.top_k, False)

    def _mask_groups(self, choice_TE: torch.Tensor) -> torch.Tensor:
        T = choice_TE.shape[0]
        grouped = choice_TE.view(T, self.n_group, self.num_experts // self.n_group)
        group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)  # (T, n_group)
        keep = torch.topk(group_scores, self.topk_group, dim=-1, sorted=False).indices
        group_mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, keep, True)
        expert_mask = group_mask[:, :, None].expand_as(grouped).reshape(T, self.num_experts)
        return choice_TE.masked_fill(~expert_mask, float("-inf"))


def _fp32_like(fn, tensor: torch.Tensor) -> torch.Tensor:
    """``fn(tensor)`` for a device move; for a dtype cast, ``tensor`` on the new device in fp32."""
    moved = fn(tensor)
    if moved.dtype == torch.float32:  # a device move, to_empty(), ...
        return moved
    if tensor.is_meta:
        return moved.float()
    return tensor.to(device=moved.device, dtype=torch.float32)


def fp32_state_names(model: nn.Module) -> set[str]:
    """State-dict names of every router tensor that stays fp32 (loaders cast all others)."""
    return {
        f"{prefix}.{name}" if prefix else name
        for prefix, module in model.named_modules()
        if isinstance(module, Router)
        for name in module.fp32_names()
    }
