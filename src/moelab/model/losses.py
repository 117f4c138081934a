"""Training losses as pure functions of logits and ``RouterOutput`` lists.

Conventions are named, because the two references disagree (model_spec.md §3.5):

* ``load_balancing_loss`` — the OLMoE *training code* (MegaBlocks) convention: per layer
  ``E/(T·K) · Σ_e n_e · P̄_e``, averaged over layers. Balanced value 1. Coefficient 0.01.
* ``load_balancing_loss_hf`` — transformers' ``load_balancing_loss_func``: all layers' router
  logits pooled, probabilities and top-k recomputed, ``E · Σ_e f_e · P_e`` with f summing to K.
  Balanced value K. This is what ``OlmoeForCausalLM(..., output_router_logits=True)`` adds.
* ``router_z_loss`` — ST-MoE's mean squared log-partition, averaged over layers;
  ``divide_by_top_k=True`` gives OLMoE's training code (an extra 1/K). Coefficient 0.001.
* ``sequence_balance_loss`` — DeepSeek-V3 eq. 17–20, the complementary loss dots.llm1 used:
  per sequence ``Σ_e f_e·P_e`` with f = E/(K·T)·count and P the mean of the per-token
  normalised sigmoid scores; averaged over sequences and layers.

Nothing here has state; the aux-loss-free bias update lives with the trainer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from moelab.model.router import RouterOutput


def cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100
) -> torch.Tensor:
    """Mean token cross-entropy in fp32. logits (..., V), labels (...) already shifted."""
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=ignore_index
    )


def load_balancing_loss(router: list[RouterOutput], num_experts: int, top_k: int) -> torch.Tensor:
    """OLMoE training-code (MegaBlocks) load-balancing loss, per layer then averaged. Balanced = 1."""
    if not router:
        raise ValueError("load_balancing_loss needs at least one MoE layer's router output")
    per_layer = []
    for r in router:
        T = r.scores_TE.shape[0]
        mean_prob_E = r.scores_TE.float().mean(dim=0)
        counts_E = r.tokens_per_expert_E.float()
        per_layer.append(num_experts / (T * top_k) * (counts_E * mean_prob_E).sum())
    return torch.stack(per_layer).mean()


def load_balancing_loss_hf(
    router_logits: list[torch.Tensor], num_experts: int, top_k: int
) -> torch.Tensor:
    """transformers' pooled convention (Mixtral/OLMoE ``load_balancing_loss_func``). Balanced = K."""
    if not router_logits:
        raise ValueError("load_balancing_loss_hf needs at least one layer of router logits")
    counts = torch.zeros(num_experts, dtype=torch.float32, device=router_logits[0].device)
    prob_sum = torch.zeros_like(counts)
    rows = 0
    for logits in router_logits:
        probs = F.softmax(logits, dim=-1)
        selected = torch.topk(probs, top_k, dim=-1).indices
        counts = counts + torch.histc(
            selected.reshape(-1).float(), bins=num_experts, min=0, max=num_experts
        )
        prob_sum = prob_sum + probs.float().sum(dim=0)
        rows += probs.shape[0]
    return num_experts * torch.sum((counts / rows) * (prob_sum / rows))


def router_z_loss(router: list[RouterOutput], divide_by_top_k: bool = False) -> torch.Tensor:
    """Mean over tokens of logsumexp(logits)², averaged over layers (ST-MoE)."""
    if not router:
        raise ValueError("router_z_loss needs at least one MoE layer's router output")
    per_layer = [torch.logsumexp(r.logits_TE.float(), dim=-1).pow(2).mean() for r in router]
    loss = torch.stack(per_layer).mean()
    if divide_by_top_k:
        loss = loss / router[0].expert_ids_TK.shape[1]
    return loss


def sequence_balance_loss(router: list[RouterOutput], batch_size: int) -> torch.Tensor:
    """DeepSeek-V3 sequence-wise balance loss (without α), averaged over sequences and layers.

    Tokens of each layer's router output are laid out batch-major, ``batch_size`` sequences.
    """
    if not router:
        raise ValueError("sequence_balance_loss needs at least one MoE layer's router output")
    per_layer = []
    for r in router:
        N, E = r.scores_TE.shape
        K = r.expert_ids_TK.shape[1]
        if N % batch_size:
            raise ValueError(f"{N} routed tokens do not split into {batch_size} sequences")
        T = N // batch_size
        scores = r.scores_TE.float().view(batch_size, T, E)
        norm_scores = scores / scores.sum(dim=-1, keepdim=True)
        P_BE = norm_scores.mean(dim=1)
        onehot = torch.zeros(batch_size, T, E, device=scores.device)
        onehot.scatter_(2, r.expert_ids_TK.view(batch_size, T, K), 1.0)
        f_BE = onehot.sum(dim=1) * (E / (K * T))
        per_layer.append((f_BE * P_BE).sum(dim=-1).mean())
    return torch.stack(per_layer).mean()
