"""Routed experts as stacked weights, run as one grouped GEMM (or a per-expert loop).

Weights use transformers 5.x's fused in-memory layout, so conversion to and from the
per-expert files on disk is a stack/split:

* ``gate_up_proj``: (E, 2F, D), rows [0, F) are the gate projection, [F, 2F) the up projection;
* ``down_proj``: (E, D, F), nn.Linear orientation, so ``y = h @ down_proj[e].T``.

``torch.nn.functional.grouped_mm`` (torch >= 2.10; ``torch._grouped_mm`` before) runs all
experts in one call on CPU and CUDA. It needs int32 cumulative offsets and 16-byte-aligned
row strides; when a shape or dtype doesn't allow it the loop runs instead, and tests check
the two give the same result. The loop is also the reference implementation.

``forward_gathered`` is the few-token path (decoding): on CPU ``grouped_mm`` visits every expert
even when most have no token, which costs more than the arithmetic when a step has a handful
of tokens. Copying just the selected experts' weights (``index_select``) and running one
batched matrix-vector product per assignment costs one small copy instead. The caller decides
when (``MoELayer``: no autograd, and only while the copy stays small).

Under torch.compile the grouped path traces with static shapes (S rows in and out whatever the
counts). grouped_mm's fake kernel accepts bf16 only (torch 2.13), so other dtypes go through
the ``moelab::grouped_mm`` custom op while compiling: the same kernel, with a fake kernel and
an autograd formula of our own (aten's two grouped GEMMs, bit-identical gradients). The loop
splits by ``.tolist()`` counts and stays out of compiled code (``torch.compiler.disable``).

Shapes: S sorted assignments, D hidden, F expert width, E experts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_grouped_mm = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)
_GROUPED_DTYPES = {torch.float32, torch.bfloat16, torch.float16}


def grouped_mm_supported(x: torch.Tensor, *widths: int) -> bool:
    """Whether one grouped GEMM can run for this input dtype and these row widths."""
    if _grouped_mm is None or x.dtype not in _GROUPED_DTYPES:
        return False
    if x.device.type == "cuda" and torch.cuda.get_device_capability(x.device)[0] < 8:
        return False
    return all((w * x.element_size()) % 16 == 0 for w in widths)


def grouped_swiglu(
    x_SD: torch.Tensor, gate_up_proj: torch.Tensor, down_proj: torch.Tensor, counts_E: torch.Tensor
) -> torch.Tensor:
    """Every expert's SwiGLU over its contiguous rows of x_SD: two grouped GEMMs.

    The shapes are static (S rows in, S rows out, whatever the counts), so this traces under
    torch.compile with no graph break (``_compilable_grouped_mm``).
    """
    mm = _compilable_grouped_mm if torch.compiler.is_compiling() else _grouped_mm
    offsets = torch.cumsum(counts_E, dim=0, dtype=torch.int32)
    w_up = gate_up_proj.to(x_SD.dtype).transpose(-2, -1)  # (E, D, 2F), a view
    h_S2F = mm(x_SD, w_up, offs=offsets)
    gate, up = h_S2F.chunk(2, dim=-1)
    h_SF = (F.silu(gate) * up).contiguous()
    w_down = down_proj.to(x_SD.dtype).transpose(-2, -1)  # (E, F, D)
    return mm(h_SF, w_down, offs=offsets)


def _compilable_grouped_mm(
    mat_a: torch.Tensor, mat_b: torch.Tensor, offs: torch.Tensor
) -> torch.Tensor:
    """grouped_mm for torch.compile: bf16 as is (inductor has a lowering); other dtypes
    through ``moelab::grouped_mm``, because grouped_mm's fake kernel accepts bf16 only
    (torch 2.13), although the CPU kernel runs fp32."""
    if mat_a.dtype == torch.bfloat16:
        return _grouped_mm(mat_a, mat_b, offs=offs)
    return grouped_mm_op(mat_a, mat_b, offs)


@torch.library.custom_op("moelab::grouped_mm", mutates_args=())
def grouped_mm_op(mat_a: torch.Tensor, mat_b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """``grouped_mm(mat_a, mat_b, offs=offs)`` as an opaque op: (S, K) × (E, K, N) → (S, N)
    (groups of rows), or (K, S) × (S, N) → (E, K, N) (groups along S, the weight gradient)."""
    return _grouped_mm(mat_a, mat_b, offs=offs)


@grouped_mm_op.register_fake
def _(mat_a: torch.Tensor, mat_b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    if mat_b.dim() == 3:
        return mat_a.new_empty(mat_a.shape[0], mat_b.shape[-1])
    return mat_a.new_empty(offs.shape[0], mat_a.shape[0], mat_b.shape[1])


def _grouped_mm_setup(ctx, inputs, output) -> None:
    mat_a, mat_b, offs = inputs
    ctx.save_for_backward(mat_a, mat_b, offs)


def _grouped_mm_backward(ctx, grad_SN: torch.Tensor):
    """The (S, K) × (E, K, N) case; the same two grouped GEMMs as aten's own backward, so
    the gradients are bit-identical to eager autograd (tests/model/test_experts.py)."""
    mat_a, mat_b, offs = ctx.saved_tensors
    grad_a = grouped_mm_op(grad_SN, mat_b.transpose(-2, -1), offs)
    grad_b = grouped_mm_op(mat_a.t(), grad_SN, offs)  # (E, K, N)
    return grad_a, grad_b, None


grouped_mm_op.register_autograd(_grouped_mm_backward, setup_context=_grouped_mm_setup)


class GroupedExperts(nn.Module):
    def __init__(self, num_experts: int, dim: int, hidden: int, impl: str = "grouped_mm"):
        super().__init__()
        self.num_experts, self.dim, self.hidden = num_experts, dim, hidden
        self.impl = impl
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, 2 * hidden, dim))
        self.down_proj = nn.Parameter(torch.empty(num_experts, dim, hidden))

    def forward(self, x_SD: torch.Tensor, tokens_per_expert_E: torch.Tensor) -> torch.Tensor:
        """x_SD holds each expert's tokens contiguously, in expert order, counts given per expert."""
        device_type = x_SD.device.type
        if torch.is_autocast_enabled(device_type):
            # grouped_mm is not autocast-aware: run it in the autocast dtype ourselves.
            x_SD = x_SD.to(torch.get_autocast_dtype(device_type))
        if self.impl == "grouped_mm" and grouped_mm_supported(
            x_SD, self.dim, 2 * self.hidden, self.hidden
        ):
            return self._forward_grouped(x_SD, tokens_per_expert_E)
        return self._forward_loop(x_SD, tokens_per_expert_E)

    def _forward_grouped(self, x_SD: torch.Tensor, counts_E: torch.Tensor) -> torch.Tensor:
        return grouped_swiglu(x_SD, self.gate_up_proj, self.down_proj, counts_E)

    def forward_gathered(self, x_TD: torch.Tensor, expert_ids_TK: torch.Tensor) -> torch.Tensor:
        """Each token through each of its K experts, unsorted: returns (T, K, D) expert outputs."""
        device_type = x_TD.device.type
        if torch.is_autocast_enabled(device_type):
            x_TD = x_TD.to(torch.get_autocast_dtype(device_type))
        T, K = expert_ids_TK.shape
        flat = expert_ids_TK.reshape(-1)
        w_up = self.gate_up_proj.index_select(0, flat)  # (S, 2F, D)
        w_down = self.down_proj.index_select(0, flat)  # (S, D, F)
        if w_up.dtype != x_TD.dtype:
            w_up, w_down = w_up.to(x_TD.dtype), w_down.to(x_TD.dtype)
        x_S1D = x_TD[:, None, None, :].expand(T, K, 1, self.dim).reshape(T * K, 1, self.dim)
        gate, up = torch.bmm(x_S1D, w_up.transpose(1, 2)).chunk(2, dim=-1)  # (S, 1, F) each
        y_S1D = torch.bmm(F.silu(gate) * up, w_down.transpose(1, 2))
        return y_S1D.view(T, K, self.dim)

    def gathered_numel(self, assignments: int) -> int:
        """Weight elements ``forward_gathered`` copies for this many (token, slot) assignments."""
        return assignments * 3 * self.hidden * self.dim

    @torch.compiler.disable(reason="per-expert split sizes are data-dependent (.tolist())")
    def _forward_loop(self, x_SD: torch.Tensor, counts_E: torch.Tensor) -> torch.Tensor:
        # Outputs are concatenated, not written into a preallocated tensor: slice assignment
        # makes autograd copy the whole gradient once per expert in the backward pass.
        # unbind (not [e]) so the backward stacks the weight gradients once, instead of
        # materialising a full-size zero gradient per expert.
        w_ups, w_downs = self.gate_up_proj.unbind(0), self.down_proj.unbind(0)
        outs = []
        for e, rows in enumerate(x_SD.split(counts_E.tolist())):
            if rows.shape[0] == 0:
                outs.append(rows.new_empty(0, self.dim))
                continue
            w_up, w_down = w_ups[e].to(rows.dtype), w_downs[e].to(rows.dtype)
            gate, up = F.linear(rows, w_up).chunk(2, dim=-1)
            outs.append(F.linear(F.silu(gate) * up, w_down))
        return torch.cat(outs)

    def extra_repr(self) -> str:
        return f"experts={self.num_experts}, dim={self.dim}, hidden={self.hidden}, impl={self.impl}"
