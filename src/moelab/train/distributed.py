"""What the trainer needs when torchrun starts it: meshes, the parallelised model, reductions.

Supported layouts inside ``moelab train`` (``parallel.*``):

* data parallel: FSDP2 over ``dp_shard``, HSDP with ``dp_replicate`` > 1;
* expert parallel (``ep`` > 1) composed with them: experts sliced over ``ep`` (all-to-all
  dispatch), dense weights FSDP-sharded over dp; expert gradients reduced by ``parallel.grads``;
* pipeline parallel (``pp`` > 1), alone or with FSDP/HSDP inside each stage (each pipeline
  replica reads its own data) and with EP on each stage's layers; zero-bubble schedules (split
  backward: ZBV, DualPipeV) keep FSDP's parameters unsharded between forward and backward.

Activation checkpointing (``parallel.activation_checkpoint``) and torch.compile
(``compile.mode``) apply in one process as well. The order is fixed (``parallelize``):
pipeline split, expert parallelism, activation checkpointing, compile (per block, so FSDP's
hooks stay outside the compiled code, as in torchtitan), FSDP.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from moelab.parallel.activation import apply_activation_checkpointing
from moelab.parallel.compile import apply_compile
from moelab.parallel.dims import ParallelDims
from moelab.parallel.env import init_distributed, is_distributed, world_size
from moelab.parallel.expert import apply_expert_parallel, expert_params
from moelab.parallel.fsdp import apply_fsdp, mp_policy
from moelab.parallel.grads import clip_grad_norm_, reduce_expert_grads_


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
    dims: ParallelDims | None = None
    meshes: dict | None = None
    pipeline: object | None = None
    """A ``PipelineRunner`` once ``shard_model`` ran with pp > 1."""
    compiled: list[str] | None = None
    """What ``compile.mode`` compiled (block names, or block.part under expert parallelism)."""

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0

    @property
    def ep_size(self) -> int:
        return self.dims.ep if self.dims else 1

    @property
    def pp_size(self) -> int:
        return self.dims.pp if self.dims else 1

    @property
    def num_devices(self) -> int:
        """Every rank of the job: data-parallel ranks (EP borrows from them) × pipeline stages."""
        return self.dp_size * self.pp_size

    def _group(self, name: str) -> dist.ProcessGroup | None:
        return self.meshes[name].get_group() if self.meshes else None

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

    def adapt_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """EP + FSDP: expert slices are plain tensors, the rest DTensors; foreach kernels cannot
        mix the two, so the optimizer updates tensor by tensor (same math)."""
        if self.enabled and self.ep_size > 1:
            for group in optimizer.param_groups:
                group["foreach"] = False

    def clip_grads_(self, model: torch.nn.Module, max_norm: float) -> torch.Tensor:
        """Finish gradient reduction (expert slices) and clip by the global norm; returns it."""
        params = [p for p in model.parameters() if p.grad is not None]
        if not self.enabled:
            return torch.nn.utils.clip_grad_norm_(params, max_norm)
        if self.ep_size > 1:
            reduce_expert_grads_(params, self.dp_size, self._group("efsdp_dp"))
        return clip_grad_norm_(
            params,
            max_norm,
            ep_group=self._group("ep") if self.ep_size > 1 else None,
            pp_group=self._group("pp") if self.pp_size > 1 else None,
        )


def setup(dims: ParallelDims, device: str, num_experts: int) -> DistContext:
    if not is_distributed():
        return DistContext(False, torch.device(device), dims=dims)
    dev = init_distributed(torch.device(device).type)
    resolved = dims.resolve(world_size(), num_experts)
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
        resolved,
        meshes,
    )


def parallelize(
    model: torch.nn.Module,
    ctx: DistContext,
    param_dtype=None,
    aux_loss_fn=None,
    part_names=(),
    compile_mode: str = "none",
    compile_backend: str = "inductor",
) -> None:
    """Apply, in this order: pipeline split, expert parallelism, activation checkpointing,
    compile, FSDP."""
    dims = ctx.dims or ParallelDims()
    if ctx.enabled and compile_mode == "model":
        raise ValueError(
            "compile.mode=model compiles the whole forward in one process only; under torchrun "
            "use compile.mode=blocks (each block compiled before FSDP wraps it)"
        )
    if ctx.enabled and dims.pp > 1:
        from moelab.parallel.pipeline_runner import PipelineRunner

        ctx.pipeline = PipelineRunner(
            model,
            schedule=dims.pp_schedule,
            pp_rank=ctx.meshes["pp"].get_local_rank(),
            pp_size=dims.pp,
            group=ctx.meshes["pp"].get_group(),
            device=ctx.device,
            stages_per_rank=dims.pp_stages_per_rank,
            aux_loss_fn=aux_loss_fn,
            part_names=list(part_names),
            dp_group=ctx.dp_group,
            overlap_f_b=dims.pp_overlap_f_b,
        )
    if ctx.enabled and dims.ep > 1:  # on the pipeline rank's own layers when pp > 1
        apply_expert_parallel(
            model,
            mesh=ctx.meshes["ep"],
            overlap_chunks=dims.ep_overlap_chunks,
            backward_group=_backward_ep_group(ctx) if dims.pp_overlap_f_b else None,
        )
    apply_activation_checkpointing(model, dims.activation_checkpoint, dims.ac_every)
    ctx.compiled = apply_compile(model, compile_mode, compile_backend)
    if ctx.pipeline is not None:
        if ctx.dp_size > 1:
            ctx.pipeline.shard(
                ctx.fsdp_mesh,
                mp_policy=mp_policy(param_dtype),
                ignored_params=set(expert_params(model)),
            )
    elif ctx.enabled:
        apply_fsdp(
            model, ctx.fsdp_mesh, param_dtype=param_dtype, ignored_params=set(expert_params(model))
        )


def _backward_ep_group(ctx: DistContext) -> dist.ProcessGroup:
    """A second communicator over this rank's EP ranks, for the backward's all-to-alls while a
    forward runs at the same time (``parallel.pp_overlap_f_b``). Every rank creates every EP
    group, in the same order (``ep`` is the mesh's last dimension)."""
    rows = ctx.meshes["world"].mesh.reshape(-1, ctx.dims.ep).tolist()
    group, _ = dist.new_subgroups_by_enumeration(rows)
    return group


def shard_model(model: torch.nn.Module, ctx: DistContext, param_dtype=None, **kw) -> None:
    """The trainer's entry point (kept for its call site): see ``parallelize``."""
    parallelize(model, ctx, param_dtype=param_dtype, **kw)


def stage_losses(cfg) -> dict:
    """For pipeline stages: the aux-loss function (this stage's share) and the part names.

    Same losses and weights as the single-device trainer; a stage's share is its layers' loss
    × its MoE-layer count / all MoE layers, so the shares sum to the mean over layers.
    """
    from moelab.model.losses import load_balancing_loss, router_z_loss, sequence_balance_loss

    bal, moe = cfg.balance, cfg.model.moe
    names = [
        name
        for name, coef in (
            ("lb_loss", bal.lb_coef),
            ("z_loss", bal.z_coef),
            ("seq_aux_loss", bal.seq_aux_coef),
        )
        if coef
    ]
    if not names:
        return {"aux_loss_fn": None, "part_names": []}
    num_moe = cfg.model.num_moe_layers

    def aux(routings, batch_size):
        share = len(routings) / num_moe
        parts = {}
        if bal.lb_coef:
            parts["lb_loss"] = load_balancing_loss(routings, moe.num_experts, moe.top_k) * share
        if bal.z_coef:
            parts["z_loss"] = router_z_loss(routings, divide_by_top_k=bal.z_divide_by_top_k) * share
        if bal.seq_aux_coef:
            parts["seq_aux_loss"] = sequence_balance_loss(routings, batch_size=batch_size) * share
        coefs = {"lb_loss": bal.lb_coef, "z_loss": bal.z_coef, "seq_aux_loss": bal.seq_aux_coef}
        total = sum(coefs[k] * v for k, v in parts.items())
        return total, {k: v.detach() for k, v in parts.items()}

    return {"aux_loss_fn": aux, "part_names": names}
