"""Activation checkpointing applied from outside the model, block by block.

``torch.distributed._composable.checkpoint`` marks a module so its forward runs without keeping
activations and is recomputed in the backward (non-reentrant ``torch.utils.checkpoint``). Unlike
``checkpoint_wrapper`` it adds no wrapper module, so parameter names, state dicts, FSDP2 and
DCP checkpoints are unchanged. Apply before FSDP (as torchtitan does).

Modes: ``none``; ``full`` (every block); ``selective`` (blocks 0, n, 2n, ...: a memory/compute
trade-off between the two). The recomputed forward repeats the routing exactly, because the
expert bias only changes after the optimizer step.
"""

from __future__ import annotations

from torch import nn
from torch.distributed._composable import checkpoint

AC_MODES = ("none", "full", "selective")


def apply_activation_checkpointing(model: nn.Module, mode: str, every: int = 2) -> list[str]:
    """Checkpoint the chosen blocks of ``model.layers``; returns their names."""
    if mode not in AC_MODES:
        raise ValueError(f"activation checkpointing mode {mode!r}; choose one of {AC_MODES}")
    if every < 1:
        raise ValueError(f"ac_every must be >= 1, got {every}")
    if mode == "none":
        return []
    chosen = []
    for position, (name, block) in enumerate(model.layers.items()):
        if mode == "full" or position % every == 0:
            checkpoint(block)
            chosen.append(name)
    return chosen
