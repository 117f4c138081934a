"""Expert-parallel MoE layer with the all-to-all overlapped with expert compute, on CPU (gloo).

Two gloo processes each hold half the experts of one MoE layer; ``parallel.ep_overlap_chunks``
= 1, 2, 4 splits each rank's tokens into that many pieces (``AllToAllDispatcher.run``). Each
chunked setting runs twice: "forward" (the pipeline before the backward overlap: funcol's
autograd all-to-all, whose backward blocks piece by piece; ``overlap_backward=False``) and
"both" (the current one: the backward also keeps the other pieces' gradient all-to-alls in
flight while a piece's expert backward runs). The settings run round-robin, ``--rounds``
times, in the same processes, so background load hits them alike; the report gives the median
forward and forward+backward time of each, its ratio to chunks = 1, the ratio of "both" to
"forward" at the same chunks, and the largest differences from chunks = 1 (output, absolute;
input and expert-weight gradients, relative to their largest entry).

What to expect here: no reliable gain. On 2 CPU cores the gloo transfer is a memcpy through
the loopback that needs a core itself, and the two ranks already use both; the overlap is for
GPUs, where the all-to-all runs on the network/NVLink engines while the SMs compute.
Results and the load they ran under: docs/distributed.md.

Usage:
    python -P benchmarks/ep_overlap.py [--rounds 10] [--tokens 2048]
Writes benchmarks/results/ep_overlap_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import moelab
from moelab.common.device import device_name
from moelab.model import ModelConfig
from moelab.model.moe import MoELayer

SETTINGS = ((1, "none"), (2, "forward"), (2, "both"), (4, "forward"), (4, "both"))
"""(chunks, which passes overlap): "forward" is the pipeline before the backward overlap
(funcol's autograd all-to-all, blocking in the backward); "both" the current one."""
MODEL = {
    "preset": "tiny-dots",
    "hidden_size": 512,
    "moe": {"num_experts": 16, "top_k": 4, "expert_intermediate_size": 256},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _layer(chunks: int, overlap: str) -> MoELayer:
    from moelab.parallel.expert import apply_expert_parallel

    cfg = ModelConfig.from_dict(MODEL)
    torch.manual_seed(0)
    layer = MoELayer(cfg)
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.02)
    apply_expert_parallel(layer, dist.group.WORLD, overlap_chunks=chunks)
    layer.dispatcher.overlap_backward = overlap != "forward"
    return layer


def _time(fn) -> float:
    dist.barrier()
    t0 = time.perf_counter()
    fn()
    dist.barrier()
    return time.perf_counter() - t0


def _fwd_bwd(layer: MoELayer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    xx = x.clone().requires_grad_()
    out = layer(xx)[0]
    out.square().sum().backward()
    return out.detach(), xx.grad


def _worker(rank: int, world: int, port: int, args, out_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    x = torch.randn(
        1, args.tokens, MODEL["hidden_size"], generator=torch.Generator().manual_seed(rank)
    )
    layers = {s: _layer(*s) for s in SETTINGS}
    fwd: dict = {s: [] for s in SETTINGS}
    fwd_bwd: dict = {s: [] for s in SETTINGS}
    outs = {}
    for r in range(args.rounds + 1):  # round 0 warms up and keeps the results
        for s, layer in layers.items():
            with torch.no_grad():
                t = _time(lambda layer=layer: layer(x))
            t2 = _time(lambda layer=layer: _fwd_bwd(layer, x))
            if r:
                fwd[s].append(t)
                fwd_bwd[s].append(t2)
            else:  # every rank: the layer's all-to-alls need both
                layer.zero_grad()
                out, dx = _fwd_bwd(layer, x)
                outs[s] = (out, dx, layer.experts.gate_up_proj.grad)
    if rank == 0:
        res = []
        base = SETTINGS[0]
        for s in SETTINGS:
            f, fb = statistics.median(fwd[s]), statistics.median(fwd_bwd[s])
            before = (s[0], "forward") if s[1] == "both" else s
            res.append(
                {
                    "chunks": s[0],
                    "overlap": s[1],
                    "forward_ms": round(f * 1e3, 2),
                    "forward_vs_chunks1": round(f / statistics.median(fwd[base]), 3),
                    "fwd_bwd_ms": round(fb * 1e3, 2),
                    "fwd_bwd_vs_chunks1": round(fb / statistics.median(fwd_bwd[base]), 3),
                    "fwd_bwd_vs_forward_only": round(fb / statistics.median(fwd_bwd[before]), 3),
                    "max_out_diff_vs_chunks1": (outs[s][0] - outs[base][0]).abs().max().item(),
                    "max_grad_rel_diff_vs_chunks1": max(
                        ((a - b).abs().max() / b.abs().max()).item()
                        for a, b in zip(outs[s][1:], outs[base][1:], strict=True)
                    ),
                }
            )
        Path(out_path).write_text(json.dumps(res))
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=2048, help="tokens per rank")
    args = ap.parse_args()
    load_start = os.getloadavg()[0]
    tmp = Path(__file__).parent / "results" / ".ep_overlap_tmp.json"
    mp.spawn(_worker, args=(2, _free_port(), args, str(tmp)), nprocs=2, join=True)
    res = json.loads(tmp.read_text())
    tmp.unlink()
    load = os.getloadavg()[0]
    print(
        f"{'chunks':>6} {'overlap':>8} {'fwd ms':>8} {'ratio':>6} {'fwd+bwd ms':>10} {'ratio':>6}"
        f" {'vs fwd-only':>11} {'out diff':>9} {'grad rel':>9}"
    )
    for r in res:
        print(
            f"{r['chunks']:>6} {r['overlap']:>8} {r['forward_ms']:>8.1f}"
            f" {r['forward_vs_chunks1']:>6.3f} {r['fwd_bwd_ms']:>10.1f}"
            f" {r['fwd_bwd_vs_chunks1']:>6.3f} {r['fwd_bwd_vs_forward_only']:>11.3f}"
            f" {r['max_out_diff_vs_chunks1']:>9.1e} {r['max_grad_rel_diff_vs_chunks1']:>9.1e}"
        )
    print(f"1-min load average {load_start:.2f} at the start, {load:.2f} at the end")
    result = {
        "device": device_name(),
        "moelab_version": moelab.__version__,
        "backend": "gloo, 2 ranks, 1 thread each",
        "config": {"model": MODEL, "tokens_per_rank": args.tokens, "rounds": args.rounds},
        "load_avg_1min": {"start": load_start, "end": load},
        "settings": res,
        "note": "CPU/gloo: the transfer needs the same cores as the compute, so no gain is "
        "expected; the overlap targets GPUs (unmeasured here).",
    }
    out = Path(__file__).parent / "results" / "ep_overlap_cpu.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
