"""Routing collection speed: moelab's analysis forward vs transformers with router outputs.

For each preset, one model's weights are written as an HF directory; moelab's
``analysis.collect.route`` (expert ids per token, layer and slot) and transformers'
``model(ids, output_router_logits=True)`` (its way to expose routing) run on the same tokens,
round-robin, under ``inference_mode``. Reports tokens/s and the ratio.

Usage:
    python -P benchmarks/analysis.py [--presets tiny-olmoe tiny-dots] [--seqs 32] [--seq-len 256]
Writes benchmarks/results/analysis_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import moelab
from moelab.analysis.collect import route
from moelab.common.device import device_name
from moelab.model import ModelConfig, build_model


def bench(
    preset: str, seqs: int, seq_len: int, batch: int, rounds: int, device: torch.device
) -> dict:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    cfg = ModelConfig.from_dict({"preset": preset})
    model = build_model(cfg, seed=0).to(device).eval()
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (seqs, seq_len), dtype=np.int64)
    fns = {"moelab collect": lambda: route(model, ids, batch)}
    with tempfile.TemporaryDirectory() as tmp:
        moelab.save_pretrained(model, Path(tmp) / "hf")
        for impl in ("eager", "grouped_mm"):
            hf = (
                transformers.AutoModelForCausalLM.from_pretrained(
                    Path(tmp) / "hf", experts_implementation=impl, attn_implementation="sdpa"
                )
                .to(device)
                .eval()
            )

            def run(hf=hf):
                with torch.inference_mode():
                    for i in range(0, seqs, batch):
                        x = torch.from_numpy(ids[i : i + batch]).to(device)
                        hf(x, output_router_logits=True)

            fns[f"transformers {impl} + router logits"] = run
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    tokens = seqs * seq_len
    rows = {name: tokens / statistics.median(ts) for name, ts in times.items()}
    return {
        name: {"tokens_per_s": tps, "vs_moelab": tps / rows["moelab collect"]}
        for name, tps in rows.items()
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--presets", nargs="*", default=["tiny-olmoe", "tiny-dots"])
    p.add_argument("--seqs", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    device = torch.device(args.device)
    results = {}
    print(f"device: {device_name(device)}; {args.seqs} × {args.seq_len} tokens, batch {args.batch}")
    print(f"{'preset':<12} {'impl':<40} {'tokens/s':>10} {'moelab ×':>9}")
    for preset in args.presets:
        results[preset] = bench(preset, args.seqs, args.seq_len, args.batch, args.rounds, device)
        for name, r in results[preset].items():
            speedup = 1 / r["vs_moelab"]
            print(f"{preset:<12} {name:<40} {r['tokens_per_s']:10.0f} {speedup:8.2f}x")
    out = Path(args.out or Path(__file__).parent / "results" / f"analysis_{device.type}.json")
    out.write_text(
        json.dumps(
            {
                "device": device_name(device),
                "torch": torch.__version__,
                "seqs": args.seqs,
                "seq_len": args.seq_len,
                "results": results,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
