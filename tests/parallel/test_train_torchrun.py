"""`moelab train` unchanged under torchrun: FSDP2 on 2 gloo ranks equals the single-process trainer."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from moelab.train.trainer import train

from ..train.conftest import make_shards, tiny_config

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def _losses(run_dir):
    return [
        json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]


def _torchrun(cfg_path, *overrides, nproc: int = 2):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(nproc),
        "-m",
        "moelab",
        "train",
        str(cfg_path),
        *overrides,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


def test_fsdp_training_matches_single_process_and_resumes_from_dcp(tmp_path):
    shards = make_shards(tmp_path / "shards")
    common = {
        "schedule.kind": "constant",
        "checkpoint.latest_every_steps": 3,
        "balance.lb_coef": 0.01,
        # torchrun runs the unfused LM head + loss (fused_loss: auto); the reference must too: the two
        # differ by fp32 rounding that 6 steps at lr 1e-2 grow past 1e-5 (TrainConfig.fused_loss).
        "fused_loss": False,
    }
    single = tiny_config(tmp_path / "single", shards, max_steps=10, **common)
    train(single, log=lambda *_: None)

    cfg = tiny_config(tmp_path / "dist", shards, max_steps=10, **common)
    cfg_path = tmp_path / "dist.yaml"
    cfg.to_yaml(cfg_path)
    _torchrun(cfg_path)
    dist_losses = _losses(tmp_path / "dist" / "run")
    single_losses = _losses(tmp_path / "single" / "run")
    print(
        f"max |loss diff| {max(abs(a - b) for a, b in zip(dist_losses, single_losses, strict=True)):.2e}"
    )
    assert dist_losses == pytest.approx(single_losses, abs=1e-6, rel=0)
    ckpt = tmp_path / "dist" / "run" / "step_00000010"
    assert json.loads((ckpt / "meta.json").read_text())["format"] == "dcp"

    # Stop at step 6, resume from the DCP checkpoint: identical to the uninterrupted 2-rank run.
    cfg2 = tiny_config(tmp_path / "resume", shards, max_steps=10, **common)
    cfg2_path = tmp_path / "resume.yaml"
    cfg2.to_yaml(cfg2_path)
    _torchrun(cfg2_path, "max_steps=6")
    output = _torchrun(cfg2_path, "--resume", "auto")
    assert "resumed from" in output and "step_00000006" in output
    assert _losses(tmp_path / "resume" / "run") == dist_losses
