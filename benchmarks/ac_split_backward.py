"""Activation checkpointing under a split (zero-bubble) backward: memory and weight-pass time.

One pipeline stage's backward as ZBVZeroBubble / DualPipeV run it: torch's
``stage_backward_input`` (input gradients), then ``stage_backward_weight`` (one
``autograd.grad`` per parameter group). Three variants of the same stage (4 MoE blocks):

* ``none``: no checkpointing;
* ``per_call``: every block checkpointed, the weight pass run as torch runs it (non-reentrant
  checkpointing then recomputes a block once per parameter group);
* ``group``: checkpointed, the weight pass under one ``GraphExecGroup``, as
  ``moelab.parallel.pipeline.Stage`` runs it (one recompute per block for the whole pass).

Reported per variant (median over ``--rounds``, each variant in a fresh process, round-robin):
memory held after the forward (what a micro batch in flight costs), the peak during the input
pass and during the weight pass (above the memory before the forward), and the weight pass's
time. Memory: ``torch.cuda.max_memory_allocated`` on CUDA; on CPU the process's RSS sampled
every 0.5 ms (``MALLOC_MMAP_THRESHOLD_`` set low so freed tensors leave the RSS).

Usage:
    python -P benchmarks/ac_split_backward.py [--rounds 3] [--device cpu|cuda]
Writes benchmarks/results/ac_split_backward_{cpu,cuda}.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

VARIANTS = ("none", "per_call", "group")
MiB = 2**20


def _measure(variant: str, device: str, batch: int, seq: int) -> dict:
    from torch.distributed.pipelining._backward import stage_backward_input, stage_backward_weight
    from torch.utils.checkpoint import GraphExecGroup

    from moelab.model import ModelConfig
    from moelab.model.transformer import build_model
    from moelab.parallel.activation import apply_activation_checkpointing

    torch.set_num_threads(1)
    cfg = ModelConfig.from_dict(
        {
            "preset": "tiny-dots",
            "vocab_size": 256,
            "hidden_size": 256,
            "num_layers": 4,
            "attention": {"num_heads": 4, "num_kv_heads": 4, "head_dim": 64},
            "moe": {
                "num_experts": 8,
                "top_k": 2,
                "expert_intermediate_size": 256,
                "first_k_dense_replace": 0,
            },
        }
    )
    model = build_model(cfg, seed=1).to(device)
    if variant != "none":
        apply_activation_checkpointing(model, "full")
    h = torch.randn(batch, seq, cfg.hidden_size, device=device, requires_grad=True)
    model.embed_tokens = _Given(h)  # a middle stage: received hidden states in, hidden out
    model.norm = model.lm_head = None
    ids = torch.zeros(batch, seq, dtype=torch.long, device=device)
    meter = _Cuda() if device == "cuda" else _Rss()
    base = meter.now()
    out = model(ids).logits
    held_f = meter.now() - base
    meter.reset()
    weights = list(model.parameters())
    _, groups = stage_backward_input([out], [torch.ones_like(out)], [h], iter(weights))
    peak_i = meter.peak() - base
    meter.reset()
    ctx = GraphExecGroup() if variant == "group" else contextlib.nullcontext()
    meter.sync()
    t0 = time.perf_counter()
    with ctx:
        stage_backward_weight(iter(weights), groups)
    meter.sync()
    w_time = time.perf_counter() - t0
    peak_w = meter.peak() - base
    meter.stop()
    return {
        "held_after_forward_mib": held_f / MiB,
        "peak_input_pass_mib": peak_i / MiB,
        "peak_weight_pass_mib": peak_w / MiB,
        "weight_pass_s": w_time,
        "param_groups": len(groups),
    }


class _Given(torch.nn.Module):
    """An embedding that returns the given hidden states (what a middle stage receives)."""

    def __init__(self, h: torch.Tensor):
        super().__init__()
        self.h = h

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.h


class _Cuda:
    def __init__(self):
        self.torch = torch
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    def now(self) -> int:
        self.torch.cuda.synchronize()
        return self.torch.cuda.memory_allocated()

    def peak(self) -> int:
        self.torch.cuda.synchronize()
        return self.torch.cuda.max_memory_allocated()

    def reset(self) -> None:
        self.torch.cuda.reset_peak_memory_stats()

    def sync(self) -> None:
        self.torch.cuda.synchronize()

    def stop(self) -> None:
        pass


class _Rss:
    """Peak RSS from a sampler thread (torch kernels release the GIL)."""

    def __init__(self):
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.max = self.now()
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def now(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _sample(self) -> None:
        while self.running:
            self.max = max(self.max, self.now())
            time.sleep(0.0005)

    def peak(self) -> int:
        time.sleep(0.01)
        return max(self.max, self.now())

    def reset(self) -> None:
        time.sleep(0.01)
        self.max = self.now()

    def sync(self) -> None:
        pass

    def stop(self) -> None:
        self.running = False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:  # a child: one measurement, printed as JSON
        print(json.dumps(_measure(args.variant, args.device, args.batch, args.seq)))
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for v in VARIANTS:  # round-robin: background load hits all alike
            cmd = [sys.executable, "-P", __file__, "--variant", v, "--device", args.device]
            cmd += ["--batch", str(args.batch), "--seq", str(args.seq)]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
            runs[v].append(json.loads(out.stdout.strip().splitlines()[-1]))
    keys = ["held_after_forward_mib", "peak_input_pass_mib", "peak_weight_pass_mib"]
    keys += ["weight_pass_s"]
    med = {v: {k: statistics.median(r[k] for r in rs) for k in keys} for v, rs in runs.items()}
    groups = runs["none"][0]["param_groups"]
    print(f"stage of 4 MoE blocks, batch {args.batch} x seq {args.seq}, {args.device}, ", end="")
    print(f"{groups} parameter groups; median of {args.rounds}; load {os.getloadavg()[0]:.2f}")
    print(f"{'variant':10s}" + "".join(f"{k:>24s}" for k in keys))
    for v in VARIANTS:
        print(f"{v:10s}" + "".join(f"{med[v][k]:24.2f}" for k in keys))
    ratios = {
        "held_after_forward_group_over_none": med["group"]["held_after_forward_mib"]
        / med["none"]["held_after_forward_mib"],
        "peak_weight_pass_group_over_per_call": med["group"]["peak_weight_pass_mib"]
        / med["per_call"]["peak_weight_pass_mib"],
        "weight_pass_time_group_over_per_call": med["group"]["weight_pass_s"]
        / med["per_call"]["weight_pass_s"],
        "weight_pass_time_group_over_none": med["group"]["weight_pass_s"]
        / med["none"]["weight_pass_s"],
    }
    for k, r in ratios.items():
        print(f"{k}: {r:.2f}")
    path = Path(__file__).parent / "results" / f"ac_split_backward_{args.device}.json"
    path.write_text(
        json.dumps(
            {
                "args": vars(args),
                "medians": med,
                "ratios": ratios,
                "runs": runs,
                "loadavg": os.getloadavg(),
            },
            indent=1,
        )
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
