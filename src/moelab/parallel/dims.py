"""Parallel dimensions: pure validation against the world size, then the DeviceMesh.

Layout (outermost first): ``pp × dp_replicate × dp_shard``. Expert parallelism borrows from the
sharded data-parallel dimension (as in torchtitan): ``dp_shard = dp_shard_mod_ep × ep``, so the
EP ranks of one expert group also hold different data. Non-expert weights are FSDP-sharded over
``dp_shard``; expert weights are split over ``ep`` and FSDP-sharded over ``dp_shard_mod_ep``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from moelab.config import Config, ConfigError


@dataclass
class ParallelDims(Config):
    dp_replicate: int = 1
    """HSDP replicas (1 = plain FSDP)."""
    dp_shard: int = -1
    """FSDP shard group size; -1 = whatever the world size leaves."""
    ep: int = 1
    """Expert-parallel degree; must divide dp_shard and the number of experts."""
    ep_overlap_chunks: int = 1
    """Pieces each MoE layer's tokens are split into so one piece's all-to-all overlaps
    another piece's expert compute, in the forward and the backward; 1 = no overlap. Only with
    ep > 1."""
    pp: int = 1
    """Pipeline ranks (stages = pp × stages per rank of the schedule)."""
    pp_schedule: str = "1F1B"
    """A ``torch.distributed.pipelining`` schedule by name: 1F1B, GPipe, Interleaved1F1B, ..."""
    pp_stages_per_rank: int = 2
    """Stages per rank for multi-stage schedules (Interleaved1F1B, LoopedBFS); 1F1B/GPipe use 1."""
    pp_overlap_f_b: bool = False
    """Run each overlapped forward/backward pair of the schedule (DualPipeV's OVERLAP_F_B: one
    micro batch's forward, another's backward) at the same time, in two threads, so the MoE
    all-to-alls of one hide under the other's compute (dots.llm1's schedule-level overlap).
    The backward's all-to-alls get a second EP group. Needs pp > 1, ep > 1 and a schedule that
    emits OVERLAP_F_B (DualPipeV); off = the runtime runs the pair one after the other."""
    activation_checkpoint: Literal["none", "full", "selective"] = "none"
    """Recompute blocks in the backward: none, every block (full), or every ``ac_every``-th.
    Works with every pipeline schedule, zero-bubble ones included (``parallel.activation``)."""
    ac_every: int = 2
    """selective: checkpoint blocks 0, n, 2n, ... (applies in one process too)."""

    def validate(self, path: str) -> None:
        for name in (
            "dp_replicate",
            "ep",
            "ep_overlap_chunks",
            "pp",
            "pp_stages_per_rank",
            "ac_every",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"{path}.{name}" if path else name, f"must be >= 1, got {getattr(self, name)}"
                )
        if self.pp > 1:
            from torch.distributed.pipelining.schedules import get_schedule_class

            try:
                get_schedule_class(self.pp_schedule)
            except ValueError as err:
                raise ConfigError(
                    f"{path}.pp_schedule" if path else "pp_schedule", str(err)
                ) from None
        if self.pp_overlap_f_b:
            self._validate_overlap_f_b(path)
        if self.dp_shard == 0 or self.dp_shard < -1:
            raise ConfigError(
                f"{path}.dp_shard" if path else "dp_shard",
                f"must be -1 or >= 1, got {self.dp_shard}",
            )

    def _validate_overlap_f_b(self, path: str) -> None:
        from moelab.parallel.pipeline import OVERLAP_F_B_SCHEDULES, emits_overlap_f_b

        name = f"{path}.pp_overlap_f_b" if path else "pp_overlap_f_b"
        if self.pp < 2 or self.ep < 2:
            raise ConfigError(
                name,
                f"overlaps MoE all-to-alls across pipeline micro batches: needs pp > 1 and "
                f"ep > 1, got pp={self.pp}, ep={self.ep}",
            )
        if not emits_overlap_f_b(self.pp_schedule):
            raise ConfigError(
                name,
                f"schedule {self.pp_schedule} emits no OVERLAP_F_B actions (forward/backward "
                f"pairs to overlap); use pp_schedule in {sorted(OVERLAP_F_B_SCHEDULES)}",
            )

    def resolve(self, world_size: int, num_experts: int | None = None) -> ParallelDims:
        """Fill dp_shard = -1 and check every product against the world size."""
        fixed = self.dp_replicate * self.pp
        dp_shard = self.dp_shard
        if dp_shard == -1:
            if world_size % fixed:
                raise ConfigError(
                    "parallel",
                    f"world size {world_size} is not divisible by dp_replicate × pp = {fixed}",
                )
            dp_shard = world_size // fixed
        if fixed * dp_shard != world_size:
            raise ConfigError(
                "parallel",
                f"pp ({self.pp}) × dp_replicate ({self.dp_replicate}) × dp_shard ({dp_shard}) = "
                f"{fixed * dp_shard}, but the world size is {world_size}",
            )
        if dp_shard % self.ep:
            raise ConfigError("parallel.ep", f"({self.ep}) must divide dp_shard ({dp_shard})")
        if num_experts is not None and num_experts % self.ep:
            raise ConfigError(
                "parallel.ep", f"({self.ep}) must divide the number of experts ({num_experts})"
            )
        return replace(self, dp_shard=dp_shard)

    @property
    def dp_shard_mod_ep(self) -> int:
        return self.dp_shard // self.ep

    @property
    def dp_size(self) -> int:
        """Ranks that see different data (for the loader and for averaging)."""
        return self.dp_replicate * self.dp_shard

    def build_mesh(self, device_type: str) -> dict:
        """Named DeviceMeshes: ``world`` and its 1-D views ``pp``, ``ep``, ``dp_shard``, ``dp``,
        ``efsdp_dp`` (the ranks that hold the same experts), and ``fsdp`` (what FSDP shards over:
        1-D dp_shard, or 2-D (dp_replicate, dp_shard) for HSDP)."""
        from torch.distributed.device_mesh import init_device_mesh

        if self.dp_shard < 1:
            raise ValueError("call resolve(world_size) before build_mesh()")
        names = ("pp", "dp_replicate", "dp_shard_mod_ep", "ep")
        shape = (self.pp, self.dp_replicate, self.dp_shard_mod_ep, self.ep)
        world = init_device_mesh(device_type, shape, mesh_dim_names=names)
        meshes = {
            "world": world,
            "pp": world["pp"],
            "ep": world["ep"],
            "dp_shard": world["dp_shard_mod_ep", "ep"]._flatten("dp_shard"),
            "dp": world["dp_replicate", "dp_shard_mod_ep", "ep"]._flatten("dp"),
            "efsdp_dp": world["dp_replicate", "dp_shard_mod_ep"]._flatten("efsdp_dp"),
        }
        # HSDP: a 2-D (replicate, shard) slice that includes the flattened dp_shard dim.
        meshes["fsdp"] = (
            world["dp_replicate", "dp_shard"] if self.dp_replicate > 1 else meshes["dp_shard"]
        )
        return meshes
