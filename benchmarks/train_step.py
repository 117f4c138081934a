"""Tokens/s of one training step: moelab vs transformers' Dots1/OLMoE on the same config and batch.

Both sides start from identical weights (moelab writes an HF directory, transformers loads it)
and run the same step: forward, fp32 cross-entropy, backward, gradient clipping, AdamW.
transformers is timed under each experts implementation it registers, with the fused AdamW its
``Trainer`` uses by default on torch >= 2.8 (``adamw_torch_fused``); moelab runs what
``moelab train`` runs by default in one process: the LM head and loss fused
(``model(x, labels=y)``), fused AdamW. "moelab unfused loss" is the same step with logits and
a separate cross-entropy, to show what the fusion buys. "moelab compiled" is moelab's step with
``compile.mode=blocks`` (each transformer block's forward through ``torch.compile``, inductor
by default: C++/OpenMP kernels on CPU, Triton on GPU; ``--compile-backend``, ``--compile-mode``);
its first step, which compiles, is reported as ``compile_s`` and not timed. Contenders are timed
round-robin so background load hits them alike; each row is the median step.

FLOPs and the ceiling. A step costs ``model_flops_per_token`` × tokens: 6·N_active (every matmul
weight a token touches, LM head included, forward + backward) plus 6·L·T·H·d for causal
attention scores and values. MFU is reported where the device peak is known (GPUs). A CPU's
peak is not in a table, so the run measures one: the best 1024³ matmul on the same threads,
taken between the rounds so it sees the same background load as the steps (the median over
rounds). Each row's model GFLOP/s is reported as a share of it. That share is a roofline:
the step's matmuls are smaller and thinner than 1024³ (128-wide hidden states, 64-row expert
blocks), so they run at best at that rate, and the step also does non-matmul work (softmax,
norms, routing, the optimizer) that the FLOP count leaves out. "5x eager needs" is the share
of the peak a step 5 times faster than transformers' eager step would have to reach; near or
above 100% no implementation reaches it on this device.

Usage:
    python -P benchmarks/train_step.py                         # tiny-olmoe and tiny-dots on CPU
    python -P benchmarks/train_step.py --threads 1 --out benchmarks/results/train_step_cpu_1thread.json
    python -P benchmarks/train_step.py --device cuda --presets olmoe-1b-7b --layers 4 --seq 4096 \
        --dtype bfloat16                                        # GPU: compiled and eager rows
Writes benchmarks/results/train_step_<device>.json (with the load average before and after).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

import moelab
from moelab.common.device import device_name, measured_matmul_gflops
from moelab.model import ModelConfig, build_model
from moelab.model.losses import cross_entropy
from moelab.model.transformer import model_flops_per_token
from moelab.parallel.compile import apply_compile
from moelab.train.metrics import detect_peak_tflops

HF_IMPLS = ("eager", "grouped_mm", "batched_mm")


def _step_fn(model, x, y, dtype, fused_loss: bool):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    autocast = dtype == torch.bfloat16

    def step():
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            if fused_loss:
                loss = model(x, labels=y).loss
            else:
                loss = cross_entropy(model(x).logits, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step


def bench(
    cfg: ModelConfig,
    batch: int,
    seq: int,
    device,
    dtype,
    rounds: int,
    min_time: float,
    hf_impls,
    with_unfused: bool = True,
    compile_mode: str = "blocks",
    compile_backend: str = "inductor",
):
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    model = build_model(cfg, device="cpu", seed=0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (batch, seq + 1), generator=gen)
    inputs, targets = x[:, :-1].to(device), x[:, 1:].to(device)
    steps = {}
    with tempfile.TemporaryDirectory() as tmp:
        moelab.save_pretrained(model, Path(tmp) / "hf")
        for impl in hf_impls:
            hf = transformers.AutoModelForCausalLM.from_pretrained(
                Path(tmp) / "hf", experts_implementation=impl, attn_implementation="sdpa"
            ).to(device)
            hf.train()
            steps[f"transformers {impl}"] = _step_fn(hf, inputs, targets, dtype, False)
    ours = model.to(device)
    ours.train()
    steps["moelab"] = _step_fn(ours, inputs, targets, dtype, True)
    if with_unfused:
        unfused = copy.deepcopy(ours)  # its own weights and optimizer: the same start
        steps["moelab unfused loss"] = _step_fn(unfused, inputs, targets, dtype, False)
    if compile_mode != "none":
        compiled = copy.deepcopy(ours)  # copied before compiling: a copy would call the original
        apply_compile(compiled, compile_mode, compile_backend)
        steps["moelab compiled"] = _step_fn(compiled, inputs, targets, dtype, True)
    first_losses, first_s = {}, {}
    for name, fn in steps.items():  # warm-up (compiles), and the same start loss
        t0 = time.perf_counter()
        first_losses[name] = fn()
        first_s[name] = time.perf_counter() - t0
    times = {name: [] for name in steps}
    peaks = []  # the matmul peak, measured each round as well: it sees the same load
    start = time.perf_counter()
    r = 0
    while r < rounds or time.perf_counter() - start < min_time:
        for name, fn in steps.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
        peaks.append(measured_matmul_gflops(device, dtype, seconds=0.3))
        r += 1
        if r >= 4 * rounds:
            break
    tokens = batch * seq
    peak = detect_peak_tflops(device)
    flops = model_flops_per_token(cfg, seq)
    matmul_gflops = statistics.median(peaks)
    rows = []
    for name, ts in times.items():
        sec = statistics.median(ts)
        tps = tokens / sec
        rows.append(
            {
                "impl": name,
                "step_ms": sec * 1e3,
                "tokens_per_s": tps,
                "mfu": tps * flops / (peak * 1e12) if peak else None,
                "model_gflops": tps * flops / 1e9,
                "of_measured_matmul_peak": tps * flops / 1e9 / matmul_gflops,
                "matmul_peak_gflops": matmul_gflops,
                "first_loss": first_losses[name],
                "compile_s": first_s[name] if name == "moelab compiled" else None,
            }
        )
    by = {r_["impl"]: r_ for r_ in rows}
    hf_rows = [r_ for r_ in rows if r_["impl"].startswith("transformers")]
    fastest = max(hf_rows, key=lambda r_: r_["tokens_per_s"]) if hf_rows else None
    eager = by.get("transformers eager")
    for r_ in rows:
        r_["vs_hf_eager"] = r_["tokens_per_s"] / eager["tokens_per_s"] if eager else None
        r_["vs_hf_fastest"] = r_["tokens_per_s"] / fastest["tokens_per_s"] if fastest else None
        # The share of the measured matmul peak a step 5x faster than eager would need.
        r_["five_x_eager_needs_of_peak"] = 5 * eager["of_measured_matmul_peak"] if eager else None
    return rows


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--presets", nargs="*", default=["tiny-olmoe", "tiny-dots"])
    p.add_argument(
        "--layers", type=int, default=None, help="override num_layers (full-size presets)"
    )
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--min-time", type=float, default=10.0)
    p.add_argument("--hf-impls", nargs="*", default=list(HF_IMPLS))
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--no-unfused", action="store_true", help="skip the 'moelab unfused loss' row")
    p.add_argument(
        "--compile-mode",
        default="blocks",
        choices=["none", "blocks", "model"],
        help="the 'moelab compiled' row (none: no such row)",
    )
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    results = {}
    for preset in args.presets:
        overrides = [f"num_layers={args.layers}"] if args.layers else []
        cfg = ModelConfig.from_dict({"preset": preset}, overrides)
        rows = bench(
            cfg,
            args.batch,
            args.seq,
            device,
            dtype,
            args.rounds,
            args.min_time,
            args.hf_impls,
            with_unfused=not args.no_unfused,
            compile_mode=args.compile_mode,
            compile_backend=args.compile_backend,
        )
        results[preset] = rows
        print(f"\nmeasured fp32/bf16 matmul peak here: {rows[0]['matmul_peak_gflops']:.1f} GFLOP/s")
        print(
            f"\n{preset}: batch {args.batch} × seq {args.seq}, {args.dtype}, {device_name(device)}, "
            f"{torch.get_num_threads()} threads"
        )
        print(
            f"{'impl':<26} {'step ms':>9} {'tokens/s':>10} {'MFU':>6} {'GFLOP/s':>8} {'of mm peak':>10} "
            f"{'vs HF eager':>11} {'vs HF fastest':>13} {'loss@0':>8}"
        )
        for r in rows:
            mfu = f"{r['mfu'] * 100:5.1f}%" if r["mfu"] else "    -"
            print(
                f"{r['impl']:<26} {r['step_ms']:9.1f} {r['tokens_per_s']:10.0f} {mfu:>6} "
                f"{r['model_gflops']:8.1f} {r['of_measured_matmul_peak'] * 100:9.1f}% "
                f"{r['vs_hf_eager'] or 0:10.2f}x {r['vs_hf_fastest'] or 0:12.2f}x {r['first_loss']:8.4f}"
            )
        for r in rows:
            if r["compile_s"] is not None:
                print(
                    f"{r['impl']}: first step (compiling, {args.compile_mode}, "
                    f"{args.compile_backend}) {r['compile_s']:.1f} s"
                )
        if rows[0]["five_x_eager_needs_of_peak"] is not None:
            print(
                f"5x transformers eager needs {rows[0]['five_x_eager_needs_of_peak'] * 100:.0f}% "
                "of the measured matmul peak"
            )
    out = Path(args.out or Path(__file__).parent / "results" / f"train_step_{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "device": device_name(device),
                "torch": torch.__version__,
                "batch": args.batch,
                "seq": args.seq,
                "dtype": args.dtype,
                "threads": torch.get_num_threads(),
                "compile": {"mode": args.compile_mode, "backend": args.compile_backend},
                "load_avg_before": load_before,
                "load_avg_after": os.getloadavg(),
                "results": results,
            },
            indent=2,
        )
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
