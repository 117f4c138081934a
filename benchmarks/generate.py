"""Generation speed: moelab's engine against transformers' ``generate()``, and the server under load.

Both sides get the same random weights (moelab builds the model, ``save_pretrained`` writes it,
transformers loads that directory) and the same prompts (equal lengths, so transformers needs
no padding), greedy, no stop token. Reported per batch size:

* prefill tokens/s: prompt tokens / time to the first generated token;
* decode tokens/s: generated tokens after the first / the time they took;
* prefill GFLOP/s (``prefill_flops``: the forward's matmul FLOPs) as a share of this machine's
  measured 1024³ matmul rate on the same threads (``measured_matmul_gflops``: the faster of
  torch's MKL and oneDNN), and the share a prefill twice as fast as transformers' would need.
  The FLOPs are the full model's for both sides: moelab's engine skips the final layer's work
  at positions whose output no one reads (all but each prompt's last), so its rate is
  work-equivalent, not FLOPs executed.

What the engine does that transformers does not, on CPU in fp32 (each can be turned off to see
its share): the routed experts in one C call per layer (``moelab.infer.cpu_kernel``;
``MOELAB_CPU_KERNEL=0``), projections of 32+ rows through torch's oneDNN matmul instead of
MKL's, which runs its AVX2 code on AMD CPUs (``MOELAB_ONEDNN=0``; on an Intel CPU expect less
from this), and the final layer at the last positions only. Which of these ran is in the JSON.

The four timed calls (moelab and transformers, 1 and N new tokens) run round-robin, median of
--rounds, so background load hits both sides alike; the ratios are the numbers to read. Both
sides' greedy tokens are compared once per batch (``same_tokens``). transformers runs with its
defaults (SDPA attention, its default experts implementation, DynamicCache). The engine keeps
freed heap memory in the process (``moelab.infer.memory``, glibc's mallopt); the setting is
process-wide and made before the first timed call, so transformers runs under it too.

Then the OpenAI server (uvicorn on 127.0.0.1) is loaded by 1, 4 and 16 concurrent clients, each
sending --requests completions (the clients are threads of this process); reported: completion
tokens per wall second and per CPU second of the process (server, engine and clients; the one
to read on a shared machine), and the mean number of requests decoded per engine step.

Usage:
    python -P benchmarks/generate.py      # CPU: tiny-dots and tiny-olmoe, batch 1 and 8
    OMP_WAIT_POLICY=PASSIVE python -P benchmarks/generate.py --threads 2   # shared machine:
        # OpenMP threads that spin while waiting burn CPU time that counts against both sides
    python -P benchmarks/generate.py --device cuda --presets olmoe-1b-7b --dtype bfloat16
Writes benchmarks/results/generate_<device>.json (or --out).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from moelab.checkpoint.hf import save_pretrained
from moelab.common.device import device_name, measured_matmul_gflops
from moelab.infer import cpu_kernel, fast_layers
from moelab.infer.chat import builtin_template
from moelab.infer.config import ServeConfig, ServeLimits
from moelab.infer.engine import Engine
from moelab.infer.sampling import SamplingParams
from moelab.infer.text import TextGenerator
from moelab.model import build_model, get_preset
from moelab.model.config import ModelConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def small_config(preset: str) -> ModelConfig:
    """``small``: OLMoE's architecture at 8 layers × 512 wide, 32 experts top-4, 8k vocabulary."""
    if preset != "small":
        return get_preset(preset)
    cfg = get_preset("tiny-olmoe")
    cfg.hidden_size, cfg.num_layers, cfg.vocab_size = 512, 8, 8192
    cfg.attention.num_heads, cfg.attention.num_kv_heads, cfg.attention.head_dim = 8, 8, 64
    cfg.moe.num_experts, cfg.moe.top_k, cfg.moe.expert_intermediate_size = 32, 4, 256
    cfg.intermediate_size = 256
    return cfg


def prefill_flops(cfg: ModelConfig, batch: int, prompt_len: int) -> float:
    """Forward matmul FLOPs of prefilling ``batch`` prompts of ``prompt_len`` tokens.

    2·N per prompt token for every weight it touches (active experts, router, attention
    projections; not the input embedding, a lookup), the LM head at each prompt's last token
    only, and causal attention: the query at position t reads t + 1 keys, 4·H·d FLOPs each
    (scores and values), per layer.
    """
    h, v = cfg.hidden_size, cfg.vocab_size
    body = cfg.num_active_params() - (v * h if cfg.tie_word_embeddings else 2 * v * h)
    heads = cfg.attention.num_heads * cfg.head_dim
    attention = 2 * cfg.num_layers * heads * prompt_len * (prompt_len + 1)
    return batch * (2 * body * prompt_len + 2 * v * h + attention)


