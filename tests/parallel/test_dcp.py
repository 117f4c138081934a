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
