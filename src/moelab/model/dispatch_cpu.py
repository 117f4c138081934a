"""CPU training kernels for the MoE dispatch gather and combine: the same math, cheaper backward.

Autograd through ``index_select`` (dispatch) and ``index_select → mul → sum`` (combine) costs,
per layer on CPU, a zero-filled gradient plus a serial ``index_add`` for each gather, two
broadcast multiplies over (T, K, D), and a reduction. These Functions write the backward
directly, with gradients bit-identical to the reference autograd path (tests/model/
test_dispatch_cpu.py checks bits, and against float64 finite differences):

* dispatch backward: each token's gradient is the sum of its K sorted rows, one
  ``embedding_bag(mode="sum")`` over bags listing those rows in ascending sorted order, the
  order in which ``index_add`` adds them (~6x faster than ``index_add`` on one thread);
* combine forward: each row times its weight in sorted order (the reference's products), then
  each token's K rows summed in slot order by ``embedding_bag(mode="sum")``, with no (T, K, D)
  gathered copy. The sum is bit-identical to the reference's ``sum(dim=1)`` when D is a multiple
  of 32 (every model preset); for other widths that reduction handles the vector tail in
  another order and the two agree to fp32 rounding. (``embedding_bag``'s own per-sample
  weights would fuse the multiply-add and change the last bit for every D.)
* combine backward, in sorted order: one gather of the token gradients ``g[token(s)]``; the
  routing-weight gradient is ``Σ_d y_sd · g_sd`` (the same products and the same row reduction
  as autograd's), moved to assignment order; the expert-output gradient is the gathered rows
  scaled in place by their weights — no zero fill, no scatter, no (T, K, D) intermediate.

``F.embedding`` is ATen's fastest row gather on CPU (~1.5-2x ``index_select``, 1 thread). Used
only for fp32 CPU tensors outside autocast (``use_cpu_kernels``); CUDA and bf16 keep autograd.

Shapes: S = T*K sorted assignments, T tokens, K top_k, D hidden.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ENABLED = True
"""Switch for benchmarks and tests: False runs the reference autograd path everywhere."""


def use_cpu_kernels(*tensors: torch.Tensor) -> bool:
    """The CPU kernels run for fp32 CPU tensors outside autocast."""
    return (
        ENABLED
        and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
        and not torch.is_autocast_enabled("cpu")
    )


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_TD, token_S, inverse_S, top_k):
        ctx.save_for_backward(inverse_S)
        ctx.top_k = top_k
        return F.embedding(token_S, x_TD)

    @staticmethod
    def backward(ctx, grad_SD):
        (inverse_S,) = ctx.saved_tensors
        # Bag t = the sorted rows of token t, ascending: index_add's order, so the same bits.
        bags_TK = inverse_S.view(-1, ctx.top_k).sort(dim=1).values
        return F.embedding_bag(bags_TK, grad_SD.contiguous(), mode="sum"), None, None, None


class _Combine(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y_SD, weights_TK, order_S, inverse_S):
        T, K = weights_TK.shape
        weight_S = weights_TK.reshape(-1).index_select(0, order_S)
        # Products in sorted order, then each token's K rows summed in slot order.
        out_TD = F.embedding_bag(inverse_S.view(T, K), y_SD * weight_S.unsqueeze(-1), mode="sum")
        ctx.save_for_backward(y_SD, weight_S, order_S, inverse_S)
        ctx.top_k = K
        return out_TD

    @staticmethod
    def backward(ctx, grad_TD):
        y_SD, weight_S, order_S, inverse_S = ctx.saved_tensors
        # Row s of g_SD is the gradient of token(s), in sorted order.
        token_S = torch.div(order_S, ctx.top_k, rounding_mode="floor")
        g_SD = F.embedding(token_S, grad_TD.contiguous())
        grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = (y_SD * g_SD).sum(dim=-1).index_select(0, inverse_S).view(-1, ctx.top_k)
        grad_y = g_SD.mul_(weight_S.unsqueeze(-1)) if ctx.needs_input_grad[0] else None
        return grad_y, grad_w, None, None


def gather(
    x_TD: torch.Tensor, order_S: torch.Tensor, inverse_S: torch.Tensor, top_k: int
) -> torch.Tensor:
    """Each assignment's token row in sorted order: ``x_TD[order_S // top_k]``."""
    token_S = torch.div(order_S, top_k, rounding_mode="floor")
    return _Gather.apply(x_TD, token_S, inverse_S, top_k)


def combine(
    y_SD: torch.Tensor, weights_TK: torch.Tensor, order_S: torch.Tensor, inverse_S: torch.Tensor
) -> torch.Tensor:
    """Weighted sum over each token's K expert outputs (rows of y_SD in sorted order)."""
    return _Combine.apply(y_SD, weights_TK, order_S, inverse_S)