def clock(device: str) -> float:
    """CPU seconds of this process on CPU (other jobs on a shared machine do not count; torch
    runs --threads threads), wall seconds on CUDA (after a synchronize)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


def time_moelab(model, prompts: torch.Tensor, new: int, device: str) -> float:
    """Seconds to generate ``new`` tokens for every prompt (prefill included)."""
    engine = Engine(model, max_batch=prompts.shape[0], max_len=prompts.shape[1] + new + 1)
    requests = [engine.submit(row, SamplingParams(max_new_tokens=new)) for row in prompts.tolist()]
    t0 = clock(device)
    while engine.has_work:
        engine.step()
    t1 = clock(device)
    if any(len(r.output) != new for r in requests):
        raise RuntimeError("moelab stopped early")
    return t1 - t0


def time_hf(hf, prompts: torch.Tensor, new: int, device: str) -> float:
    kw = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.inference_mode():
        t0 = clock(device)
        out = hf.generate(prompts, max_new_tokens=new, **kw)
        t1 = clock(device)
    if out.shape[1] != prompts.shape[1] + new:
        raise RuntimeError("transformers stopped early")
    return t1 - t0


def same_tokens(model, hf, prompts: torch.Tensor, new: int) -> bool:
    """Whether both sides' greedy continuations agree token for token."""
    engine = Engine(model, max_batch=prompts.shape[0], max_len=prompts.shape[1] + new + 1)
    ours = [r.output for r in engine.generate(prompts.tolist(), SamplingParams(max_new_tokens=new))]
    with torch.inference_mode():
        out = hf.generate(
            prompts, max_new_tokens=new, do_sample=False, pad_token_id=0, eos_token_id=None
        )
    return ours == out[:, prompts.shape[1] :].tolist()


def time_round_robin(fns: dict, rounds: int) -> dict[str, float]:
    """Median seconds of each fn over ``rounds`` interleaved rounds (after one warm-up call each).

    Interleaving keeps the ratios honest on a shared machine: a slow moment hits every
    contender of that round, not just one.
    """
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(fn())
    return {name: statistics.median(ts) for name, ts in times.items()}


def bench_engine(model, hf, args) -> list[dict]:
    """Per batch size: prefill = time to 1 new token; decode = (time to N) - (time to 1)."""
    rows = []
    for batch in args.batches:
        gen = torch.Generator().manual_seed(batch)
        prompts = torch.randint(2, model.config.vocab_size, (batch, args.prompt_len), generator=gen)
        prompts = prompts.to(args.device)
        fns = {}
        for name, fn, impl in (("moelab", time_moelab, model), ("transformers", time_hf, hf)):
            fns[(name, 1)] = lambda fn=fn, impl=impl, prompts=prompts: fn(
                impl, prompts, 1, args.device
            )
            fns[(name, args.new)] = lambda fn=fn, impl=impl, prompts=prompts: fn(
                impl, prompts, args.new, args.device
            )
        seconds = time_round_robin(fns, args.rounds)
        agree = same_tokens(model, hf, prompts, args.new)
        for name in ("moelab", "transformers"):
            first, total = seconds[(name, 1)], seconds[(name, args.new)]
            rows.append(
                {
                    "impl": name,
                    "batch": batch,
                    "prefill_tok_s": batch * args.prompt_len / first,
                    "decode_tok_s": batch * (args.new - 1) / (total - first),
                    "same_tokens": agree,
                }
            )
    return rows


def bench_server(model, tokenizer, family: str, args) -> list[dict]:
    import httpx
    import uvicorn

    from moelab.infer.server import create_app

    limits = ServeLimits(max_tokens=args.new, max_prompt_tokens=256)
    cfg = ServeConfig(limits=limits, max_batch=16)
    engine = Engine(model, max_batch=16, max_len=256 + args.new)
    app = create_app(TextGenerator(engine, tokenizer, builtin_template(family)), cfg, "bench")
    # proto IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY only on sockets that say
    # they are TCP, and without it every response waits ~40 ms for a delayed ACK (uvicorn's own
    # host/port binding, which ``moelab serve`` uses, gets this right)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    rows = []
    try:
        for clients in (1, 4, 16):
            rows.append(_load(url, clients, args, httpx))
    finally:
        server.should_exit = True
        thread.join(10)
    return rows


def _load(url: str, clients: int, args, httpx) -> dict:
    before = httpx.get(url + "/health").json()

    def worker(i: int) -> int:
        tokens = 0
        with httpx.Client(timeout=600) as client:
            for j in range(args.requests):
                body = {
                    "model": "bench",
                    "prompt": f"request {i} {j} " * 8,
                    "max_tokens": args.new,
                    "temperature": 0,
                }
                r = client.post(url + "/v1/completions", json=body)
                r.raise_for_status()
                tokens += r.json()["usage"]["completion_tokens"]
        return tokens

    t0, c0 = time.perf_counter(), time.process_time()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        tokens = sum(pool.map(worker, range(clients)))
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    after = httpx.get(url + "/health").json()
    return {
        "clients": clients,
        "requests": clients * args.requests,
        "completion_tokens": tokens,
        "seconds": seconds,
        "tok_s": tokens / seconds,
        "cpu_seconds": cpu_seconds,
        "tok_per_cpu_s": tokens / cpu_seconds,
        "steps": after["steps"] - before["steps"],
        "tokens_per_step": (after["tokens"] - before["tokens"])
        / max(1, after["steps"] - before["steps"]),
    }


