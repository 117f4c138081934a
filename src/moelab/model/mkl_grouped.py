"""Grouped GEMM on CPU through MKL's ``cblas_sgemm_batch``, the one BLAS call made for MoE experts.

Why not ``torch.nn.functional.grouped_mm`` on CPU: ATen runs it as one ``at::mm`` per expert
(empty experts included), each with its own dispatch, views and output, a few microseconds
of overhead apiece, which dominates at MoE sizes (a few to a few dozen tokens per expert).
MKL's batch call takes every expert's GEMM in one call with per-group row counts. Measured on
one core (AMD EPYC, torch 2.13.0), the two projections of one MoE layer on a 64-token
prompt's routing: tiny-dots (128 experts) 0.54 → 0.27 ms, tiny-olmoe (64) 0.64 → 0.52 ms.

The x86-64 torch wheels link MKL statically into ``libtorch_cpu`` and export its CBLAS symbols;
``available()`` finds ``cblas_sgemm_batch`` there once (ctypes, no compiler, no extra
package). Where it is missing (other platforms, other BLAS) or ``MOELAB_MKL_GROUPED=0`` is set,
callers keep ATen's grouped_mm. fp32 only (that is the routine); the result equals grouped_mm's
to fp32 rounding (tests/model/test_mkl_grouped.py).

``grouped_linear(x, w, counts)``: rows of ``x`` are grouped by expert (``counts[e]``
consecutive rows for expert e), each group times its expert's ``w[e].T``; differentiable in
``x`` and ``w`` with the backward as two more batch calls (dx = dy·w_e, dw_e = dy_eᵀ·x_e).

Shapes: S rows (sorted assignments), D input width, H output width, E experts, G non-empty groups.
"""

from __future__ import annotations

import ctypes
import os
from functools import cache

import numpy as np
import torch

ENABLED = True
"""Switch for benchmarks and tests: False sends every caller back to ATen's grouped_mm."""

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112  # CBLAS enum values
_F32 = 4  # bytes


@cache
def _routine():
    if os.environ.get("MOELAB_MKL_GROUPED", "1") == "0":
        return None
    path = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        fn = ctypes.CDLL(path).cblas_sgemm_batch
    except (OSError, AttributeError):
        return None
    ptr = ctypes.c_void_p
    fn.restype = None
    fn.argtypes = [ctypes.c_int] + [ptr] * 13 + [ctypes.c_int, ptr]
    return fn


def available() -> bool:
    """Whether this torch build exports MKL's batch GEMM (and it is not switched off)."""
    return _routine() is not None


def supported(*tensors: torch.Tensor) -> bool:
    """fp32 CPU tensors outside autocast, on a build with the routine."""
    return (
        ENABLED
        and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
        and not torch.is_autocast_enabled("cpu")
        and available()
    )


def _sgemm_batch(trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc) -> None:
    """C_g = op(A_g)·op(B_g) for every group g; every argument is a scalar or a length-G array."""
    G = len(a)
    if G == 0:
        return

    def ints(v) -> np.ndarray:
        return np.ascontiguousarray(np.broadcast_to(np.asarray(v, dtype=np.int32), (G,)))

    arrays = [
        ints(trans_a),
        ints(trans_b),
        ints(m),
        ints(n),
        ints(k),
        np.ones(G, np.float32),
        np.ascontiguousarray(a, dtype=np.uint64),
        ints(lda),
        np.ascontiguousarray(b, dtype=np.uint64),
        ints(ldb),
        np.zeros(G, np.float32),
        np.ascontiguousarray(c, dtype=np.uint64),
        ints(ldc),
    ]
    ones = np.ones(G, np.int32)  # one GEMM per group: groups may differ in shape
    _routine()(_ROW_MAJOR, *(x.ctypes.data for x in arrays), G, ones.ctypes.data)


def _groups(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-empty experts, their row counts and their first rows."""
    used = np.flatnonzero(counts)
    starts = np.cumsum(counts) - counts
    return used, counts[used], starts[used]


def _forward(x_SD: torch.Tensor, w_EHD: torch.Tensor, counts: np.ndarray) -> torch.Tensor:
    S, D = x_SD.shape
    H = w_EHD.shape[1]
    y_SH = x_SD.new_empty(S, H)
    used, rows, starts = _groups(counts)
    _sgemm_batch(
        _NO_TRANS, _TRANS, rows, H, D,
        x_SD.data_ptr() + starts * (D * _F32), D,
        w_EHD.data_ptr() + used * (H * D * _F32), D,
        y_SH.data_ptr() + starts * (H * _F32), H,
    )  # fmt: skip
    return y_SH


class _GroupedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_SD, w_EHD, counts):
        ctx.save_for_backward(x_SD, w_EHD)
        ctx.counts = counts
        return _forward(x_SD, w_EHD, counts)

    @staticmethod
    def backward(ctx, grad_SH):
        x_SD, w_EHD = ctx.saved_tensors
        grad_SH = grad_SH.contiguous()
        (S, D), H = x_SD.shape, w_EHD.shape[1]
        used, rows, starts = _groups(ctx.counts)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:  # dx_e = dy_e · w_e
            grad_x = x_SD.new_empty(S, D)
            _sgemm_batch(
                _NO_TRANS, _NO_TRANS, rows, D, H,
                grad_SH.data_ptr() + starts * (H * _F32), H,
                w_EHD.data_ptr() + used * (H * D * _F32), D,
                grad_x.data_ptr() + starts * (D * _F32), D,
            )  # fmt: skip
        if ctx.needs_input_grad[1]:  # dw_e = dy_eᵀ · x_e; experts without rows get zeros
            grad_w = torch.zeros_like(w_EHD)
            _sgemm_batch(
                _TRANS, _NO_TRANS, H, D, rows,
                grad_SH.data_ptr() + starts * (H * _F32), H,
                x_SD.data_ptr() + starts * (D * _F32), D,
                grad_w.data_ptr() + used * (H * D * _F32), D,
            )  # fmt: skip
        return grad_x, grad_w, None


def grouped_linear(
    x_SD: torch.Tensor, w_EHD: torch.Tensor, counts_E: torch.Tensor | np.ndarray
) -> torch.Tensor:
    """``y[rows of e] = x[rows of e] @ w[e].T`` for consecutive row groups of sizes ``counts_E``.

    Callers check ``supported(x_SD, w_EHD)`` first. Inputs are made contiguous (the routine
    reads raw row-major memory); counts must sum to the number of rows.
    """
    counts = np.asarray(counts_E.tolist() if isinstance(counts_E, torch.Tensor) else counts_E)
    counts = counts.astype(np.int64)
    if (
        counts.shape != (w_EHD.shape[0],)
        or int(counts.sum()) != x_SD.shape[0]
        or (counts < 0).any()
    ):
        raise ValueError(
            f"counts must give each of the {w_EHD.shape[0]} experts a row count >= 0, summing "
            f"to the {x_SD.shape[0]} rows; got shape {counts.shape}, sum {int(counts.sum())}"
        )
    if x_SD.shape[1] != w_EHD.shape[2]:
        raise ValueError(f"x has {x_SD.shape[1]} columns but w takes {w_EHD.shape[2]} inputs")
    return _GroupedLinear.apply(x_SD.contiguous(), w_EHD.contiguous(), counts)
