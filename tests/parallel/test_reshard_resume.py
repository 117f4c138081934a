"""A DCP checkpoint saved by 2 FSDP ranks resumes on 1 process and on 4 ranks identically.

The weights and optimizer reshard through DCP; the token loader's position is global (rows of
the epoch's permutation consumed), so the global batches continue in the same order. The
1-process resume runs the plain trainer in this process: it reads DCP without a process group.
"""

from __future__ import annotations

import json
import shutil

import pytest

from moelab.train.trainer import train

from ..train.conftest import make_shards, tiny_config
from .test_train_torchrun import _torchrun

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

COMMON = {
    "schedule.kind": "constant",
    "balance.lb_coef": 0.01,
    "checkpoint.latest_every_steps": 0,
    # torchrun runs the unfused LM head + loss (fused_loss: auto); the reference must too: the two
    # differ by fp32 rounding that 6 steps at lr 1e-2 grow past 1e-5 (TrainConfig.fused_loss).
    "fused_loss": False,
    # micro batches of 4 rows on every layout (the aux losses are per micro batch): global 16
    "batch.global_batch_size": 16,
    "checkpoint.every_tokens": 512,  # 2 steps of 16 x 16 tokens: kept checkpoints at 2 and 4
}


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _assert_continues(resumed, reference, atol=1e-6):
    assert [r["step"] for r in resumed] == [3, 4]
    worst = max(
        abs(got[k] - want[k])
        for got, want in zip(resumed, reference[2:], strict=True)
        for k in ("loss", "lb_loss", "grad_norm")
    )
    print(f"max |loss diff| {worst:.2e}")
    for got, want in zip(resumed, reference[2:], strict=True):
        for key in ("loss", "lb_loss", "grad_norm"):
            assert got[key] == pytest.approx(want[key], abs=atol), (got["step"], key)
        assert got["load_per_layer"] == want["load_per_layer"], got["step"]  # same routing


def test_two_rank_checkpoint_resumes_on_one_and_four(tmp_path):
    shards = make_shards(tmp_path / "shards")
    cfg = tiny_config(tmp_path / "two", shards, max_steps=4, **COMMON)
    cfg_path = tmp_path / "two.yaml"
    cfg.to_yaml(cfg_path)
    _torchrun(cfg_path)
    two = _records(tmp_path / "two" / "run")
    ckpt = tmp_path / "two" / "run" / "step_00000002"
    assert json.loads((ckpt / "meta.json").read_text())["world_size"] == 2

    # 1 process (no torchrun, no process group), 4 micro batches of 4 per step
    one = tiny_config(tmp_path / "one", shards, max_steps=4, **COMMON)
    logs: list[str] = []
    train(one, resume=str(ckpt), log=logs.append)
    assert any("saved by 2 ranks, resuming on 1" in line for line in logs), logs
    _assert_continues(_records(tmp_path / "one" / "run"), two)

    # 4 ranks, 1 micro batch each: resume --auto from a run directory holding the step-2 checkpoint
    four_run = tmp_path / "four" / "run"
    four_run.mkdir(parents=True)
    shutil.copytree(ckpt, four_run / ckpt.name)
    four = tiny_config(tmp_path / "four", shards, max_steps=4, **COMMON)
    four_path = tmp_path / "four.yaml"
    four.to_yaml(four_path)
    out = _torchrun(four_path, "--resume", "auto", nproc=4)
    assert "saved by 2 ranks, resuming on 4" in out
    _assert_continues(_records(four_run), two)

    # a layout whose global step does not divide the 32 consumed rows is refused, saying why
    odd = tiny_config(
        tmp_path / "odd",
        shards,
        max_steps=4,
        **{**COMMON, "batch.micro_batch_size": 3, "batch.global_batch_size": 18},
    )
    with pytest.raises(ValueError, match=r"32 rows into epoch 0 .*1 x 3 = 3"):
        train(odd, resume=str(ckpt), log=lambda *_: None)
