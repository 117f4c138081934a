"""DCP: a sharded FSDP2 checkpoint written by 2 ranks is reloaded by 1 and consolidated exactly."""

from __future__ import annotations

import pytest
import torch

from moelab.checkpoint.dcp import consolidate, load_dcp, validate_dcp
from moelab.checkpoint.hf import CheckpointError
from moelab.checkpoint.layout import load_model
from moelab.model.transformer import build_model

from .distributed import run_distributed
from .test_ep_fsdp import _cfg, _data, _loss

pytestmark = pytest.mark.distributed


def _save_worker(rank, world, run_dir):
    from torch.distributed.device_mesh import init_device_mesh

    from moelab.checkpoint.dcp import save_dcp
    from moelab.parallel.fsdp import apply_fsdp

    model = build_model(_cfg(), seed=1)
    apply_fsdp(model, init_device_mesh("cpu", (world,)))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = _data()
    _loss(model, x[2 * rank : 2 * rank + 2]).backward()
    opt.step()
    save_dcp(run_dir, step=1, tokens=128, model=model, optimizer=opt, extra={"rank": rank})
    full = {
        k: v.full_tensor() if hasattr(v, "full_tensor") else v
        for k, v in model.state_dict().items()
    }
    if rank == 0:
        torch.save(full, f"{run_dir}/expected.pt")


def test_two_rank_save_one_rank_load_and_consolidate(tmp_path):
    run_dir = tmp_path / "run"
    run_distributed(_save_worker, world_size=2, args=(str(run_dir),))
    ckpt = run_dir / "step_00000001"
    meta = validate_dcp(ckpt)
    assert meta["world_size"] == 2 and (run_dir / "latest").read_text().strip() == ckpt.name
    expected = torch.load(run_dir / "expected.pt")
    out = consolidate(ckpt, tmp_path / "single")
    model = load_model(out)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    # a plain single-process model loads it too (resharding 2 → 1), weights only
    fresh = build_model(_cfg(), seed=99)
    load_dcp(ckpt, fresh)
    for name, tensor in fresh.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    shard = next((ckpt / "dcp").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="truncated"):
        validate_dcp(ckpt)


def _ep_save_worker(rank, world, run_dir):
    import torch.distributed as dist

    from moelab.checkpoint.dcp import save_dcp
    from moelab.parallel.dims import ParallelDims
    from moelab.parallel.expert import apply_expert_parallel, expert_params
    from moelab.parallel.fsdp import apply_fsdp
    from moelab.parallel.grads import reduce_expert_grads_

    meshes = ParallelDims(ep=2).resolve(world, 8).build_mesh("cpu")
    model = build_model(_cfg(), seed=1)
    apply_expert_parallel(model, mesh=meshes["ep"])
    experts = expert_params(model)
    apply_fsdp(model, meshes["fsdp"], ignored_params=set(experts))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, foreach=False)
    _loss(model, _data()[2 * rank : 2 * rank + 2]).backward()
    reduce_expert_grads_(list(model.parameters()), 2, meshes["efsdp_dp"].get_group())
    opt.step()
    save_dcp(run_dir, step=1, tokens=128, model=model, optimizer=opt)
    names = {id(p): n for n, p in model.named_parameters()}
    full = {}
    for p in experts:  # gather the slices (weights and first Adam moment) in expert order
        for key, local in (("w", p.detach()), ("exp_avg", opt.state[p]["exp_avg"])):
            parts = [torch.empty_like(local) for _ in range(world)]
            dist.all_gather(parts, local.contiguous())
            full[f"{names[id(p)]}/{key}"] = torch.cat(parts)
    if rank == 0:
        torch.save(full, f"{run_dir}/expected.pt")


def test_expert_parallel_checkpoint_reshards_weights_and_adam_state_onto_one_process(tmp_path):
    from torch.distributed.checkpoint import FileSystemReader

    run_dir = tmp_path / "run"
    run_distributed(_ep_save_worker, world_size=2, args=(str(run_dir),))
    ckpt = run_dir / "step_00000001"
    meta = FileSystemReader(str(ckpt / "dcp")).read_metadata().state_dict_metadata
    name = "layers.1.mlp.experts.gate_up_proj"
    assert tuple(meta[f"model.{name}"].size) == (8, 32, 64)  # global shape, single-device name
    expected = torch.load(run_dir / "expected.pt")
    model = build_model(_cfg(), seed=99)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    load_dcp(ckpt, model, opt)
    params = dict(model.named_parameters())
    checked = 0
    for key, tensor in expected.items():
        fqn, what = key.split("/")
        got = params[fqn] if what == "w" else opt.state[params[fqn]]["exp_avg"]
        assert torch.equal(got.detach(), tensor), key
        checked += 1
    assert checked == 2 * 2 * 2  # 2 MoE layers × (gate_up, down) × (weight, moment)
