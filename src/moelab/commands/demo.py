"""`moelab demo`: the main job on the embedded default, offline, in about a minute on a CPU.

Today it shows the model core working end to end on a toy corpus (the Zen of Python, which
ships with CPython, as bytes): build a tiny dots.llm1-style MoE, fit it for a few dozen steps,
generate greedily through the KV cache (checked against full recomputation), print the
per-layer expert load, and write a Hugging Face directory that moelab (and transformers, when
installed) reload with the same logits. The demo grows into data → tokens → train → generate →
analysis as those stages land.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import io
import json
import time
from pathlib import Path


def _corpus() -> bytes:
    """The Zen of Python: rot13-encoded in the standard library's `this` module."""
    with contextlib.redirect_stdout(io.StringIO()):  # importing `this` prints it
        import this
    return codecs.decode(this.s, "rot13").encode()


def _batches(data, batch: int, seq: int, steps: int, seed: int):
    import torch

    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        starts = torch.randint(0, len(data) - seq - 1, (batch,), generator=gen)
        rows = torch.stack([data[s : s + seq + 1] for s in starts.tolist()])
        yield rows[:, :-1], rows[:, 1:]


def _fit(model, data, args) -> list[float]:
    import torch

    from moelab.model.losses import cross_entropy, load_balancing_loss

    moe = model.config.moe
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    losses = []
    for step, (x, y) in enumerate(_batches(data, args.batch, args.seq, args.steps, args.seed), 1):
        out = model(x)
        ce = cross_entropy(out.logits, y)
        loss = ce + 0.01 * load_balancing_loss(out.router, moe.num_experts, moe.top_k)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(ce.item())
        if step == 1 or step % 20 == 0 or step == args.steps:
            print(f"  step {step:4d}  cross-entropy {ce.item():.3f}")
    return losses


def _generate(model, prompt, new_tokens: int):
    """Greedy decoding through the KV cache, and the same by full recomputation."""
    import torch

    from moelab.infer.kv_cache import KVCache

    ids = prompt[None]
    cache = KVCache.for_model(
        model.config, 1, ids.shape[1] + new_tokens, dtype=torch.float32, device="cpu"
    )
    with torch.no_grad():
        logits = model(ids, kv_cache=cache).logits[:, -1]
        cached = []
        for i in range(new_tokens):
            nxt = logits.argmax(-1, keepdim=True)
            cached.append(nxt)
            pos = torch.full((1, 1), ids.shape[1] + i)
            logits = model(nxt, positions=pos, kv_cache=cache).logits[:, -1]
        full = ids
        for _ in range(new_tokens):
            full = torch.cat([full, model(full).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return torch.cat(cached, dim=1)[0], full[0, ids.shape[1] :]


def _routing_table(model, x) -> list[dict]:
    import torch

    with torch.no_grad():
        out = model(x)
    rows = []
    for layer, r in zip(out.moe_layers, out.router, strict=True):
        load = r.tokens_per_expert_E.float()
        rows.append(
            {
                "layer": layer,
                "tokens_per_expert": load.long().tolist(),
                "max_violation": round((load.max() / load.mean() - 1).item(), 3),
                "dead_experts": int((load == 0).sum()),
            }
        )
    return rows


def _hf_round_trip(model, out_dir: Path, x) -> dict:
    import torch

    import moelab

    path = moelab.save_pretrained(model, out_dir / "hf")
    result = {"dir": str(path)}
    with torch.no_grad():
        ref = model(x).logits
        result["moelab_reload_max_abs_diff"] = (
            (moelab.load_pretrained(path)(x).logits - ref).abs().max().item()
        )
        try:
            import transformers
        except ImportError:
            result["transformers"] = "not installed (pip install 'moelab[hf]')"
            return result
        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        hf = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager")
        result["transformers_max_abs_diff"] = (hf(x).logits - ref).abs().max().item()
    return result


def run_demo(args: argparse.Namespace) -> int:
    import torch

    from moelab.model import ModelConfig, build_model

    torch.manual_seed(args.seed)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    cfg = ModelConfig.from_dict({"preset": args.preset, "vocab_size": 256}, args.overrides)
    model = build_model(cfg, seed=args.seed)
    print(
        f"[1/4] model: {args.preset} ({cfg.family}), {cfg.num_layers} layers, "
        f"{cfg.moe.num_experts} experts top-{cfg.moe.top_k}, "
        f"{cfg.num_params():,} parameters ({cfg.num_active_params():,} active)"
    )

    data = torch.tensor(list(_corpus()), dtype=torch.long)
    print(f"[2/4] fit on the Zen of Python ({len(data)} bytes), {args.steps} steps")
    losses = _fit(model, data, args)

    model.eval()
    prompt = torch.tensor(list(b"Beautiful is better"), dtype=torch.long)
    cached, full = _generate(model, prompt, args.new_tokens)
    text = bytes(cached.tolist()).decode("utf-8", errors="replace")
    print(f"[3/4] generate (greedy, KV cache == full recompute: {torch.equal(cached, full)}):")
    print(f"  {bytes(prompt.tolist()).decode()}|{text}")

    sample = next(_batches(data, 4, args.seq, 1, args.seed + 1))[0]
    routing = _routing_table(model, sample)
    print(f"[4/4] routing on 4×{args.seq} tokens (expert load per MoE layer):")
    for row in routing:
        print(
            f"  layer {row['layer']}: MaxVio {row['max_violation']:.2f}, "
            f"dead {row['dead_experts']}, load {row['tokens_per_expert']}"
        )
    export = _hf_round_trip(model, out_dir, sample)
    print(
        f"  HF export → {export['dir']}: reload Δ {export['moelab_reload_max_abs_diff']:.1e}, "
        f"transformers Δ {export.get('transformers_max_abs_diff', export.get('transformers'))}"
    )

    summary = {
        "preset": args.preset,
        "num_params": cfg.num_params(),
        "num_active_params": cfg.num_active_params(),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "generation_cache_matches_recompute": bool(torch.equal(cached, full)),
        "generated": text,
        "routing": routing,
        "export": export,
        "seconds": round(time.time() - t0, 1),
    }
    (out_dir / "demo.json").write_text(json.dumps(summary, indent=2))
    print(f"done in {summary['seconds']} s; summary in {out_dir / 'demo.json'}")
    ok = losses[-1] < losses[0] and summary["generation_cache_matches_recompute"]
    return 0 if ok else 1


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="run the end-to-end demo on the embedded default")
    p.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    p.add_argument("--preset", default="tiny-dots", choices=["tiny-dots", "tiny-olmoe"])
    p.add_argument("--steps", type=int, default=120, help="optimizer steps of the toy fit")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*", help="model overrides, e.g. moe.top_k=2")
    p.set_defaults(func=run_demo)
