"""Pipeline parallelism with ``torch.distributed.pipelining``: stages cut from the block list.

A stage is a ``StageModule`` holding a contiguous run of blocks (plus the embedding on the first
stage and the final norm and lm_head on the last) that maps one tensor to one tensor, as the
pipelining runtime requires. Router outputs cannot cross stage boundaries, so each stage keeps
the expert counts of its MoE layers for the bias update and metrics.

MoE auxiliary losses (LB, z, sequence-wise) are added *per stage*: the pipelining runtime only
carries one tensor between stages and computes the loss on the last, so a stage computes its
layers' share of each loss (the loss of its layers × their count / all MoE layers, so shares sum
to the single-device mean over layers) and attaches it to its output with ``_AttachAux``, an
identity whose backward also sends gradient 1 into the share (Megatron's MoEAuxLossAutoScaler).
The detached shares are summed for logging.

Schedules are chosen by name (``1F1B``, ``Interleaved1F1B`` as in dots.llm1, ``ZBVZeroBubble``,
``DualPipeV``, ``GPipe``, ...); with ``overlap_f_b`` DualPipeV runs each of its overlapped
forward/backward pairs at the same time (``moelab.parallel.overlap_f_b``). Multi-stage schedules place two or more stages per rank: looped
(stage s on rank s mod pp) or, for the V schedules, rank r holds stages r and 2·pp−1−r.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.distributed.pipelining import PipelineStage
from torch.distributed.pipelining.schedules import (
    PipelineScheduleSingle,
    _ComputationType,
    get_schedule_class,
)
from torch.utils.checkpoint import GraphExecGroup

from moelab.model.transformer import MoETransformer

V_SCHEDULES = {"ZBVZeroBubble", "DualPipeV"}


class _AttachAux(torch.autograd.Function):
    """Identity on ``h``; in the backward, gradient 1 flows into ``aux`` as well."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
        ctx.aux_shape, ctx.aux_dtype = aux.shape, aux.dtype
        return h.clone()  # not a view: zero-bubble schedules detach_() stage outputs

    @staticmethod
    def backward(ctx, grad_h: torch.Tensor):
        return grad_h, torch.ones(ctx.aux_shape, dtype=ctx.aux_dtype, device=grad_h.device)


AuxLossFn = Callable[[list, int], tuple[torch.Tensor, dict[str, torch.Tensor]]]
"""(this stage's router outputs, batch size) -> (share of the weighted aux loss, detached parts)."""


class StageModule(nn.Module):
    def __init__(
        self,
        model: MoETransformer,
        layer_ids: list[int],
        first: bool,
        last: bool,
        aux_loss_fn: AuxLossFn | None = None,
    ):
        super().__init__()
        self.embed_tokens = model.embed_tokens if first else None
        self.layers = nn.ModuleDict({str(i): model.layers[str(i)] for i in layer_ids})
        self.norm = model.norm if last else None
        self.lm_head = model.lm_head if last else None
        self.rotary = model.rotary
        self.aux_loss_fn = aux_loss_fn
        self.records: list[tuple[dict[int, torch.Tensor], dict[str, torch.Tensor]]] = []
        """Per forward call since the last reset: (expert counts per MoE layer, aux-loss shares)."""

    def reset_stats(self) -> None:
        self.records = []

    def stats(self, last: int | None = None):
        """Expert counts per layer and aux-loss shares summed over the ``last`` forward calls.

        The runtime's first step also runs each stage once on placeholder tensors to infer
        shapes; counting only the last ``n_microbatches`` calls leaves that one out.
        """
        counts: dict[int, torch.Tensor] = {}
        parts: dict[str, torch.Tensor] = {}
        for c, p in self.records[-last:] if last else self.records:
            for k, v in c.items():
                counts[k] = counts[k] + v if k in counts else v
            for k, v in p.items():
                parts[k] = parts[k] + v if k in parts else v
        return counts, parts

    @property
    def expert_counts(self) -> dict[int, torch.Tensor]:
        return self.stats()[0]

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
        routings, counts, parts = [], {}, {}
        for block in self.layers.values():
            h, routing = block(h, rope, positions)
            if routing is not None:
                routings.append(routing)
                counts[block.layer_idx] = routing.tokens_per_expert_E.detach()
        if self.aux_loss_fn is not None and routings:
            aux, parts = self.aux_loss_fn(routings, B)
            if aux.requires_grad and torch.is_grad_enabled():
                h = _AttachAux.apply(h, aux)
        self.records.append((counts, parts))
        if self.lm_head is not None:
            h = self.lm_head(self.norm(h))
        return h


def splits_backward(schedule: str) -> bool:
    """Whether ``schedule`` splits each backward into input- and weight-gradient passes
    (zero bubble: ZBVZeroBubble, InterleavedZeroBubble, DualPipeV).

    FSDP inside such stages must keep parameters unsharded from forward to backward
    (``reshard_after_forward=False``). The weight-gradient pass runs as a separate autograd call
    after the input-gradient pass; with resharding (cause not traced further) a 4-rank
    ZBV × EP × FSDP run got wrong gradients from the first step (norm 0.88 against the single
    process's 1.17; losses 0.4 apart after 6 steps).
    """
    return get_schedule_class(schedule).__name__ in _SPLIT_BACKWARD


