"""Step time and communication volume per step of `moelab train` layouts on CPU (gloo).

Every layout trains the same model on the same global batch: one process (the reference),
FSDP2 on 2 ranks, EP=2 (+FSDP 2), the same with the all-to-all overlapped in 4 chunks
(``parallel.ep_overlap_chunks=4``), PP=2 (1F1B), and on 4 ranks PP=2 DualPipeV × EP=2 × FSDP 2
with and without ``parallel.pp_overlap_f_b`` (its forward/backward pairs at the same time).
Each run is ``moelab train`` (under torchrun
for the distributed ones) with the same YAML; step time is the median of ``tokens /
tokens_per_s`` from metrics.jsonl after the warm-up steps. Layouts run round-robin, ``--rounds``
times, so background load hits them alike; the report gives each median and its ratio to the
single process.

Communication per step and rank is computed from the config (not measured on the wire):

* FSDP2: all-gather of the parameters in the forward and again in the backward, reduce-scatter
  of the gradients, each moving (n−1)/n of the fp32 parameter bytes, per micro batch;
* EP: per MoE layer a token's hidden vector goes to its K experts and back (dispatch, combine)
  in the forward and again in the backward: 4·L_moe·T·K·D·4 bytes·(ep−1)/ep under uniform
  routing (measured loads are near uniform), plus FSDP for the dense weights;
* PP: each stage boundary carries the activations (B·T·D·4 bytes) forward and their gradient
  back, per micro batch.

It also prints the expected all-to-all volume for the dots.llm1 preset at several EP degrees
(the same formula in bf16), per token and per micro batch of 8192 tokens on a rank, to be
checked on GPUs later.

Usage:
    python -P benchmarks/distributed.py [--rounds 2] [--steps 12]
Writes benchmarks/results/distributed_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import moelab
from moelab.common.device import device_name
from moelab.model import ModelConfig
from moelab.tokens.shards import ShardWriter, write_meta
from moelab.train.config import TrainConfig

VOCAB = 256
_PP_EP = ["parallel.pp=2", "parallel.ep=2", "parallel.pp_schedule=DualPipeV"]
_PP_EP += ["batch.micro_batch_size=2"]
LAYOUTS = {
    "single": (1, []),
    "fsdp2": (2, []),
    "ep2": (2, ["parallel.ep=2"]),
    "ep2_overlap4": (2, ["parallel.ep=2", "parallel.ep_overlap_chunks=4"]),
    "pp2_1f1b": (2, ["parallel.pp=2", "parallel.pp_schedule=1F1B"]),
    # 4 ranks: PP=2 DualPipeV (4 micro batches of 2 per replica) × EP=2 × FSDP 2, with its
    # OVERLAP_F_B pairs run one after the other (the runtime's default) or at the same time.
    "pp2ep2_dualpipev": (4, [*_PP_EP, "parallel.pp_overlap_f_b=false"]),
    "pp2ep2_dualpipev_overlap_f_b": (4, [*_PP_EP, "parallel.pp_overlap_f_b=true"]),
}
DOTS_TOKENS_PER_RANK = 8192
"""Tokens one EP rank routes per micro batch for the dots.llm1 estimate (one 8K sequence)."""


def make_shards(directory: Path, docs: int = 400) -> Path:
    rng = np.random.default_rng(0)
    rows = [rng.integers(0, VOCAB, int(rng.integers(100, 400))).tolist() for _ in range(docs)]
    with ShardWriter(directory, 0) as writer:
        writer.write(rows)
        info = writer.close()
    write_meta(directory, [info], {"hash": "bench-random", "vocab_size": VOCAB})
    return directory


def make_config(shards: Path, out_dir: Path, steps: int) -> TrainConfig:
    return TrainConfig.from_dict(
        {
            "model": {
                "preset": "tiny-dots",
                "vocab_size": VOCAB,
                "hidden_size": 128,
                "num_layers": 4,
                "intermediate_size": 256,
                "attention": {"num_heads": 4, "num_kv_heads": 4, "head_dim": 32},
                "moe": {"num_experts": 16, "top_k": 4, "expert_intermediate_size": 64},
            },
            "data": {"shards": str(shards)},
            "schedule": {"kind": "constant"},
            "batch": {"seq_len": 128, "micro_batch_size": 4, "global_batch_size": 16},
            "checkpoint": {"latest_every_steps": 0},
            "out_dir": str(out_dir),
            "max_steps": steps,
            "threads": 1,
        }
    )


def run_layout(cfg_path: Path, out_dir: Path, nproc: int, overrides: list[str]) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-P", "-m"]
    if nproc > 1:
        cmd += ["torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), "-m"]
    cmd += ["moelab", "train", str(cfg_path), f"out_dir={out_dir}", *overrides]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def comm_bytes_per_step(cfg: TrainConfig, layout: str) -> dict[str, float]:
    """Bytes one rank sends per optimizer step (fp32), from the config."""
    m, b = cfg.model, cfg.batch
    params = _num_params(m)
    if layout.startswith("pp2ep2"):
        return _pp_ep_comm(cfg, params)
    tokens_rank = b.global_batch_size * b.seq_len / (1 if layout.startswith("pp") else 2)
    micro_steps = b.global_batch_size // b.micro_batch_size // (1 if layout.startswith("pp") else 2)
    out = {}
    if layout in ("fsdp2", "ep2", "ep2_overlap4"):
        experts = m.num_moe_layers * m.moe.num_experts * 3 * m.moe.expert_intermediate_size
        sharded = params - (experts * m.hidden_size if layout.startswith("ep") else 0)
        out["fsdp"] = 3 * sharded * 4 * (1 / 2) * micro_steps  # 2 all-gathers + reduce-scatter
    if layout.startswith("ep"):
        out["all_to_all"] = 4 * m.num_moe_layers * tokens_rank * m.moe.top_k * m.hidden_size * 4 / 2
    if layout.startswith("pp"):
        out["p2p"] = 2 * b.global_batch_size * b.seq_len * m.hidden_size * 4 / 2
    return out


def _pp_ep_comm(cfg: TrainConfig, params: int) -> dict[str, float]:
    """PP=2 × EP=2 × FSDP 2 on 4 ranks: a rank holds half the layers (2 of the V's 4 stages),
    routes its replica's tokens (half the batch) through them, and sends one stage boundary's
    activations forward and their gradient back (the V's turn stays on one rank). FSDP inside
    a zero-bubble schedule gathers once per step (kept unsharded) and reduce-scatters once."""
    m, b = cfg.model, cfg.batch
    tokens_rank = b.global_batch_size * b.seq_len / 2
    experts = m.num_moe_layers * m.moe.num_experts * 3 * m.moe.expert_intermediate_size
    dense_rank = (params - experts * m.hidden_size) / 2
    return {
        "fsdp": 2 * dense_rank * 4 * (1 / 2),
        "all_to_all": 4 * m.num_moe_layers / 2 * tokens_rank * m.moe.top_k * m.hidden_size * 4 / 2,
        "p2p": 2 * tokens_rank * m.hidden_size * 4,
    }


def _num_params(m: ModelConfig) -> int:
    from moelab.model import build_model

    return build_model(m, seed=0).num_params()


def dots_a2a_per_token(ep: int) -> float:
    """Expected all-to-all bytes per token and rank for dots.llm1 in bf16 (uniform routing)."""
    m = ModelConfig.from_dict({"preset": "dots.llm1"})
    return 4 * m.num_moe_layers * m.moe.top_k * m.hidden_size * 2 * (ep - 1) / ep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument(
        "--layouts",
        nargs="+",
        default=list(LAYOUTS),
        choices=list(LAYOUTS),
        help="single always runs",
    )
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "distributed_cpu.json"
    )
    args = ap.parse_args()
    layouts = {k: v for k, v in LAYOUTS.items() if k == "single" or k in args.layouts}
    times: dict[str, list[float]] = {name: [] for name in layouts}
    losses: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shards = make_shards(tmp / "shards")
        cfg = make_config(shards, tmp / "unused", args.steps)
        cfg_path = tmp / "bench.yaml"
        cfg.to_yaml(cfg_path)
        for r in range(args.rounds):
            for name, (nproc, overrides) in layouts.items():
                records = run_layout(cfg_path, tmp / f"{name}_{r}", nproc, overrides)
                tokens_per_step = cfg.batch.global_batch_size * cfg.batch.seq_len
                times[name] += [
                    tokens_per_step / rec["tokens_per_s"]
                    for rec in records
                    if rec["step"] > args.warmup
                ]
                losses[name] = [rec["loss"] for rec in records]
                print(f"round {r} {name}: median {statistics.median(times[name]) * 1e3:.1f} ms")
    ref = statistics.median(times["single"])
    table = {}
    for name in layouts:
        med = statistics.median(times[name])
        diff = max(abs(a - b) for a, b in zip(losses[name], losses["single"], strict=True))
        table[name] = {
            "step_ms": round(med * 1e3, 2),
            "vs_single": round(med / ref, 3),
            "comm_MB_per_step_rank": {
                k: round(v / 1e6, 3) for k, v in comm_bytes_per_step(cfg, name).items()
            },
            "max_loss_diff_vs_single": diff,
        }
    result = {
        "device": device_name(),
        "moelab_version": moelab.__version__,
        "config": {"steps": args.steps, "warmup": args.warmup, "rounds": args.rounds},
        "layout_args": {k: v[1] for k, v in layouts.items()},
        "layouts": table,
        "dots_llm1_a2a_MB_per_token_rank_bf16": {
            ep: round(dots_a2a_per_token(ep) / 1e6, 3) for ep in (2, 8, 16, 32)
        },
        f"dots_llm1_a2a_GB_per_rank_per_micro_batch_of_{DOTS_TOKENS_PER_RANK}_tokens_bf16": {
            ep: round(dots_a2a_per_token(ep) * DOTS_TOKENS_PER_RANK / 1e9, 2)
            for ep in (2, 8, 16, 32)
        },
        "load_avg_1min": os.getloadavg()[0],
    }
    print(json.dumps(result, indent=2))
    m = ModelConfig.from_dict({"preset": "dots.llm1"})
    print(
        f"dots.llm1 ({m.num_moe_layers} MoE layers, top-{m.moe.top_k}, hidden {m.hidden_size}), "
        "expected all-to-all per rank, bf16, uniform routing, forward + backward:"
    )
    for ep in (2, 8, 16, 32):
        per_token = dots_a2a_per_token(ep)
        print(
            f"  EP={ep:>2}: {per_token / 1e6:.3f} MB per token, "
            f"{per_token * DOTS_TOKENS_PER_RANK / 1e9:.1f} GB per {DOTS_TOKENS_PER_RANK} tokens"
        )
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
