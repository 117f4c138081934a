"""`moelab demo`: the main job on the embedded default, offline, in minutes on a CPU.

    synthetic web (WARC) → data stages 1–2 → BPE tokenizer → token shards → a tiny
    dots.llm1-style MoE trained with intermediate checkpoints → greedy generation through the
    KV cache → expert load over the checkpoints → Hugging Face export reloaded by transformers

Every stage writes its own folder under ``--out`` (the same folders the stage commands write),
so each can be inspected or re-run alone. ``--olmoe`` trains a tiny OLMoE-style model beside
the dots one on the same shards. Stages that later issues add (the model-based data stage,
the analysis report) join here as they land.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def _banner(i: int, n: int, text: str) -> None:
    print(f"\n[{i}/{n}] {text}", flush=True)


def _data(out: Path, pages: int, seed: int) -> Path:
    from moelab.data.config import DataConfig
    from moelab.data.funnel import format_funnel, load_funnel
    from moelab.data.runner import run_pipeline
    from moelab.data.synth.web import SynthConfig, write_synthetic_web

    web = out / "web"
    if not (web / "truth.jsonl").exists():
        write_synthetic_web(web, SynthConfig(pages=pages, seed=seed, files=2))
    cfg = DataConfig.from_dict(
        {
            "input": {"paths": [str(web / "warc")]},
            "output_dir": str(out / "data"),
            "workers": 2,
            "url_filter": {"domains_files": [str(web / "blocklist" / "domains.txt")]},
            "line_dedup": {"max_occurrences": 20},
        }
    )
    run_dir = Path(run_pipeline(cfg))
    print(format_funnel(load_funnel(run_dir)))
    return run_dir / "docs"


def _tokens(out: Path, docs: Path, vocab_size: int) -> tuple[Path, Any]:
    from moelab.tokens.config import TokenizeConfig, TrainTokenizerConfig
    from moelab.tokens.pipeline import tokenize, train_tokenizer

    tok_dir, shard_dir = out / "tokenizer", out / "tokens"
    tokenizer = train_tokenizer(
        TrainTokenizerConfig(docs_dir=str(docs), out_dir=str(tok_dir), vocab_size=vocab_size)
    )
    summary = tokenize(
        TokenizeConfig(
            docs_dir=str(docs), out_dir=str(shard_dir), tokenizer=str(tok_dir), workers=2
        )
    )
    print(f"  tokenizer: byte-level BPE, {tokenizer.vocab_size} ids, hash {tokenizer.hash}")
    print(f"  shards: {json.dumps(summary)}")
    return shard_dir / "train", tokenizer


def _train(out: Path, preset: str, shards: Path, tokenizer, args) -> tuple[Path, dict]:
    from moelab.train.config import TrainConfig
    from moelab.train.trainer import train

    steps = args.steps
    seq, batch = 128, 16
    cfg = TrainConfig.from_dict(
        {
            "model": {"preset": preset, "vocab_size": tokenizer.vocab_size},
            "data": {"shards": str(shards), "tokenizer_hash": tokenizer.hash},
            "optim": {"lr": 3e-3},
            "schedule": {
                "kind": "wsd",
                "warmup_steps": max(1, steps // 10),
                "decay_steps": steps // 4,
            },
            "batch": {"seq_len": seq, "micro_batch_size": batch, "global_batch_size": batch},
            # γ is 1e-3 in dots.llm1 over millions of steps; a 100-step demo needs a faster rate.
            "balance": {"bias_update_rate": 1e-2}
            if preset == "tiny-dots"
            else {"lb_coef": 0.01, "z_coef": 0.001},
            "checkpoint": {"every_tokens": steps * seq * batch // 4, "latest_every_steps": 0},
            "out_dir": str(out / f"train_{preset}"),
            "max_steps": steps,
            "seed": args.seed,
        }
    )
    summary = train(cfg, log=lambda msg: print(f"  {msg}"))
    first, last = summary["first"], summary["last"]
    print(
        f"  {preset}: loss {first['loss']:.3f} → {last['loss']:.3f} in {steps} steps, "
        f"{last['tokens']:,} tokens, {last['tokens_per_s']:.0f} tok/s, "
        f"MaxVio {first.get('max_vio', 0):.2f} → {last.get('max_vio', 0):.2f}"
    )
    return Path(cfg.out_dir), summary


def _generate(run_dir: Path, tokenizer, prompt: str, new_tokens: int) -> dict:
    import torch

    from moelab.checkpoint.layout import load_model
    from moelab.infer.kv_cache import KVCache

    model = load_model(run_dir).eval()
    ids = torch.tensor([tokenizer.encode(prompt)])
    cache = KVCache.for_model(
        model.config, 1, ids.shape[1] + new_tokens, dtype=torch.float32, device="cpu"
    )
    out_ids = []
    with torch.no_grad():
        logits = model(ids, kv_cache=cache).logits[:, -1]
        for i in range(new_tokens):
            nxt = logits.argmax(-1, keepdim=True)
            out_ids.append(int(nxt))
            if tokenizer.eos_id is not None and int(nxt) == tokenizer.eos_id:
                break
            logits = model(
                nxt, positions=torch.full((1, 1), ids.shape[1] + i), kv_cache=cache
            ).logits[:, -1]
        full = model(torch.cat([ids, torch.tensor([out_ids])], dim=1)).logits[
            0, ids.shape[1] - 1 : -1
        ]
    matches = full.argmax(-1).tolist() == out_ids
    text = tokenizer.decode(out_ids)
    print(
        f"  prompt: {prompt!r}\n  completion: {text!r}\n  KV-cache decode == full recompute: {matches}"
    )
    return {"prompt": prompt, "completion": text, "cache_matches_recompute": matches}


def _routing_over_checkpoints(run_dir: Path, shards: Path) -> list[dict]:
    import torch

    from moelab.checkpoint.layout import list_checkpoints, load_model
    from moelab.tokens.loader import TokenLoader
    from moelab.train.balance import load_metrics

    sample = next(
        iter(TokenLoader(shards, seq_len=128, batch_size=8, seed=123, as_torch=True))
    ).inputs
    rows = []
    for ckpt in list_checkpoints(run_dir):
        model = load_model(ckpt).eval()
        with torch.no_grad():
            out = model(sample)
        metrics = load_metrics(torch.stack([r.tokens_per_expert_E for r in out.router]))
        rows.append(
            {
                "checkpoint": ckpt.name,
                "max_vio": metrics["max_vio"],
                "dead_experts": metrics["dead_experts"],
                "max_vio_per_layer": metrics["max_vio_per_layer"],
            }
        )
        print(
            f"  {ckpt.name}: MaxVio {metrics['max_vio']:.2f} (per layer {metrics['max_vio_per_layer']}), "
            f"dead experts {metrics['dead_experts']}"
        )
    return rows


def _export(run_dir: Path, out: Path, shards: Path) -> dict:
    import torch

    import moelab
    from moelab.checkpoint.layout import load_model
    from moelab.tokens.loader import TokenLoader

    model = load_model(run_dir).eval()
    path = moelab.save_pretrained(model, out / "hf")
    x = next(iter(TokenLoader(shards, seq_len=64, batch_size=2, seed=7, as_torch=True))).inputs
    result: dict[str, Any] = {"dir": str(path)}
    with torch.no_grad():
        ref = model(x).logits
        result["moelab_reload_max_abs_diff"] = (
            (moelab.load_pretrained(path)(x).logits - ref).abs().max().item()
        )
        try:
            import transformers
        except ImportError:
            result["transformers"] = "not installed (pip install 'moelab[hf]')"
        else:
            transformers.logging.set_verbosity_error()
            transformers.utils.logging.disable_progress_bar()
            hf = transformers.AutoModelForCausalLM.from_pretrained(
                path, attn_implementation="eager"
            )
            result["transformers_max_abs_diff"] = (hf(x).logits - ref).abs().max().item()
    print(
        f"  {path}: moelab reload Δ {result['moelab_reload_max_abs_diff']:.1e}, "
        f"transformers Δ {result.get('transformers_max_abs_diff', result.get('transformers'))}"
    )
    return result


def run_demo(args: argparse.Namespace) -> int:
    import torch

    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    presets = ["tiny-dots"] + (["tiny-olmoe"] if args.olmoe else [])
    n = 7
    _banner(1, n, f"synthetic web ({args.pages} pages) → data stages 1–2 (dots.llm1 recipe)")
    docs = _data(out, args.pages, args.seed)
    _banner(2, n, "tokenizer and token shards")
    shards, tokenizer = _tokens(out, docs, args.vocab_size)
    summary: dict[str, Any] = {"docs": str(docs), "shards": str(shards), "models": {}}
    for preset in presets:
        _banner(3, n, f"train {preset} with intermediate checkpoints")
        run_dir, result = _train(out, preset, shards, tokenizer, args)
        _banner(4, n, f"generate from {run_dir.name} (greedy, KV cache)")
        gen = _generate(run_dir, tokenizer, args.prompt, args.new_tokens)
        _banner(5, n, "expert load across the intermediate checkpoints")
        routing = _routing_over_checkpoints(run_dir, shards)
        _banner(6, n, "export to the Hugging Face layout and reload")
        export = _export(run_dir, out / preset, shards)
        summary["models"][preset] = {
            "run_dir": str(run_dir),
            "loss_first": result["first"]["loss"],
            "loss_last": result["last"]["loss"],
            "tokens_per_s": result["last"]["tokens_per_s"],
            "generation": gen,
            "routing": routing,
            "export": export,
        }
    summary["seconds"] = round(time.time() - t0, 1)
    (out / "demo.json").write_text(json.dumps(summary, indent=2))
    _banner(7, n, f"done in {summary['seconds']} s; summary in {out / 'demo.json'}")
    ok = all(
        m["loss_last"] < m["loss_first"] and m["generation"]["cache_matches_recompute"]
        for m in summary["models"].values()
    )
    return 0 if ok else 1


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="run the end-to-end demo on the embedded default")
    p.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    p.add_argument("--pages", type=int, default=400, help="synthetic web pages to crawl")
    p.add_argument("--steps", type=int, default=100, help="training steps per model")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--olmoe", action="store_true", help="also train a tiny OLMoE-style model")
    p.add_argument("--prompt", default="The Python language")
    p.add_argument("--new-tokens", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_demo)
