"""Pipeline parallelism with ``torch.distributed.pipelining``: stages cut from the block list.

A stage is a ``StageModule`` holding a contiguous run of blocks (plus the embedding on the first
stage and the final norm and lm_head on the last) that maps one tensor to one tensor, as the
pipelining runtime requires. Router outputs cannot cross stage boundaries, so each stage keeps
the expert counts of its MoE layers for the bias update and metrics.

Schedules are chosen by name (``1F1B``, ``Interleaved1F1B`` as in dots.llm1, ``ZBVZeroBubble``,
``DualPipeV``, ``GPipe``, ...). Multi-stage schedules place two or more stages per rank: looped
(stage s on rank s mod pp) or, for the V schedules, rank r holds stages r and 2·pp−1−r.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.distributed.pipelining import PipelineStage
from torch.distributed.pipelining.schedules import PipelineScheduleSingle, get_schedule_class

from moelab.model.transformer import MoETransformer

V_SCHEDULES = {"ZBVZeroBubble", "DualPipeV"}


class StageModule(nn.Module):
    def __init__(self, model: MoETransformer, layer_ids: list[int], first: bool, last: bool):
        super().__init__()
        self.embed_tokens = model.embed_tokens if first else None
        self.layers = nn.ModuleDict({str(i): model.layers[str(i)] for i in layer_ids})
        self.norm = model.norm if last else None
        self.lm_head = model.lm_head if last else None
        self.rotary = model.rotary
        self.expert_counts: dict[int, torch.Tensor] = {}
        """Tokens per expert of each MoE layer here, summed since the last reset (no gradient)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed_tokens(x) if self.embed_tokens is not None else x
        B, T = h.shape[:2]
        positions = torch.arange(T, device=h.device).expand(B, T)
        dtype = (
            torch.get_autocast_dtype(h.device.type)
            if torch.is_autocast_enabled(h.device.type)
            else h.dtype
        )
        rope = self.rotary(positions, dtype)
        for block in self.layers.values():
            h, routing = block(h, rope, positions)
            if routing is not None:
                counts = routing.tokens_per_expert_E.detach()
                prev = self.expert_counts.get(block.layer_idx)
                self.expert_counts[block.layer_idx] = counts if prev is None else prev + counts
        if self.lm_head is not None:
            h = self.lm_head(self.norm(h))
        return h


def stage_layout(schedule: str, pp: int, stages_per_rank: int) -> list[list[int]]:
    """Stage indices held by each rank."""
    single = issubclass(get_schedule_class(schedule), PipelineScheduleSingle)
    if single:
        return [[r] for r in range(pp)]
    if stages_per_rank < 2:
        raise ValueError(f"schedule {schedule} needs at least 2 stages per rank")
    if schedule in V_SCHEDULES:
        if stages_per_rank != 2:
            raise ValueError(f"{schedule} places exactly 2 stages per rank (a V)")
        return [[r, 2 * pp - 1 - r] for r in range(pp)]
    return [[r + k * pp for k in range(stages_per_rank)] for r in range(pp)]


def split_layers(num_layers: int, num_stages: int) -> list[list[int]]:
    """Contiguous, as even as possible; earlier stages get the extra layer."""
    if num_stages > num_layers:
        raise ValueError(f"{num_stages} pipeline stages but only {num_layers} layers")
    base, extra = divmod(num_layers, num_stages)
    out, start = [], 0
    for s in range(num_stages):
        n = base + (1 if s < extra else 0)
        out.append(list(range(start, start + n)))
        start += n
    return out


def build_pipeline(
    model: MoETransformer,
    *,
    schedule: str,
    pp_rank: int,
    pp_size: int,
    group,
    device: torch.device,
    n_microbatches: int,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    stages_per_rank: int = 2,
):
    """This rank's stage modules and the schedule object that runs them."""
    layout = stage_layout(schedule, pp_size, stages_per_rank)
    num_stages = sum(len(s) for s in layout)
    layers = split_layers(model.config.num_layers, num_stages)
    modules, stages = [], []
    for idx in layout[pp_rank]:
        mod = StageModule(model, layers[idx], first=idx == 0, last=idx == num_stages - 1)
        modules.append(mod)
        stages.append(PipelineStage(mod, idx, num_stages, device, group=group))
    cls = get_schedule_class(schedule)
    if issubclass(cls, PipelineScheduleSingle):
        sched = cls(stages[0], n_microbatches=n_microbatches, loss_fn=loss_fn)
    else:
        sched = cls(stages, n_microbatches=n_microbatches, loss_fn=loss_fn)
    return modules, sched
