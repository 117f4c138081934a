"""`moelab sft` / `dpo` under torchrun: 2 FSDP ranks give the single-process numbers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from moelab.posttrain.sft import train_sft

from .conftest import base_checkpoint, metrics, sft_config, sft_records, write_jsonl

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def test_two_ranks_equal_one_process(tmp_path, chat_tokenizer):
    base = base_checkpoint(tmp_path / "base", "olmoe", chat_tokenizer)
    data = write_jsonl(tmp_path / "sft.jsonl", sft_records(120))
    over = {"max_steps": 4, "schedule.kind": "constant"}
    train_sft(sft_config(tmp_path / "single", base, data, **over), log=lambda *_: None)
    cfg = sft_config(tmp_path / "dist", base, data, **over)
    (tmp_path / "dist.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "moelab", "sft", str(tmp_path / "dist.yaml")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    single, dist = (metrics(tmp_path / x / "run") for x in ("single", "dist"))
    # Rank r serves rows r*4..r*4+3 of each global batch: the same 8 rows as one process.
    assert [r["loss"] for r in dist] == pytest.approx([r["loss"] for r in single], rel=1e-5)


def test_dpo_two_ranks_equal_one_process(tmp_path, chat_tokenizer):
    from moelab.posttrain.dpo import train_dpo

    from .conftest import dpo_config, dpo_records

    base = base_checkpoint(tmp_path / "base", "dots1", chat_tokenizer)
    data = write_jsonl(tmp_path / "dpo.jsonl", dpo_records(64))
    over = {"max_steps": 4, "schedule.kind": "constant"}
    train_dpo(dpo_config(tmp_path / "single", base, data, **over), log=lambda *_: None)
    cfg = dpo_config(tmp_path / "dist", base, data, **over)
    (tmp_path / "dist.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "moelab", "dpo", str(tmp_path / "dist.yaml")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    single, dist = (metrics(tmp_path / x / "run") for x in ("single", "dist"))
    for key in ("loss", "reward_margin", "reward_accuracy"):
        assert [r[key] for r in dist] == pytest.approx([r[key] for r in single], rel=1e-5, abs=1e-7)
