"""One pipeline-parallel optimizer step's forward and backward, for the trainer.

``PipelineRunner`` owns this rank's part of the model: at construction it deletes the blocks
(and the embedding / final norm / lm_head) that live on other pipeline ranks, so the optimizer,
DCP checkpoints and the bias update see only local parameters under their single-device names.
Each step splits the global batch into micro batches, runs the schedule, and returns what the
single-device trainer computes: mean cross-entropy, mean aux-loss parts, the expert counts of
every MoE layer (summed over the ``pp`` group: rows of other ranks' layers arrive by all-reduce,
and over the data-parallel group when pipelines are replicated).

Schedules are built lazily per micro-batch count (the batch-size ramp changes it) and cached.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from moelab.model.losses import cross_entropy
from moelab.model.moe import MoELayer
from moelab.model.transformer import MoETransformer
from moelab.parallel.pipeline import (
    AuxLossFn,
    build_schedule,
    build_stage_modules,
    splits_backward,
)


def _ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return cross_entropy(logits, targets)


class PipelineRunner:
    def __init__(
        self,
        model: MoETransformer,
        *,
        schedule: str,
        pp_rank: int,
        pp_size: int,
        group: dist.ProcessGroup,
        device: torch.device,
        stages_per_rank: int,
        aux_loss_fn: AuxLossFn | None,
        part_names: list[str],
        dp_group: dist.ProcessGroup | None = None,
        overlap_f_b: bool = False,
    ):
        if model.config.tie_word_embeddings:
            raise ValueError(
                "pipeline parallelism with tie_word_embeddings is not supported: the embedding "
                "and lm_head live on different stages"
            )
        self.model, self.schedule_name = model, schedule
        self.pp_rank, self.pp_size, self.group, self.device = pp_rank, pp_size, group, device
        self.stages_per_rank, self.aux_loss_fn = stages_per_rank, aux_loss_fn
        self.part_names, self.dp_group = part_names, dp_group
        self.overlap_f_b = overlap_f_b
        self.dp_size = dist.get_world_size(dp_group) if dp_group is not None else 1
        self.moe_layer_ids = [
            int(name) for name, b in model.layers.items() if isinstance(b.mlp, MoELayer)
        ]
        self.modules, self.stage_ids, self.num_stages = build_stage_modules(
            model,
            schedule=schedule,
            pp_rank=pp_rank,
            pp_size=pp_size,
            stages_per_rank=stages_per_rank,
            aux_loss_fn=aux_loss_fn,
        )
        self.local_layers = sorted(int(i) for m in self.modules for i in m.layers.keys())
        self.is_first, self.is_last = 0 in self.stage_ids, self.num_stages - 1 in self.stage_ids
        for name in list(model.layers.keys()):
            if int(name) not in self.local_layers:
                del model.layers[name]
        if not self.is_first:
            model.embed_tokens = None
        if not self.is_last:
            model.norm, model.lm_head = None, None
        self._cache: dict[int, object] = {}

    def shard(self, mesh, **fsdp_kw) -> None:
        """FSDP2 inside each stage (blocks, then the stage as root) over the data-parallel mesh;
        the pipelining runtime then delays the reduce-scatter to the last micro batch.

        Zero-bubble schedules keep the parameters unsharded after the forward (``splits_backward``).
        """
        from torch.distributed.fsdp import fully_shard

        fsdp_kw.setdefault("reshard_after_forward", not splits_backward(self.schedule_name))
        for stage in self.modules:
            for block in stage.layers.values():
                fully_shard(block, mesh=mesh, **fsdp_kw)
            fully_shard(stage, mesh=mesh, **fsdp_kw)

    def _pipeline(self, n_microbatches: int):
        if n_microbatches not in self._cache:
            self._cache[n_microbatches] = build_schedule(
                self.modules,
                self.stage_ids,
                self.num_stages,
                schedule=self.schedule_name,
                group=self.group,
                device=self.device,
                n_microbatches=n_microbatches,
                loss_fn=_ce,
                overlap_f_b=self.overlap_f_b,
            )
        return self.modules, self._cache[n_microbatches]

    def step(self, inputs: torch.Tensor, targets: torch.Tensor, n_microbatches: int):
        """Forward+backward of one global batch; returns (ce, parts, counts_all, counts_local).

        ``counts_all`` has one row per MoE layer of the whole model; ``counts_local`` the rows
        of this rank's layers, in the order of its routers (for the bias update).
        """
        modules, sched = self._pipeline(n_microbatches)
        for m in modules:
            m.reset_stats()
        losses: list[torch.Tensor] = []
        sched.step(
            inputs.to(self.device) if self.is_first else None,
            target=targets.to(self.device) if self.is_last else None,
            losses=losses,
        )
        stats = torch.zeros(1 + len(self.part_names), dtype=torch.float64, device=self.device)
        if self.is_last:
            stats[0] = sum(loss.detach().double() for loss in losses)
        per_module = [m.stats(last=n_microbatches) for m in modules]
        for _, aux_parts in per_module:
            for i, name in enumerate(self.part_names):
                if name in aux_parts:
                    stats[1 + i] += aux_parts[name].double()
        dist.all_reduce(stats, group=self.group)
        if self.dp_size > 1:
            dist.all_reduce(stats, group=self.dp_group)
        stats /= n_microbatches * self.dp_size
        parts = {name: stats[1 + i].item() for i, name in enumerate(self.part_names)}
        counts_all = counts_local = None
        if self.moe_layer_ids:
            E = self.model.config.moe.num_experts
            counts_all = torch.zeros(len(self.moe_layer_ids), E, dtype=torch.int64)
            counts_all = counts_all.to(self.device)
            for expert_counts, _ in per_module:
                for layer, c in expert_counts.items():
                    counts_all[self.moe_layer_ids.index(layer)] += c
            dist.all_reduce(counts_all, group=self.group)
            if self.dp_size > 1:  # the whole global batch, once per step
                dist.all_reduce(counts_all, group=self.dp_group)
            rows = [
                self.moe_layer_ids.index(i) for i in self.local_layers if i in self.moe_layer_ids
            ]
            counts_local = counts_all[rows]
        return stats[0].item(), parts, counts_all, counts_local
