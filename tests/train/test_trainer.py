"""The trainer: loss falls, ramp accumulates, checkpoints resume exactly (with a real SIGKILL)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from moelab.checkpoint.layout import list_checkpoints, validate_checkpoint
from moelab.train.trainer import Trainer, train

from .conftest import tiny_config


def _losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}, rows


def test_loss_falls_and_metrics_are_complete(tmp_path, shards):
    cfg = tiny_config(tmp_path, shards, max_steps=40)
    train(cfg, log=lambda *_: None)
    losses, rows = _losses(tmp_path / "run")
    assert sorted(losses) == list(range(1, 41))
    assert losses[40] < losses[1] - 0.5
    last = rows[-1]
    for key in ("lr", "grad_norm", "tokens_per_s", "max_vio", "dead_experts", "load_per_layer"):
        assert key in last
    assert last["tokens"] == 40 * 8 * 16
    assert len(last["load_per_layer"]) == 1  # one MoE layer after the dense first layer


def test_batch_ramp_changes_accumulation(tmp_path, shards):
    cfg = tiny_config(
        tmp_path,
        shards,
        max_steps=6,
        **{"batch.ramp": '[{"after_tokens": 256, "global_batch_size": 16}]'},
    )
    train(cfg, log=lambda *_: None)
    _, rows = _losses(tmp_path / "run")
    assert [r["global_batch"] for r in rows] == [8, 8, 16, 16, 16, 16]


def test_fused_loss_and_optimizer_are_the_default_and_train_as_the_unfused_pair(
    tmp_path, shards, monkeypatch
):
    """One process: the fused LM head + cross-entropy and fused AdamW run by default, and follow
    the unfused path's losses (seq-aux loss on: it needs the batch size without logits)."""
    import moelab.model.transformer as transformer

    calls = []
    real = transformer.linear_cross_entropy
    monkeypatch.setattr(transformer, "linear_cross_entropy", lambda *a: calls.append(1) or real(*a))
    over = {"balance.seq_aux_coef": 1e-3, "batch.global_batch_size": 8}
    runs = {}
    for name, extra in (
        ("auto", {}),
        ("off", {"fused_loss": "off", "fused_optimizer": "false"}),
    ):
        trainer = Trainer(tiny_config(tmp_path / name, shards, max_steps=6, **over, **extra))
        assert bool(trainer.optimizer.defaults["fused"]) is (name == "auto")
        trainer.run()
        runs[name] = _losses(tmp_path / name / "run")[1]
    assert len(calls) == 12  # 6 steps × 2 micro batches, fused only in the "auto" run
    for got, want in zip(runs["auto"], runs["off"], strict=True):
        for key in ("loss", "seq_aux_loss", "grad_norm"):
            assert got[key] == pytest.approx(want[key], abs=1e-5), (got["step"], key)


def test_resume_in_process_equals_uninterrupted(tmp_path, shards):
    full = tiny_config(
        tmp_path / "a", shards, max_steps=12, **{"balance.lb_coef": 0.01, "balance.z_coef": 0.001}
    )
    train(full, log=lambda *_: None)
    part = tiny_config(
        tmp_path / "b", shards, max_steps=12, **{"balance.lb_coef": 0.01, "balance.z_coef": 0.001}
    )
    train(part, log=lambda *_: None, stop_at_step=7)  # not on the 5-step checkpoint cadence
    train(part, resume="auto", log=lambda *_: None)
    assert _losses(tmp_path / "a" / "run")[0] == _losses(tmp_path / "b" / "run")[0]


def test_bos_aligned_packing_reaches_the_loader_and_resumes_exactly(tmp_path, shards):
    def cfg(sub):
        return tiny_config(tmp_path / sub, shards, max_steps=8, **{"data.packing": "bos_aligned"})

    full = cfg("a")
    trainer = Trainer(full, log=lambda *_: None)
    loader = trainer.loader.data
    assert loader.packing == "bos_aligned"
    doc_starts = {0, *(int(e) for e in loader.reader.doc_ends[:-1])}
    assert loader.num_rows > 0 and set(loader._starts.tolist()) <= doc_starts
    train(full, log=lambda *_: None)
    part = cfg("b")
    train(part, log=lambda *_: None, stop_at_step=3)
    train(part, resume="auto", log=lambda *_: None)
    assert _losses(tmp_path / "a" / "run")[0] == _losses(tmp_path / "b" / "run")[0]
    concat = tiny_config(tmp_path / "c", shards, max_steps=8)
    train(concat, log=lambda *_: None)
    assert _losses(tmp_path / "c" / "run")[0] != _losses(tmp_path / "a" / "run")[0]


def _spawn(cfg_path, *extra):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "moelab", "train", str(cfg_path), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
    )


@pytest.mark.slow
def test_sigkill_mid_training_then_resume_is_bit_exact(tmp_path, shards):
    steps = 80
    ref_cfg = tiny_config(tmp_path / "ref", shards, max_steps=steps)
    train(ref_cfg, log=lambda *_: None)
    ref, _ = _losses(tmp_path / "ref" / "run")

    cfg = tiny_config(tmp_path / "kill", shards, max_steps=steps)
    cfg_path = tmp_path / "kill.yaml"
    cfg.to_yaml(cfg_path)
    run_dir = tmp_path / "kill" / "run"
    proc = _spawn(cfg_path)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill once a checkpoint exists and training has moved past it
        done = _losses(run_dir)[0] if (run_dir / "metrics.jsonl").exists() else {}
        if list_checkpoints(run_dir) and max(done, default=0) >= 12:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    killed_at = max(_losses(run_dir)[0])
    assert killed_at < steps, "the run finished before it could be killed"

    resumed = _spawn(cfg_path, "--resume", "auto")
    output, _ = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, output
    assert "resumed from" in output
    got, _ = _losses(run_dir)
    assert got == ref  # every step's loss, bit for bit, and no step logged twice


def test_resume_auto_falls_back_past_a_corrupted_checkpoint(tmp_path, shards):
    cfg = tiny_config(tmp_path, shards, max_steps=10, **{"checkpoint.every_tokens": 512})
    train(cfg, log=lambda *_: None)
    ckpts = list_checkpoints(tmp_path / "run")
    assert [p.name for p in ckpts] == [f"step_{s:08d}" for s in (4, 8, 10)]
    for p in ckpts:
        assert validate_checkpoint(p).meta["kind"] in ("intermediate", "rolling")
    newest = ckpts[-1] / "train_state.pt"
    newest.write_bytes(newest.read_bytes()[:100])  # truncate
    messages = []
    cfg2 = tiny_config(tmp_path, shards, max_steps=12, **{"checkpoint.every_tokens": 512})
    train(cfg2, resume="auto", log=messages.append)
    assert any("skipping bad checkpoint step_00000010" in m for m in messages)
    assert any("resumed from" in m and "step_00000008" in m for m in messages)
