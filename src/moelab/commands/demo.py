"""`moelab demo`: the main job on the embedded default, offline, in minutes on a CPU.

    synthetic web (WARC + a labelled split) → stage-3 classifiers trained on the labelled split
    → data stages 1–3 → BPE tokenizer → token shards → a tiny
    dots.llm1-style MoE trained with intermediate checkpoints → greedy generation through the
    KV cache → held-out perplexity against a unigram baseline → OLMoE-style routing analysis
    across the checkpoints (an HTML report) → Hugging Face export reloaded by transformers

Every stage writes its own folder under ``--out`` (the same folders the stage commands write),
so each can be inspected or re-run alone. ``--olmoe`` trains a tiny OLMoE-style model beside
the dots one on the same shards. Stage 3's classifiers (page type, quality, category, clutter
lines) are trained here, with ``moelab data train-classifier``'s code, on the synthetic web's
labelled split (other pages than the crawl); no weights are shipped.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from moelab.commands.analyze import QUALITY_FILE


def _banner(i: int, n: int, text: str) -> None:
    print(f"\n[{i}/{n}] {text}", flush=True)


TARGET_MIXTURE = {
    "reference": 0.30,
    "files": 0.17,
    "networking": 0.15,
    "numbers": 0.13,
    "text": 0.10,
    "zh": 0.15,
}
"""Category weights of the rebalanced corpus (the crawl has 40/20/17/15/8 % of its English
articles in reference/files/networking/numbers/text, and Chinese pages besides)."""
_CLASSIFIERS = {  # name → (labelled file, label field, kind)
    "page_type": ("page_type", "page_type", "document"),
    "quality": ("quality", "quality", "document"),
    "category": ("category", "category", "document"),
    "clutter": ("clutter", "clutter_lines", "clutter"),
}


def _web(out: Path, pages: int, seed: int) -> Path:
    from moelab.data.synth.web import SynthConfig, write_synthetic_web

    web = out / "web"
    if not (web / "labelled" / "summary.json").exists():
        cfg = SynthConfig(pages=pages, seed=seed, files=2, labelled_pages=max(400, pages))
        summary = write_synthetic_web(web, cfg)
        print(f"  crawl: {summary['pages']} pages; labelled split: {summary['labelled']}")
    return web


def _classifiers(out: Path, web: Path) -> dict:
    """Train (or reuse) the four stage-3 models on the labelled split; held-out scores."""
    from moelab.classify.train import TrainClassifierConfig, train_classifier

    reports = {}
    for name, (file, field, kind) in _CLASSIFIERS.items():
        model_dir = out / "classifiers" / name
        if (model_dir / "report.json").exists():  # a rerun resumes: keep the models
            reports[name] = json.loads((model_dir / "report.json").read_text())
        else:
            cfg = TrainClassifierConfig(
                docs=str(web / "labelled" / f"{file}.jsonl"),
                out_dir=str(model_dir),
                kind=kind,
                label_field=field,
                holdout_fraction=0.2,
            )
            reports[name] = train_classifier(cfg)
    summary: dict[str, Any] = {}
    for name, r in reports.items():
        if "heldout" in r:
            summary[name] = {"heldout_accuracy": round(r["heldout"]["accuracy"], 2)}
            print(
                f"  {name}: labels {r['labels']}, {r['train_docs']} training docs, "
                f"held-out accuracy {r['heldout']['accuracy']:.1f}%"
            )
    f1 = reports["clutter"]["heldout_line_f1"]
    summary["clutter_line_f1"] = {k: {m: round(v, 2) for m, v in f1[k].items()} for k in f1}
    print(f"  clutter lines, held-out ({reports['clutter']['heldout_docs']} pages):")
    print(f"    {'scorer':<12}{'precision':>10}{'recall':>8}{'F1':>8}")
    for k in ("learned", "heuristic"):
        print(f"    {k:<12}{f1[k]['precision']:>10.1f}{f1[k]['recall']:>8.1f}{f1[k]['f1']:>8.1f}")
    return summary


def _data(out: Path, web: Path, seed: int) -> tuple[Path, dict]:
    from moelab.data.config import DataConfig
    from moelab.data.funnel import format_funnel, load_funnel
    from moelab.data.runner import run_pipeline
    from moelab.data.synth.evaluate import evaluate_stage3

    models = out / "classifiers"
    cfg = DataConfig.from_dict(
        {
            "input": {"paths": [str(web / "warc")]},
            "output_dir": str(out / "data"),
            "workers": 2,
            "url_filter": {"domains_files": [str(web / "blocklist" / "domains.txt")]},
            "line_dedup": {"max_occurrences": 20},
            "stage3": {
                "page_type": {"enabled": True, "model": str(models / "page_type")},
                "clutter": {"enabled": True, "model": str(models / "clutter")},
                "quality": {"enabled": True, "model": str(models / "quality")},
                "category": {
                    "enabled": True,
                    "model": str(models / "category"),
                    "weights": TARGET_MIXTURE,
                    "seed": seed,
                },
            },
        }
    )
    run_dir = Path(run_pipeline(cfg))
    print(format_funnel(load_funnel(run_dir)))
    stage3 = evaluate_stage3(run_dir, web / "truth.jsonl")
    plan = json.loads(next(run_dir.glob("work/*_rebalance/plan.json")).read_text())
    stage3["mixture_target_pct"] = plan["target_pct"]
    stage3["mixture_before_pct"] = plan["before_pct"]
    stage3["missing_categories"] = plan["missing_categories"]
    for step in ("page_type", "quality_model"):
        r = stage3.get(step, {})
        print(
            f"  {step} vs the crawl's gold: removed {r.get('removed')}, precision "
            f"{r.get('precision')}, recall {r.get('recall')} (of {r.get('expected')} that reached it)"
        )
    print(f"  {'category':<12}{'before':>8}{'target':>8}{'achieved':>10}{'by gold':>9}   (%)")
    for c in sorted(set(plan["target_pct"]) | set(plan["before_pct"])):
        row = [
            plan["before_pct"].get(c, 0.0),
            plan["target_pct"].get(c, 0.0),
            stage3["mixture_predicted_pct"].get(c, 0.0),
            stage3["mixture_gold_pct"].get(c, 0.0),
        ]
        print(f"  {c:<12}{row[0]:>8.1f}{row[1]:>8.1f}{row[2]:>10.1f}{row[3]:>9.1f}")
    return run_dir / "docs", stage3


def _tokens(out: Path, docs: Path, vocab_size: int) -> tuple[Path, Any]:
    from moelab.tokens.config import TokenizeConfig, TrainTokenizerConfig
    from moelab.tokens.pipeline import tokenize, train_tokenizer
    from moelab.tokens.tokenizer import Tokenizer

    tok_dir, shard_dir = out / "tokenizer", out / "tokens"
    if (tok_dir / "tokenizer.json").exists():  # a rerun resumes: keep the shards' tokenizer
        tokenizer = Tokenizer.from_file(tok_dir)
    else:
        tokenizer = train_tokenizer(
            TrainTokenizerConfig(docs_dir=str(docs), out_dir=str(tok_dir), vocab_size=vocab_size)
        )
    summary = tokenize(
        TokenizeConfig(
            docs_dir=str(docs),
            out_dir=str(shard_dir),
            tokenizer=str(tok_dir),
            workers=2,
            validation_fraction=0.05,  # a small corpus needs a larger share to hold out anything
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
    train(cfg, resume="auto", log=lambda msg: print(f"  {msg}"))  # a rerun resumes
    records = [
        json.loads(line) for line in (Path(cfg.out_dir) / "metrics.jsonl").read_text().splitlines()
    ]
    first, last = records[0], records[-1]
    summary = {"first": first, "last": last}
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


def _evaluate(run_dir: Path, out: Path, tokenizer, seq_len: int) -> dict:
    from moelab.checkpoint.layout import load_model
    from moelab.eval.perplexity import (
        evaluate_perplexity,
        token_byte_lengths,
        unigram_counts,
        unigram_perplexity,
    )
    from moelab.tokens.shards import ShardReader

    valid, train = out / "tokens" / "validation", out / "tokens" / "train"
    if ShardReader(valid).num_tokens < 2:
        print("  the held-out split is empty (corpus too small): skipped")
        return {}
    byte_lengths = token_byte_lengths(tokenizer)
    model = load_model(run_dir).eval()
    ours = evaluate_perplexity(model, valid, seq_len=seq_len, byte_lengths=byte_lengths)
    base = unigram_perplexity(
        unigram_counts(train, tokenizer.vocab_size), valid, byte_lengths=byte_lengths
    )
    print(
        f"  held-out {ours.tokens:,} tokens: perplexity {ours.perplexity:.1f}, "
        f"{ours.bits_per_byte:.3f} bits/byte (unigram baseline {base.perplexity:.1f}, "
        f"{base.bits_per_byte:.3f} bits/byte)"
    )
    return {"model": ours.to_dict(), "unigram": base.to_dict()}


def _analysis(run_dir: Path, out: Path, shards: Path, preset: str) -> dict:
    from moelab.commands.analyze import analyze_run

    report = analyze_run(
        run_dir,
        shards,
        out / f"analysis_{preset}",
        data_run_dir=out / "data",
        tokenizer=out / "tokenizer",
        log=lambda msg: None,
    )
    metrics = json.loads((report.parent / "metrics.json").read_text())
    rows = []
    for ckpt in metrics["checkpoints"]:
        layers = ckpt["per_layer"]
        row = {
            "checkpoint": ckpt["name"],
            "tokens": ckpt["tokens"],
            "max_vio": sum(x["max_vio"] for x in layers) / len(layers),
            "saturation": sum(x["saturation"] for x in layers) / len(layers),
            "dead_experts": sum(x["dead_experts"] for x in layers),
        }
        rows.append(row)
        print(
            f"  {row['checkpoint']} ({row['tokens']:,} tokens): MaxVio {row['max_vio']:.2f}, "
            f"saturation vs final {row['saturation']:.2f}, dead experts {row['dead_experts']}"
        )
    print(f"  report: {report}")
    return {"report": str(report), "checkpoints": rows}


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
    n = 10
    timings: dict[str, float] = {}

    def timed(key: str, fn, *fn_args):
        start = time.time()
        result = fn(*fn_args)
        timings[key] = round(time.time() - start, 1)
        print(f"  ({timings[key]} s)")
        return result

    _banner(1, n, f"synthetic web ({args.pages} pages) and its labelled split")
    web = timed("web", _web, out, args.pages, args.seed)
    _banner(2, n, "stage-3 classifiers trained on the labelled split (no shipped weights)")
    classifiers = timed("classifiers", _classifiers, out, web)
    _banner(3, n, "data stages 1–3 (dots.llm1 recipe), stage 3 scored against the gold")
    docs, stage3 = timed("data", _data, out, web, args.seed)
    _banner(4, n, "tokenizer and token shards")
    shards, tokenizer = timed("tokens", _tokens, out, docs, args.vocab_size)
    quality = {"classifiers": classifiers, **stage3}
    (out / "data" / QUALITY_FILE).write_text(json.dumps(quality, indent=2))  # joins the report
    summary: dict[str, Any] = {
        "docs": str(docs),
        "shards": str(shards),
        "stage3": quality,
        "models": {},
        "timings": timings,
    }
    for preset in presets:
        _banner(5, n, f"train {preset} with intermediate checkpoints")
        run_dir, result = timed(f"train_{preset}", _train, out, preset, shards, tokenizer, args)
        _banner(6, n, f"generate from {run_dir.name} (greedy, KV cache)")
        gen = timed(
            f"generate_{preset}", _generate, run_dir, tokenizer, args.prompt, args.new_tokens
        )
        _banner(7, n, "perplexity and bits per byte on the held-out split")
        evaluation = timed(f"perplexity_{preset}", _evaluate, run_dir, out, tokenizer, 128)
        _banner(8, n, "routing analysis across the intermediate checkpoints (OLMoE-style)")
        routing = timed(f"analysis_{preset}", _analysis, run_dir, out, shards, preset)
        _banner(9, n, "export to the Hugging Face layout and reload")
        export = timed(f"export_{preset}", _export, run_dir, out / preset, shards)
        summary["models"][preset] = {
            "run_dir": str(run_dir),
            "loss_first": result["first"]["loss"],
            "loss_last": result["last"]["loss"],
            "tokens_per_s": result["last"]["tokens_per_s"],
            "generation": gen,
            "evaluation": evaluation,
            "routing": routing,
            "export": export,
        }
    summary["seconds"] = round(time.time() - t0, 1)
    (out / "demo.json").write_text(json.dumps(summary, indent=2))
    _banner(10, n, f"done in {summary['seconds']} s; summary in {out / 'demo.json'}")
    _print_artifacts(out, summary)
    ok = all(
        m["loss_last"] < m["loss_first"] and m["generation"]["cache_matches_recompute"]
        for m in summary["models"].values()
    )
    return 0 if ok else 1


def _print_artifacts(out: Path, summary: dict) -> None:
    print(f"  stage timings (s): {json.dumps(summary['timings'])}")
    print(f"  web crawl + truth   {out / 'web'}   (labelled split: {out / 'web' / 'labelled'})")
    print(f"  stage-3 classifiers {out / 'classifiers'}")
    print(f"  documents + funnel  {out / 'data'}   (moelab data stats {out / 'data'})")
    print(f"  tokenizer, shards   {out / 'tokenizer'}, {out / 'tokens'}")
    for preset, m in summary["models"].items():
        print(
            f"  {preset}: checkpoints {m['run_dir']}, report {m['routing']['report']}, "
            f"HF export {m['export']['dir']}"
        )
        print(f"    serve it:  moelab serve {m['run_dir']} tokenizer={out / 'tokenizer'}")
    print("  a rerun of the same command resumes: finished stages are skipped")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="run the end-to-end demo on the embedded default")
    p.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    p.add_argument("--pages", type=int, default=400, help="synthetic web pages to crawl")
    p.add_argument("--steps", type=int, default=300, help="training steps per model")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--olmoe", action="store_true", help="also train a tiny OLMoE-style model")
    p.add_argument("--prompt", default="The Python language")
    p.add_argument("--new-tokens", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_demo)
