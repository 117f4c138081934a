"""What the trainer needs when torchrun starts it: mesh, FSDP2, data-parallel rank, reductions.

Today's scope: data parallelism by FSDP2 (``parallel.dp_shard``) and HSDP (``dp_replicate``).
Expert and pipeline parallelism exist in ``moelab.parallel`` and are tested there, but the
trainer refuses them until their checkpointing and gradient clipping are wired in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from moelab.config import ConfigError
from moelab.parallel.dims import ParallelDims
from moelab.parallel.env import init_distributed, is_distributed, world_size
from moelab.parallel.fsdp import apply_fsdp


@dataclass
class DistContext:
    enabled: bool
    device: torch.device
    dp_rank: int = 0
    dp_size: int = 1
    rank: int = 0
    dp_group: dist.ProcessGroup | None = None
    fsdp_mesh: object | None = None
    """The mesh FSDP shards over: 1-D dp_shard, or 2-D (dp_replicate, dp_shard) for HSDP."""

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """In-place sum over the data-parallel group (no-op in one process)."""
        if self.enabled:
            dist.all_reduce(tensor, group=self.dp_group)
        return tensor

    def mean(self, value: float) -> float:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, group=self.dp_group)
        return t.item() / self.dp_size


def setup(dims: ParallelDims, device: str, num_experts: int) -> DistContext:
    if not is_distributed():
        return DistContext(False, torch.device(device))
    dev = init_distributed(torch.device(device).type)
    resolved = dims.resolve(world_size(), num_experts)
    if resolved.ep > 1 or resolved.pp > 1:
        raise ConfigError(
            "parallel",
            "moelab train supports dp_shard/dp_replicate so far; ep and pp are not wired into the trainer yet",
        )
    meshes = resolved.build_mesh(dev.type)
    dp_mesh, fsdp_mesh = meshes["dp"], meshes["fsdp"]
    return DistContext(
        True,
        dev,
        dp_mesh.get_local_rank(),
        dp_mesh.size(),
        dist.get_rank(),
        dp_mesh.get_group(),
        fsdp_mesh,
    )


def shard_model(model: torch.nn.Module, ctx: DistContext, param_dtype=None) -> None:
    """FSDP2 over the data-parallel ranks (HSDP when dp_replicate > 1)."""
    if ctx.enabled:
        apply_fsdp(model, ctx.fsdp_mesh, param_dtype=param_dtype)
