"""Expert-parallel MoE layer with the all-to-all overlapped with expert compute, on CPU (gloo).

Two gloo processes each hold half the experts of one MoE layer; ``parallel.ep_overlap_chunks``
= 1, 2, 4 splits each rank's tokens into that many pieces so piece i's all-to-all runs while
piece i-1's experts compute (``AllToAllDispatcher.run``). The settings run round-robin,
``--rounds`` times, in the same processes, so background load hits them alike; the report
gives the median forward and forward+backward time of each, its ratio to chunks = 1, and the
largest output difference from chunks = 1.

What to expect here: no reliable gain. On 2 CPU cores the gloo transfer is a memcpy through
the loopback that needs a core itself, and the two ranks already use both; the overlap is for
GPUs, where the all-to-all runs on the network/NVLink engines while the SMs compute. Two runs
on the shared 2-core machine (load 3.5-6) gave forward ratios for 4 chunks of 0.86 and 0.70
and for 2 chunks of 1.29 and 0.72: within the noise, so no claim either way. Chunking is
exact here (largest output difference 0.0).

Usage:
    python -P benchmarks/ep_overlap.py [--rounds 5] [--tokens 2048]
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

CHUNKS = (1, 2, 4)
MODEL = {
    "preset": "tiny-dots",
    "hidden_size": 512,
    "moe": {"num_experts": 16, "top_k": 4, "expert_intermediate_size": 256},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _layer(chunks: int) -> MoELayer:
    from moelab.parallel.expert import apply_expert_parallel

    cfg = ModelConfig.from_dict(MODEL)
    torch.manual_seed(0)
    layer = MoELayer(cfg)
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.02)
    apply_expert_parallel(layer, dist.group.WORLD, overlap_chunks=chunks)
    return layer


def _time(fn) -> float:
    dist.barrier()
    t0 = time.perf_counter()
    fn()
    dist.barrier()
    return time.perf_counter() - t0


def _worker(rank: int, world: int, port: int, args, out_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    x = torch.randn(
        1, args.tokens, MODEL["hidden_size"], generator=torch.Generator().manual_seed(rank)
    )
    layers = {c: _layer(c) for c in CHUNKS}
    fwd: dict[int, list[float]] = {c: [] for c in CHUNKS}
    fwd_bwd: dict[int, list[float]] = {c: [] for c in CHUNKS}
    outs = {}
    for r in range(args.rounds + 1):  # round 0 warms up
        for c, layer in layers.items():
            with torch.no_grad():
                t = _time(lambda layer=layer: layer(x))
            xx = x.clone().requires_grad_()
            t2 = _time(lambda layer=layer, xx=xx: layer(xx)[0].square().sum().backward())
            if r:
                fwd[c].append(t)
                fwd_bwd[c].append(t2)
            else:  # every rank: the layer's all-to-alls need both
                with torch.no_grad():
                    outs[c] = layer(x)[0]
    if rank == 0:
        res = {}
        for c in CHUNKS:
            f, fb = statistics.median(fwd[c]), statistics.median(fwd_bwd[c])
            res[c] = {
                "forward_ms": round(f * 1e3, 2),
                "forward_vs_chunks1": round(f / statistics.median(fwd[1]), 3),
                "fwd_bwd_ms": round(fb * 1e3, 2),
                "fwd_bwd_vs_chunks1": round(fb / statistics.median(fwd_bwd[1]), 3),
                "max_out_diff_vs_chunks1": (outs[c] - outs[1]).abs().max().item(),
            }
        Path(out_path).write_text(json.dumps(res))
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=2048, help="tokens per rank")
    args = ap.parse_args()
    tmp = Path(__file__).parent / "results" / ".ep_overlap_tmp.json"
    mp.spawn(_worker, args=(2, _free_port(), args, str(tmp)), nprocs=2, join=True)
    res = {int(k): v for k, v in json.loads(tmp.read_text()).items()}
    tmp.unlink()
    print(
        f"{'chunks':>6} {'fwd ms':>8} {'ratio':>6} {'fwd+bwd ms':>10} {'ratio':>6} {'max diff':>9}"
    )
    for c, r in res.items():
        print(
            f"{c:>6} {r['forward_ms']:>8.1f} {r['forward_vs_chunks1']:>6.3f} {r['fwd_bwd_ms']:>10.1f}"
            f" {r['fwd_bwd_vs_chunks1']:>6.3f} {r['max_out_diff_vs_chunks1']:>9.1e}"
        )
    result = {
        "device": device_name(),
        "moelab_version": moelab.__version__,
        "backend": "gloo, 2 ranks, 1 thread each",
        "config": {"model": MODEL, "tokens_per_rank": args.tokens, "rounds": args.rounds},
        "load_avg_1min": os.getloadavg()[0],
        "chunks": res,
        "note": "CPU/gloo: the transfer needs the same cores as the compute, so no gain is "
        "expected; the overlap targets GPUs (unmeasured here).",
    }
    out = Path(__file__).parent / "results" / "ep_overlap_cpu.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
