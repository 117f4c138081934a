"""torch.compile applied from outside the model: per transformer block (regional) or whole.

``blocks`` (the usual choice, as torchtitan does): each block's ``forward`` is compiled. All
blocks of one kind share one graph, because parameters are graph inputs
(``inline_inbuilt_nn_modules``), so compile time is that of one or two blocks (dots.llm1's
dense first layer is the second kind), not of the model. The embedding, the LM head and the
loss stay eager.
``model``: the model's whole ``forward`` (embedding, blocks, final norm, head and fused loss)
as one compiled frame; one process only.

The forward method is compiled, not ``__call__``: FSDP's hooks stay outside the compiled
region, and no wrapper module is added, so parameter names, state dicts and checkpoints are
unchanged. Apply after activation checkpointing and before FSDP (torchtitan's order). The
compiled forward is whatever forward checkpointing left: with hooks, compiled code runs inside
them; with a replaced forward that calls ``torch.utils.checkpoint``, dynamo traces the
checkpointed region and AOTAutograd recomputes it (torchtitan's compile(AC(block))). Compile
last: a deep copy of a compiled block would still call the original's forward.

Under expert parallelism, an MoE block is compiled in parts: everything but the all-to-all
dispatch and the experts (``_regions``).

Graph breaks in one MoE block: none (``torch._dynamo.explain``; tests/train/test_compile.py).
Routing is data-dependent only in values, never in shapes: the sort, the per-expert counts and
the grouped GEMM all keep S = T·K rows whatever the counts, so routing changes from step to
step do not recompile. What would break the graph: the per-expert loop experts
(``model.moe.dispatch=loop``, ``.tolist()`` split sizes; kept eager on purpose), and, in fp32,
grouped_mm's fake kernel, which accepts bf16 only in torch 2.13 (``model.experts`` routes it
through the ``moelab::grouped_mm`` custom op while compiling).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from moelab.model.dispatch import LocalDispatcher

CompileMode = Literal["none", "blocks", "model"]
COMPILE_MODES = ("none", "blocks", "model")


def apply_compile(
    model: nn.Module, mode: str, backend: str = "inductor", fullgraph: bool = True
) -> list[str]:
    """Compile ``model``'s blocks (``blocks``) or its whole forward (``model``) in place.

    Returns the names of what was compiled. ``fullgraph=True`` turns any graph break inside a
    block into an error instead of a silent slowdown, except in blocks whose experts run the
    per-expert loop (``model.moe.dispatch=loop``), which break by design. ``model`` mode allows
    breaks (it traces whole too with grouped experts: one graph, tests/train/test_compile.py).
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode {mode!r}; choose one of {COMPILE_MODES}")
    if mode == "none":
        return []
    if mode == "model":
        model.forward = torch.compile(model.forward, backend=backend)
        return ["model"]
    compiled = []
    for name, block in model.layers.items():
        for part, module in _regions(block):
            whole = fullgraph and not _loop_experts(block)
            module.forward = torch.compile(module.forward, backend=backend, fullgraph=whole)
            compiled.append(f"{name}.{part}" if part else name)
    return compiled


def _loop_experts(block: nn.Module) -> bool:
    """Whether the block's experts split tokens by ``.tolist()`` counts (graph breaks)."""
    return getattr(block, "is_moe", False) and block.mlp.experts.impl != "grouped_mm"


def _regions(block: nn.Module) -> list[tuple[str, nn.Module]]:
    """What to compile in one block: the whole block, or, when expert parallelism swapped in
    its all-to-all dispatcher (async collectives whose split sizes come from the counts, which
    dynamo cannot trace), every part of the block except the dispatch and the experts
    (torchtitan leaves the experts out the same way)."""
    mlp = getattr(block, "mlp", None)
    if not getattr(block, "is_moe", False) or type(mlp.dispatcher) is LocalDispatcher:
        return [("", block)]
    names = ["input_layernorm", "self_attn", "post_attention_layernorm", "mlp.gate"]
    if mlp.shared_experts is not None:
        names.append("mlp.shared_experts")
    return [(n, block.get_submodule(n)) for n in names]
