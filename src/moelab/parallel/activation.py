"""Activation checkpointing applied from outside the model, block by block.

Each chosen block's ``forward`` is replaced, on that instance only, by one that runs the class's
forward under ``torch.utils.checkpoint.checkpoint(use_reentrant=False)``: the block keeps no
activations and is recomputed in the backward. No wrapper module is added (unlike
``checkpoint_wrapper``), so parameter names, state dicts, FSDP2 and DCP checkpoints are
unchanged; the block's own hooks (FSDP2's all-gather) run once around the checkpointed forward,
as with ``checkpoint_wrapper``. Apply before FSDP (as torchtitan does).

Why not ``torch.distributed._composable.checkpoint`` (used before): it builds the recompute
context (a ``contextlib.contextmanager`` object, usable once) once per forward, while
non-reentrant checkpointing recomputes once per autograd graph task. Zero-bubble pipeline
schedules (ZBVZeroBubble, InterleavedZeroBubble, DualPipeV: ``pipeline.splits_backward``) run
the input-gradient and the weight-gradient passes as two ``autograd.grad`` calls, so the block is
recomputed twice and the second entry failed ("'_GeneratorContextManager' object has no
attribute 'args'"). ``checkpoint``'s default contexts can be entered any number of times.
(``GraphExecGroup``, which would share one recompute between the passes, requires them to use
disjoint saved tensors; the weight pass restarts at nodes the input pass already ran.)

Cost with a split backward: each checkpointed block is recomputed twice per micro batch (input
pass and weight pass), one forward more than with a joint backward.

Modes: ``none``; ``full`` (every block); ``selective`` (blocks 0, n, 2n, ...: a memory/compute
trade-off between the two). Every recompute repeats the routing exactly, because the expert bias
only changes after the optimizer step.
"""

from __future__ import annotations

import types
from typing import Any

from torch import nn
from torch.utils.checkpoint import checkpoint

AC_MODES = ("none", "full", "selective")
_MARK = "_moelab_activation_checkpoint"


def _checkpointed_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    # The class's forward, not self.forward (that is this function): the recompute runs the
    # same code without the module's hooks, which ran once around the whole call.
    return checkpoint(type(self).forward, self, *args, use_reentrant=False, **kwargs)


def checkpoint_module(module: nn.Module) -> None:
    """Recompute ``module``'s forward in the backward. A bound method (not a closure), so
    ``copy.deepcopy`` of the model gives copies that checkpoint themselves."""
    module.forward = types.MethodType(_checkpointed_forward, module)
    setattr(module, _MARK, True)


def is_checkpointed(module: nn.Module) -> bool:
    return getattr(module, _MARK, False)


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
            checkpoint_module(block)
            chosen.append(name)
    return chosen