def tiny_tokenizer(vocab: int):
    from moelab.tokens.tokenizer import train_bpe

    words = "the of and mixture experts router token shard model data layer request".split()
    texts = [
        " ".join(words[(i * 7 + j) % len(words)] for j in range(20)) + f" {i}" for i in range(500)
    ]
    return train_bpe(texts, vocab_size=min(vocab, 600))


def bench_preset(preset: str, args, transformers) -> dict:
    cfg = small_config(preset)
    model = build_model(cfg, device=args.device, dtype=DTYPES[args.dtype], seed=0).eval()
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, Path(tmp) / "hf")
        hf = transformers.AutoModelForCausalLM.from_pretrained(
            Path(tmp) / "hf", dtype=DTYPES[args.dtype]
        )
    hf = hf.to(args.device).eval()
    engine_rows = bench_engine(model, hf, args)
    ref = {r["batch"]: r for r in engine_rows if r["impl"] == "transformers"}
    peak = measured_matmul_gflops(args.device, DTYPES[args.dtype], seconds=1.0)
    for r in engine_rows:
        r["prefill_vs_hf"] = r["prefill_tok_s"] / ref[r["batch"]]["prefill_tok_s"]
        r["decode_vs_hf"] = r["decode_tok_s"] / ref[r["batch"]]["decode_tok_s"]
        seconds = r["batch"] * args.prompt_len / r["prefill_tok_s"]
        r["prefill_gflops"] = prefill_flops(cfg, r["batch"], args.prompt_len) / seconds / 1e9
        r["prefill_of_matmul_peak"] = r["prefill_gflops"] / peak
        r["matmul_peak_gflops"] = peak
    for r in engine_rows:
        r["prefill_2x_hf_needs_of_peak"] = 2 * ref[r["batch"]]["prefill_gflops"] / peak
    print(
        f"\n{preset} ({cfg.num_params() / 1e6:.1f}M params, {args.dtype}) on {args.device}, "
        f"prompt {args.prompt_len}, {args.new} new tokens, greedy, median of {args.rounds} rounds"
    )
    print(
        f"{'impl':<14}{'batch':>6}{'prefill tok/s':>15}{'vs HF':>8}{'GFLOP/s':>9}{'of peak':>9}"
        f"{'decode tok/s':>14}{'vs HF':>8}"
    )
    for r in engine_rows:
        print(
            f"{r['impl']:<14}{r['batch']:>6}{r['prefill_tok_s']:>15.0f}{r['prefill_vs_hf']:>7.2f}x"
            f"{r['prefill_gflops']:>9.1f}{r['prefill_of_matmul_peak']:>8.0%}"
            f"{r['decode_tok_s']:>14.1f}{r['decode_vs_hf']:>7.2f}x"
        )
    for batch, r in ref.items():
        print(
            f"batch {batch}: a prefill 2x transformers' needs {r['prefill_2x_hf_needs_of_peak']:.0%}"
            f" of the measured matmul peak ({peak:.1f} GFLOP/s)"
        )
    server_rows = []
    if not args.no_server:
        server_rows = bench_server(model, tiny_tokenizer(cfg.vocab_size), cfg.family, args)
        print(f"server: {args.requests} requests per client, max_tokens {args.new}, greedy")
        print(f"{'clients':>8}{'requests':>10}{'tok/s':>10}{'tok/cpu-s':>11}{'tokens/step':>13}")
        for r in server_rows:
            print(
                f"{r['clients']:>8}{r['requests']:>10}{r['tok_s']:>10.1f}"
                f"{r['tok_per_cpu_s']:>11.1f}{r['tokens_per_step']:>13.2f}"
            )
    return {
        "preset": preset,
        "params": cfg.num_params(),
        "engine": engine_rows,
        "server": server_rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--presets", nargs="+", default=["tiny-dots", "tiny-olmoe"])
    ap.add_argument("--dtype", default="float32", choices=list(DTYPES))
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    ap.add_argument("--requests", type=int, default=4, help="per client, server part")
    ap.add_argument("--no-server", action="store_true")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1 avoids OpenMP contention on a shared CPU)",
    )
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default: results/)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    results = [bench_preset(p, args, transformers) for p in args.presets]
    kernel = cpu_kernel.load() if args.device == "cpu" else None
    moelab_rows = [r for res in results for r in res["engine"] if r["impl"] == "moelab"]
    result = {
        "command": "python -P benchmarks/generate.py " + " ".join(sys.argv[1:]),
        "device": args.device,
        "device_name": device_name(args.device),
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "dtype": args.dtype,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new,
        "rounds": args.rounds,
        "moelab_cpu_kernel": None
        if kernel is None
        else f"{kernel.path.name} (VL {kernel.vector_width})",
        "moelab_onednn_linear": fast_layers.ONEDNN,
        "presets": results,
        "decode_vs_hf_min": min(r["decode_vs_hf"] for r in moelab_rows),
        "prefill_vs_hf_min": min(r["prefill_vs_hf"] for r in moelab_rows),
    }
    out = args.out or (
        Path(__file__).parent / "results" / f"generate_{args.device.split(':')[0]}.json"
    )
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
