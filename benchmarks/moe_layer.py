"""Forward+backward of one MoE layer: moelab vs transformers' own block vs a dense matmul.

Every contender gets the same weights, input and output gradient, so they do the same work:
moelab's ``MoELayer`` (grouped GEMM, and its per-expert loop), transformers'
``OlmoeSparseMoeBlock`` under each experts implementation it registers (``eager`` loop,
``grouped_mm``, ``batched_mm``), and a dense SwiGLU over the T·K routed rows, which performs
exactly the expert GEMM FLOPs with no routing at all (the roofline for the experts).

FLOPs counted: the expert GEMMs only, 3 × 6·S·D·F for forward+backward (S = T·K rows).
TFLOP/s = those FLOPs / measured time of the whole layer (router, dispatch and combine included),
so "vs dense" is what routing costs on top of the same matmuls.

Usage:
    python benchmarks/moe_layer.py                      # CPU: the two shapes of the issue
    python benchmarks/moe_layer.py --device cuda        # adds the OLMoE layer at 16k tokens
Writes benchmarks/results/moe_layer_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from moelab.common.device import device_name
from moelab.model.config import ModelConfig, MoEConfig
from moelab.model.layers import SwiGLU
from moelab.model.moe import MoELayer


@dataclass
class Shape:
    name: str
    hidden: int
    width: int
    experts: int
    top_k: int
    tokens: int

    @property
    def rows(self) -> int:
        return self.tokens * self.top_k

    def expert_flops(self) -> float:
        return 3 * 6 * self.rows * self.hidden * self.width


SHAPES = {
    "olmoe": Shape("olmoe", 2048, 1024, 64, 8, 512),
    "small": Shape("small", 512, 256, 64, 8, 4096),
    "olmoe-16k": Shape("olmoe-16k", 2048, 1024, 64, 8, 16384),
    "tiny-olmoe": Shape("tiny-olmoe", 128, 64, 16, 4, 2048),
}
BATCHED_MM_LIMIT_BYTES = 4 * 1024**3


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_round_robin(fns: dict, device: torch.device, min_time: float, max_rounds: int) -> dict:
    """Median seconds per call of each fn, timed in interleaved rounds.

    Interleaving makes the ratios between contenders robust to background load: a slow
    moment hits every contender of that round, not just one of them.
    """
    for fn in fns.values():
        fn()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    rounds = 0
    while rounds < max_rounds and (time.perf_counter() - start < min_time or rounds < 3):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
        rounds += 1
    return {name: statistics.median(ts) for name, ts in times.items()}


def build_moelab(shape: Shape, impl: str, dtype, device) -> MoELayer:
    cfg = ModelConfig(
        family="olmoe",
        hidden_size=shape.hidden,
        intermediate_size=shape.width,
        moe=MoEConfig(
            num_experts=shape.experts,
            top_k=shape.top_k,
            expert_intermediate_size=shape.width,
            dispatch=impl,
        ),
    )
    return MoELayer(cfg).to(device=device, dtype=dtype)


def build_hf(shape: Shape, impl: str, dtype, device):
    from transformers import OlmoeConfig
    from transformers.models.olmoe.modeling_olmoe import OlmoeSparseMoeBlock

    config = OlmoeConfig(
        hidden_size=shape.hidden,
        intermediate_size=shape.width,
        num_experts=shape.experts,
        num_experts_per_tok=shape.top_k,
    )
    config._experts_implementation = impl
    return OlmoeSparseMoeBlock(config).to(device=device, dtype=dtype)


def shared_weights(shape: Shape, dtype, device, seed: int = 0) -> dict[str, torch.nn.Parameter]:
    """One set of parameters that every contender uses (same numbers, one copy in memory)."""
    gen = torch.Generator().manual_seed(seed)

    def param(*size):
        return torch.nn.Parameter((torch.randn(*size, generator=gen) * 0.02).to(device, dtype))

    return {
        "gate": param(shape.experts, shape.hidden),
        "gate_up": param(shape.experts, 2 * shape.width, shape.hidden),
        "down": param(shape.experts, shape.hidden, shape.width),
    }


def attach(block, w) -> None:
    block.gate.weight = w["gate"]
    block.experts.gate_up_proj = w["gate_up"]
    block.experts.down_proj = w["down"]


def fwd_bwd(block, x, grad, moelab: bool):
    def run():
        block.zero_grad(set_to_none=True)
        xx = x.detach().requires_grad_()
        y = block(xx)[0] if moelab else block(xx)
        y.backward(grad)
        return y

    return run


CONTENDERS = [
    ("hf grouped_mm", "hf", "grouped_mm"),
    ("hf eager", "hf", "eager"),
    ("hf batched_mm", "hf", "batched_mm"),
    ("moelab grouped_mm", "moelab", "grouped_mm"),
    ("moelab loop", "moelab", "loop"),
]
DENSE = "dense SwiGLU (same FLOPs)"


def bench_shape(shape: Shape, dtype, device, args) -> list[dict]:
    w = shared_weights(shape, dtype, device)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, shape.tokens, shape.hidden, generator=gen).to(device, dtype)
    grad = (torch.randn(1, shape.tokens, shape.hidden, generator=gen) * 1e-2).to(device, dtype)
    dtype_name = str(dtype).removeprefix("torch.")
    rows, fns, outputs = [], {}, {}
    for name, kind, impl in CONTENDERS:
        if args.only and name not in args.only:
            continue
        if impl == "batched_mm":
            need = shape.rows * 3 * shape.width * shape.hidden * torch.finfo(dtype).bits // 8
            if need > BATCHED_MM_LIMIT_BYTES:
                rows.append(
                    _row(
                        shape,
                        dtype_name,
                        name,
                        None,
                        None,
                        f"skipped: gathers per-row weights, {need / 2**30:.0f} GiB",
                    )
                )
                continue
        if kind == "hf":
            block = build_hf(shape, impl, dtype, device)
        else:
            block = build_moelab(shape, impl, dtype, device)
        attach(block, w)
        fns[name] = fwd_bwd(block, x, grad, kind == "moelab")
        outputs[name] = fns[name]().detach().float()

    dense = SwiGLU(shape.hidden, shape.width).to(device, dtype)
    xd = torch.randn(shape.rows, shape.hidden, generator=gen).to(device, dtype)
    gd = torch.randn(shape.rows, shape.hidden, generator=gen).to(device, dtype)

    def run_dense():
        dense.zero_grad(set_to_none=True)
        dense(xd.detach().requires_grad_()).backward(gd)

    fns[DENSE] = run_dense
    seconds = time_round_robin(fns, device, args.min_time, args.max_rounds)
    reference = outputs.get("hf grouped_mm")
    for name, sec in seconds.items():
        diff = None
        if name in outputs and reference is not None:
            diff = (outputs[name] - reference).abs().max().item()
        rows.append(_row(shape, dtype_name, name, sec, diff, ""))
    return rows


def _row(shape: Shape, dtype: str, impl: str, seconds, diff, note: str) -> dict:
    return {
        "shape": shape.name,
        "dtype": dtype,
        "impl": impl,
        "ms": None if seconds is None else seconds * 1e3,
        "tflops": None if seconds is None else shape.expert_flops() / seconds / 1e12,
        "max_abs_diff_vs_hf_grouped": diff,
        "note": note,
    }


def add_ratios(rows: list[dict]) -> None:
    by = {(r["shape"], r["dtype"], r["impl"]): r for r in rows}
    for r in rows:
        key = (r["shape"], r["dtype"])
        dense = by.get((*key, DENSE))
        eager = by.get((*key, "hf eager"))
        grouped = by.get((*key, "hf grouped_mm"))
        if r["ms"] is None:
            continue
        r["vs_dense"] = dense["ms"] / r["ms"] if dense and dense["ms"] else None
        r["speedup_vs_hf_eager"] = eager["ms"] / r["ms"] if eager and eager["ms"] else None
        r["speedup_vs_hf_grouped"] = grouped["ms"] / r["ms"] if grouped and grouped["ms"] else None


def print_table(rows: list[dict]) -> None:
    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    header = f"{'shape':<10} {'dtype':<9} {'impl':<26} {'ms':>9} {'TFLOP/s':>8} {'vs dense':>8} {'vs HF eager':>11} {'vs HF grouped':>13} {'max|Δ|':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['shape']:<10} {r['dtype']:<9} {r['impl']:<26} {fmt(r['ms'], '9.1f')} "
            f"{fmt(r['tflops'], '8.3f')} {fmt(r.get('vs_dense'), '8.2f')} "
            f"{fmt(r.get('speedup_vs_hf_eager'), '10.1f')}x {fmt(r.get('speedup_vs_hf_grouped'), '12.2f')}x "
            f"{fmt(r['max_abs_diff_vs_hf_grouped'], '8.1e')} {r['note']}"
        )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--shapes", nargs="*", default=None, help=f"from {list(SHAPES)}")
    p.add_argument("--dtypes", nargs="*", default=["float32", "bfloat16"])
    p.add_argument(
        "--only", nargs="*", default=[], help="run only these contenders (names as printed)"
    )
    p.add_argument("--min-time", type=float, default=3.0, help="seconds of timing per contender")
    p.add_argument("--max-rounds", type=int, default=20)
    p.add_argument(
        "--out", default=None, help="JSON path (default benchmarks/results/moe_layer_<device>.json)"
    )
    args = p.parse_args()
    device = torch.device(args.device)
    shapes = args.shapes or (
        ["olmoe", "small", "olmoe-16k"] if device.type == "cuda" else ["olmoe", "small"]
    )
    rows = []
    for name in shapes:
        for dt in args.dtypes:
            rows += bench_shape(SHAPES[name], getattr(torch, dt), device, args)
    add_ratios(rows)
    print(f"device: {device_name(device)}; torch {torch.__version__}")
    print_table(rows)
    out = Path(args.out or Path(__file__).parent / "results" / f"moe_layer_{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    import transformers

    out.write_text(
        json.dumps(
            {
                "device": device_name(device),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "shapes": {n: asdict(SHAPES[n]) for n in shapes},
                "flops_counted": "expert GEMMs, fwd+bwd = 18*S*D*F",
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
