"""What a training step optimizes: the batch source and the loss, pluggable into the Trainer.

An ``Objective`` is the trainer's data source (iterable of micro batches, with
``state_dict``/``load_state_dict`` so checkpoints resume exactly) plus ``loss``, which runs the
model through the trainer's ``forward`` (device placement and autocast) and returns the main
loss, its metrics and the model output (whose router entries the trainer turns into the
balance losses and expert counts). Pretraining is ``PretrainObjective``; SFT and DPO
(moelab.posttrain) are others, so every stage shares one loop, optimizer, schedule,
checkpointing, resume, load balancing and logging.

``prepare_step`` (optional) sees all micro batches of one optimizer step before any is run,
for losses normalised over the whole step (SFT's mean over every trained token of the step).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from moelab.model.losses import cross_entropy
from moelab.model.transformer import ModelOutput

Forward = Callable[..., ModelOutput]
"""``forward(input_ids, *, model=None, **model_kwargs)``: the trainer's model call (or another model's)."""


@dataclass
class ObjectiveLoss:
    loss: torch.Tensor
    """The scalar the trainer backpropagates (before balance losses and 1/accum)."""
    output: ModelOutput
    """The policy model's output; its router entries feed the balance losses."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Extra per-micro-batch values, averaged over the step by the trainer."""


class Objective(Protocol):
    def __iter__(self) -> Iterator[Any]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def loss(self, forward: Forward, batch: Any) -> ObjectiveLoss: ...


class LoaderObjective:
    """An objective whose batches and resumable position are those of its loader, ``self.data``."""

    data: Any

    def __iter__(self):
        return iter(self.data)

    def state_dict(self) -> dict[str, Any]:
        return self.data.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.data.load_state_dict(state)


class PretrainObjective(LoaderObjective):
    """Next-token cross-entropy over token-shard rows; the state is the loader's.

    ``fused``: the model computes the loss from labels (head and loss fused, no logits).
    """

    def __init__(self, loader, fused: bool = False):
        self.data, self.fused = loader, fused

    def loss(self, forward: Forward, batch) -> ObjectiveLoss:
        if self.fused:
            out = forward(batch.inputs, labels=batch.targets)
            return ObjectiveLoss(out.loss, out)
        out = forward(batch.inputs)
        targets = batch.targets.to(out.logits.device, non_blocking=True)
        return ObjectiveLoss(cross_entropy(out.logits, targets), out)