_SPLIT_BACKWARD = {"ScheduleZBVZeroBubble", "ScheduleInterleavedZeroBubble", "ScheduleDualPipeV"}


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


def build_stage_modules(
    model: MoETransformer,
    *,
    schedule: str,
    pp_rank: int,
    pp_size: int,
    stages_per_rank: int = 2,
    aux_loss_fn: AuxLossFn | None = None,
) -> tuple[list[StageModule], list[int], int]:
    """This rank's stage modules, their stage indices, and the total number of stages."""
    layout = stage_layout(schedule, pp_size, stages_per_rank)
    num_stages = sum(len(s) for s in layout)
    layers = split_layers(model.config.num_layers, num_stages)
    modules = [
        StageModule(
            model, layers[idx], first=idx == 0, last=idx == num_stages - 1, aux_loss_fn=aux_loss_fn
        )
        for idx in layout[pp_rank]
    ]
    return modules, layout[pp_rank], num_stages


class Stage(PipelineStage):
    """``PipelineStage`` whose weight-gradient pass (split-backward schedules) recomputes each
    checkpointed block once.

    torch runs that pass as one ``autograd.grad`` per parameter group (about one per weight
    matrix), and non-reentrant checkpointing recomputes once per autograd call: a block was
    recomputed 14 times in its weight pass (tests' 4-block model), and each call's unused
    recomputed tensors stayed alive until the micro batch's graph was freed
    (``benchmarks/ac_split_backward.py``: weight pass 10x slower, its peak memory 9x higher).
    ``GraphExecGroup`` (torch's API for split
    backwards) makes the calls share one recompute; it requires that they use disjoint saved
    tensors, which holds because each parameter group runs only its own nodes (a violation
    fails loudly: "Unpack is being triggered for a tensor that was already unpacked once").
    The input pass stays a graph task of its own (its nodes are re-run by the weight pass),
    so a checkpointed block runs 3 times per micro batch: forward, input pass, weight pass.
    No effect without checkpointing. The group is thread-local (``overlap_f_b`` threads).
    """

    def backward_weight_one_chunk(self, bwd_chunk_id: int, last_backward: bool = False) -> None:
        with GraphExecGroup():
            super().backward_weight_one_chunk(bwd_chunk_id, last_backward=last_backward)


def build_schedule(
    modules: list[nn.Module],
    stage_ids: list[int],
    num_stages: int,
    *,
    schedule: str,
    group,
    device: torch.device,
    n_microbatches: int,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    overlap_f_b: bool = False,
):
    """The schedule object running ``modules`` (FSDP-wrapped stage modules are fine).

    ``overlap_f_b``: run each OVERLAP_F_B action's forward and backward at the same time
    (``moelab.parallel.overlap_f_b``); only for schedules that emit such actions (DualPipeV).
    """
    stages = [
        Stage(mod, idx, num_stages, device, group=group)
        for mod, idx in zip(modules, stage_ids, strict=True)
    ]
    cls = get_schedule_class(schedule)
    if issubclass(cls, PipelineScheduleSingle):
        sched = cls(stages[0], n_microbatches=n_microbatches, loss_fn=loss_fn)
    else:
        sched = cls(stages, n_microbatches=n_microbatches, loss_fn=loss_fn)
    if overlap_f_b:
        _register_overlap_f_b(sched, schedule)
    return sched


OVERLAP_F_B_SCHEDULES = {"DualPipeV"}
"""Schedules (torch 2.13) that emit OVERLAP_F_B actions: a forward and a backward of two micro
batches that may run at the same time."""


def emits_overlap_f_b(schedule: str) -> bool:
    return get_schedule_class(schedule) in {get_schedule_class(s) for s in OVERLAP_F_B_SCHEDULES}


def _register_overlap_f_b(sched, schedule: str) -> None:
    from moelab.parallel.overlap_f_b import make_overlap_f_b

    orders = getattr(sched, "pipeline_order", None) or {}
    found = any(
        a is not None and a.computation_type == _ComputationType.OVERLAP_F_B
        for actions in orders.values()
        for a in actions
    )
    if not (hasattr(sched, "register_custom_function") and found):
        raise ValueError(
            f"pipeline schedule {schedule} emits no OVERLAP_F_B actions, so overlap_f_b has "
            f"nothing to overlap; use one of {sorted(OVERLAP_F_B_SCHEDULES)}"
        )
    sched.register_custom_function(_ComputationType.OVERLAP_F_B, make_overlap_f_b())


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
    aux_loss_fn: AuxLossFn | None = None,
    overlap_f_b: bool = False,
):
    """This rank's stage modules and the schedule object that runs them."""
    modules, stage_ids, num_stages = build_stage_modules(
        model,
        schedule=schedule,
        pp_rank=pp_rank,
        pp_size=pp_size,
        stages_per_rank=stages_per_rank,
        aux_loss_fn=aux_loss_fn,
    )
    sched = build_schedule(
        modules,
        stage_ids,
        num_stages,
        schedule=schedule,
        group=group,
        device=device,
        n_microbatches=n_microbatches,
        loss_fn=loss_fn,
        overlap_f_b=overlap_f_b,
    )
    return modules, sched
