"""CPU training kernel for the MoE combine: the same math as ``LocalDispatcher.combine``, cheaper backward.

Autograd through ``index_select → mul → sum`` costs, per layer on CPU, a zero-filled (S, D)
gradient plus a serial ``index_add`` (index_select's backward), two broadcast multiplies over
(T, K, D), and a reduction. This Function writes the backward directly:

* the expert-output gradient ``g_t · w_tk`` is formed directly in sorted order: a gather of the
  (T, D) token gradients by ``order // K`` scaled in place by the sorted weights — no zero
  fill, no scatter, no (T, K, D) intermediate;
* the routing-weight gradient ``⟨y_tk, g_t⟩`` is one ``vecdot``.

The forward's weighted sum is a (T, 1, K) @ (T, K, D) ``bmm``: bit-identical to the reference
``mul`` + ``sum(dim=1)`` in our checks (the test asserts fp32-tight closeness, not bits). The
expert-output gradient is bit-identical; the weight gradient agrees to fp32 rounding (the dot
products sum in a different order). Used only for fp32 CPU tensors
outside autocast (``use_cpu_kernels``); CUDA and bf16 keep the autograd path.
tests/model/test_dispatch_cpu.py checks outputs and gradients against the reference.

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


class _Combine(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y_SD, weights_TK, order_S, inverse_S):
        T, K = weights_TK.shape
        # F.embedding is ATen's fastest row gather on CPU (~1.5-2x index_select, 1 thread).
        y_TKD = F.embedding(inverse_S, y_SD).view(T, K, -1)
        # (T, 1, K) @ (T, K, D): no (T, K, D) product tensor, no separate reduction.
        out_TD = torch.bmm(weights_TK.unsqueeze(1), y_TKD).squeeze(1)
        ctx.save_for_backward(y_TKD, weights_TK, order_S)
        return out_TD

    @staticmethod
    def backward(ctx, grad_TD):
        y_TKD, weights_TK, order_S = ctx.saved_tensors
        grad_TD = grad_TD.contiguous()
        grad_y = grad_w = None
        if ctx.needs_input_grad[0]:
            # Row s of the sorted gradient is g[token(s)] * w[s]: gather the token rows in sorted
            # order and scale each by its weight, one product per entry as autograd's mul.
            K = weights_TK.shape[1]
            token_S = torch.div(order_S, K, rounding_mode="floor")
            weight_S = weights_TK.reshape(-1).index_select(0, order_S)
            grad_y = F.embedding(token_S, grad_TD).mul_(weight_S.unsqueeze(-1))
        if ctx.needs_input_grad[1]:
            grad_w = torch.linalg.vecdot(y_TKD, grad_TD.unsqueeze(1))
        return grad_y, grad_w, None, None


def combine(
    y_SD: torch.Tensor, weights_TK: torch.Tensor, order_S: torch.Tensor, inverse_S: torch.Tensor
) -> torch.Tensor:
    """Weighted sum over each token's K expert outputs (rows of y_SD in sorted order)."""
    return _Combine.apply(y_SD, weights_TK, order_S, inverse_S)
