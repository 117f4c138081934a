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

* ``linear_cross_entropy`` — the LM head and ``cross_entropy`` in one pass over token chunks:
  the (tokens, V) fp32 logits, their log-softmax and its gradient never exist whole (they are
  the largest tensors of a small model's step: 32 MiB each for 2,048 tokens × 4,096 vocab).
  Each chunk's logit gradient is formed in the forward, multiplied into the hidden-state and
  head-weight gradients, and dropped (the approach of Liger-Kernel's fused linear cross-entropy).

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


LCE_CHUNK_ELEMENTS = 1 << 20
"""Logit elements per chunk of ``linear_cross_entropy`` (4 MiB in fp32: stays in cache on CPU)."""


def linear_cross_entropy(
    h_ND: torch.Tensor,
    weight_VD: torch.Tensor,
    labels_N: torch.Tensor,
    ignore_index: int = -100,
    chunk_tokens: int | None = None,
) -> torch.Tensor:
    """``cross_entropy(h_ND @ weight_VD.T, labels_N)`` without the whole logits tensor.

    Same math as the unfused pair, in the same dtypes: the matmuls in the autocast dtype when
    autocast is on (else the inputs' dtype), logits upcast to fp32 before the softmax, the mean
    over the labels that are not ``ignore_index``. Gradients agree to fp32 rounding (the head
    weight's gradient is summed chunk by chunk, in fp32 also under autocast).
    """
    if h_ND.dim() != 2 or labels_N.shape != h_ND.shape[:1]:
        raise ValueError(
            f"linear_cross_entropy takes h (N, D) and labels (N,), got {tuple(h_ND.shape)} "
            f"and {tuple(labels_N.shape)}"
        )
    device_type = h_ND.device.type
    dtype = (
        torch.get_autocast_dtype(device_type)
        if torch.is_autocast_enabled(device_type)
        else h_ND.dtype
    )
    chunk = chunk_tokens or max(1, LCE_CHUNK_ELEMENTS // weight_VD.shape[0])
    return _LinearCrossEntropy.apply(h_ND, weight_VD, labels_N, ignore_index, chunk, dtype)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h_ND, weight_VD, labels_N, ignore_index, chunk, dtype):
        with torch.autocast(h_ND.device.type, enabled=False):
            return _lce_forward(ctx, h_ND, weight_VD, labels_N, ignore_index, chunk, dtype)

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        if grad_h.numel() == 0:  # no input needed a gradient
            return None, None, None, None, None, None
        # grad_loss is 1 for a plain backward(); skip a multiply that would round nothing.
        # (Always multiply under torch.compile: x·1 is exact, and .item() would break the graph.)
        if torch.compiler.is_compiling() or grad_loss.ne(1).item():
            grad_h, grad_w = grad_h * grad_loss, grad_w * grad_loss
        grad_h = grad_h.to(ctx.h_dtype) if ctx.needs_input_grad[0] else None
        grad_w = grad_w.to(ctx.w_dtype) if ctx.needs_input_grad[1] else None
        return grad_h, grad_w, None, None, None, None


def _lce_forward(ctx, h_ND, weight_VD, labels_N, ignore_index, chunk, dtype) -> torch.Tensor:
    """Loss, and (when an input needs one) both gradients, chunk by chunk; saves the gradients."""
    want_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
    h, w = h_ND.to(dtype), weight_VD.to(dtype)
    acc = torch.promote_types(dtype, torch.float32)  # fp32, or fp64 for a float64 gradcheck
    valid_N = labels_N != ignore_index
    n_valid = valid_N.sum()
    safe_N = torch.where(valid_N, labels_N, 0)[:, None]
    scale_N = valid_N.to(acc) / n_valid  # 1/n on counted rows, 0 on ignored ones
    loss = torch.zeros((), dtype=acc, device=h.device)
    grad_h = torch.empty_like(h) if want_grad else h.new_empty(0)
    grad_w = torch.zeros(w.shape, dtype=acc, device=w.device) if want_grad else None
    for s in range(0, h.shape[0], chunk):
        e = min(s + chunk, h.shape[0])
        # log_softmax, the kernel cross_entropy uses: the same per-token losses.
        logp_CV = torch.log_softmax((h[s:e] @ w.T).to(acc), dim=-1)
        nll_C = -logp_CV.gather(1, safe_N[s:e]).squeeze(1)
        loss += torch.where(valid_N[s:e], nll_C, 0.0).sum()
        if not want_grad:
            continue
        # d loss / d logits = (softmax − onehot(label)) / n, formed in place.
        probs_CV = logp_CV.exp_()
        probs_CV.scatter_add_(1, safe_N[s:e], -valid_N[s:e, None].to(acc))
        g_CV = probs_CV.mul_(scale_N[s:e, None]).to(dtype)
        torch.mm(g_CV, w, out=grad_h[s:e])
        if dtype == acc:
            grad_w.addmm_(g_CV.T, h[s:e])
        else:
            grad_w += (g_CV.T @ h[s:e]).to(acc)
    ctx.h_dtype, ctx.w_dtype = h_ND.dtype, weight_VD.dtype
    ctx.save_for_backward(grad_h, grad_w if grad_w is not None else h.new_empty(0))
    return loss / n_valid


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
