"""Sharded checkpoints through ``torch.distributed.checkpoint`` (DCP), and consolidation.

Every rank writes its own shards into one temporary directory; after a barrier, rank 0 writes
``meta.json`` (step, tokens, the model config, a manifest of every file with its size) and
renames the directory into place, then updates ``latest``. A reader on any world size or
parallel layout loads it with ``load_dcp`` (DCP reshards by tensor name), and
``consolidate`` turns it into the single-device checkpoint that inference, export and analysis
read (``checkpoint/layout.py``).

Expert parallelism keeps each rank's expert slice as a plain tensor. In the state dicts given
to DCP those slices (weights and their Adam moments) become ``DTensor``s ``Shard(0)`` over the
``ep`` mesh, so they are saved under the single-device names with their global shape (E, ...)
and any layout can read them back; ranks that hold the same slice write it once (DCP dedups).
Pipeline ranks hold disjoint layers, so their state dicts have disjoint names and need nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from moelab import __version__
from moelab.checkpoint.hf import CheckpointError
from moelab.checkpoint.layout import LATEST, META, MODEL_CONFIG, save_checkpoint, step_dir_name
from moelab.common.sharding import LOCAL_SHARD_ATTR as EP_GROUP_ATTR
from moelab.model.config import ModelConfig
from moelab.model.transformer import MoETransformer

DCP_DIR = "dcp"


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _expert_meshes(model: torch.nn.Module) -> dict[str, Any]:
    meshes = {}
    for fqn, p in model.named_parameters():
        if hasattr(p, EP_GROUP_ATTR):
            mesh = getattr(p, EP_GROUP_ATTR)
            if mesh is None:
                raise CheckpointError(
                    f"{fqn}: expert parallelism applied without an ep DeviceMesh; DCP needs one"
                )
            meshes[fqn] = mesh
    return meshes


def _wrap_experts(model: torch.nn.Module, state: dict[str, Any]) -> dict[str, Any]:
    """Present EP slices (and their optimizer moments) as DTensors Shard(0) over ``ep``."""
    from torch.distributed.tensor import DTensor, Shard

    meshes = _expert_meshes(model)
    for fqn, mesh in meshes.items():
        local = state["model"][fqn]
        state["model"][fqn] = DTensor.from_local(local, mesh, [Shard(0)], run_check=False)
        optim = state.get("optim", {})
        if "state" in optim:  # the nested layout of checkpoints before "optim_layout": "flat"
            if fqn in optim["state"]:  # a new dict: the one given may be the optimizer's own
                optim["state"][fqn] = {
                    key: _ep_dtensor(value, local, mesh)
                    for key, value in optim["state"][fqn].items()
                }
            continue
        for key in [k for k in optim if k.startswith(f"state.{fqn}.")]:
            optim[key] = _ep_dtensor(optim[key], local, mesh)
    return meshes


def _ep_dtensor(value: Any, local: torch.Tensor, mesh) -> Any:
    from torch.distributed.tensor import DTensor, Shard

    if isinstance(value, torch.Tensor) and value.shape == local.shape:
        return DTensor.from_local(value, mesh, [Shard(0)], run_check=False)
    return value


def _unwrap_experts(state: dict[str, Any], meshes: dict[str, Any]) -> None:
    """Back to plain local slices, for the expert parameters only (FSDP's DTensors stay)."""
    from torch.distributed.tensor import DTensor

    optim = state.get("optim", {})
    for fqn in meshes:
        state["model"][fqn] = state["model"][fqn].to_local()
        nested = optim.get("state", {}).get(fqn, {})
        for d, keys in (
            (nested, list(nested)),
            (optim, [k for k in optim if k.startswith(f"state.{fqn}.")]),
        ):
            for key in keys:
                if isinstance(d[key], DTensor):
                    d[key] = d[key].to_local()


# Optimizer state is saved flattened ("state.<fqn>.exp_avg", "param_groups.<fqn>.lr"): keyed by
# parameter name, so ranks with disjoint parameters (pipeline stages) and other layouts agree.
_FLAT = StateDictOptions(flatten_optimizer_state_dict=True)


def save_dcp(
    run_dir: str | Path,
    *,
    step: int,
    tokens: int,
    model: MoETransformer,
    optimizer: torch.optim.Optimizer | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint directory."""
    run_dir = Path(run_dir)
    final = run_dir / step_dir_name(step)
    tmp = run_dir / f".{final.name}.dcp-tmp"
    if _rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    if optimizer is not None:
        model_sd, optim_sd = get_state_dict(model, optimizer, options=_FLAT)
        state = {"model": model_sd, "optim": optim_sd}
    else:
        state = {"model": get_model_state_dict(model)}
    _wrap_experts(model, state)
    dcp.save(state, checkpoint_id=str(tmp / DCP_DIR))
    if extra is not None:  # per-rank, small (loader position, RNG)
        torch.save(extra, tmp / f"extra_rank{_rank():05d}.pt")
    _barrier()
    if _rank() == 0:
        model.config.to_yaml(tmp / MODEL_CONFIG)
        files = {
            str(p.relative_to(tmp)): {"bytes": p.stat().st_size}
            for p in sorted(tmp.rglob("*"))
            if p.is_file()
        }
        meta = {
            "step": step,
            "tokens": tokens,
            "time": time.time(),
            "format": "dcp",
            "optim_layout": "flat",
            "world_size": dist.get_world_size() if dist.is_initialized() else 1,
            "moelab_version": __version__,
            "files": files,
        }
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        latest_tmp = run_dir / f".{LATEST}.tmp"
        latest_tmp.write_text(final.name + "\n")
        os.replace(latest_tmp, run_dir / LATEST)
    _barrier()
    return final


def validate_dcp(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        meta = json.loads((path / META).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: no readable {META}: {err}") from None
    if meta.get("format") != "dcp":
        raise CheckpointError(f"{path}: not a DCP checkpoint")
    for name, entry in meta["files"].items():
        f = path / name
        if not f.exists():
            raise CheckpointError(f"{path}: {name} is missing")
        if f.stat().st_size != entry["bytes"]:
            raise CheckpointError(
                f"{f}: {f.stat().st_size} bytes, manifest says {entry['bytes']} (truncated?)"
            )
    return meta


def load_dcp(
    path: str | Path, model: MoETransformer, optimizer: torch.optim.Optimizer | None = None
) -> dict:
    """Collective: load a DCP checkpoint into an (already parallelised) model, resharding as needed."""
    path = Path(path)
    meta = validate_dcp(path)
    if optimizer is not None:
        options = _FLAT if meta.get("optim_layout") == "flat" else StateDictOptions()
        model_sd, optim_sd = get_state_dict(model, optimizer, options=options)
        state = {"model": model_sd, "optim": optim_sd}
        meshes = _wrap_experts(model, state)
        dcp.load(state, checkpoint_id=str(path / DCP_DIR))
        _unwrap_experts(state, meshes)
        set_state_dict(
            model,
            optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optim"],
            options=options,
        )
    else:
        state = {"model": get_model_state_dict(model)}
        meshes = _wrap_experts(model, state)
        dcp.load(state, checkpoint_id=str(path / DCP_DIR))
        _unwrap_experts(state, meshes)
        set_model_state_dict(model, state["model"], options=StateDictOptions(strict=True))
    return meta


def consolidate(path: str | Path, out_run_dir: str | Path) -> Path:
    """A single-device moelab checkpoint (model.safetensors + model.yaml) from a DCP checkpoint.

    Runs in one process, without a process group.
    """
    path = Path(path)
    meta = validate_dcp(path)
    cfg = ModelConfig.from_yaml(path / MODEL_CONFIG)
    with torch.device("meta"):
        model = MoETransformer(cfg)
    model.to_empty(device="cpu")
    model.rotary.reset_parameters()
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=str(path / DCP_DIR), no_dist=True)
    model.load_state_dict(state["model"])
    return save_checkpoint(
        out_run_dir,
        step=meta["step"],
        tokens=meta["tokens"],
        model=model,
        extra_meta={"consolidated_from": str(path)},
    )
