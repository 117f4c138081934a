"""Tokenize-to-shards cost per core in CPU instructions, against a bare ``tokenizers`` loop.

    python -P benchmarks/tokenize_instructions.py [--docs 3000] [--chars 2000] [--files 8]

Wall-clock ratios on a shared 2-core machine move by tens of percent with the neighbours' load;
instruction counts do not. Each case runs in its own Python process under valgrind
(``cachegrind --cache-sim=no``; else ``perf stat -e instructions``; else the script says it
cannot measure and exits 0), on the corpus and tokenizer of ``tokenize_bench.py``:

* ``null``: the shared preamble (imports, load the texts and the tokenizer), subtracted from
  every other case;
* ``bare``: ``encode_batch_fast`` over the texts in memory, batches of 512 (fewer instructions
  than the pipeline's batches of 32, though slower in time: the strongest baseline here), ids only;
* ``1 worker``: ``moelab tokens tokenize`` end to end (read gzip JSONL, encode, split, write
  shards, markers and meta.json; its own tokenizer load included);
* ``2 workers``: the same with 2 forked worker processes (valgrind follows forks), counted per
  process, so the critical path (parent + the busier worker) estimates the 2-worker speedup on
  2 idle cores. A forked worker starts with its parent's count, so its own share is only known
  to lie between raw - preamble - parent and raw - preamble: both ends are reported, and the
  goal is judged on the conservative one.

Instructions are not time (instructions per cycle differ between gzip, JSON and BPE), so this
complements ``tokenize_bench.py``; it does not replace it. Goal (issue 5): the 1-worker
pipeline >= 0.9x the bare loop's throughput per core, i.e. bare / pipeline instructions >= 0.9.
Prints a table and writes ``benchmarks/results/tokenize_instructions.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "tokenize_instructions.json"
CASES = ("null", "bare", "1 worker", "2 workers")


def _bench_module():
    """``tokenize_bench.py`` (its corpus and tokenizer), loaded by path: -P keeps its folder off
    ``sys.path``, and its name must not shadow the standard library's ``tokenize``."""
    spec = importlib.util.spec_from_file_location("tokenize_bench", HERE / "tokenize_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the child: one case, in its own process -----------------------------------------------------


def child(case: str, work: Path) -> None:
    """Run one case; every case pays the same preamble so ``null`` can be subtracted."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from tokenizers import Tokenizer as HFTokenizer

    from moelab.tokens.config import TokenizeConfig
    from moelab.tokens.pipeline import tokenize

    texts = json.loads((work / "texts.json").read_text())
    hf = HFTokenizer.from_file(str(work / "tok" / "tokenizer.json"))
    if case == "bare":
        tokens = 0
        for i in range(0, len(texts), 512):
            for enc in hf.encode_batch_fast(texts[i : i + 512], add_special_tokens=False):
                tokens += len(enc.ids)
        print(f"tokens {tokens}")
    elif case in ("1 worker", "2 workers"):
        out = work / ("out1" if case == "1 worker" else "out2")
        shutil.rmtree(out, ignore_errors=True)
        cfg = TokenizeConfig.from_dict(
            {
                "docs_dir": str(work / "docs"),
                "out_dir": str(out),
                "tokenizer": str(work / "tok"),
                "workers": 1 if case == "1 worker" else 2,
            }
        )
        summary = tokenize(cfg)
        print(f"tokens {summary['train']['tokens'] + summary['validation']['tokens']}")


# -- the parent: counters ---------------------------------------------------------------------


def counter() -> str | None:
    """``valgrind`` if installed, else ``perf`` if it can count instructions here, else None."""
    if shutil.which("valgrind"):
        return "valgrind"
    if shutil.which("perf"):
        probe = subprocess.run(
            ["perf", "stat", "-x,", "-e", "instructions", "true"], capture_output=True, text=True
        )
        if probe.returncode == 0 and "<not" not in probe.stderr:
            return "perf"
    return None


def count(tool: str, case: str, work: Path) -> dict[str, Any]:
    """Instructions of one case: ``main`` process and its forked ``children``, largest first.

    perf counts forked children into the main process, so it reports no children."""
    me = [sys.executable, "-P", str(Path(__file__).resolve()), "--child", case, "--work", str(work)]
    logs = work / "logs" / case.replace(" ", "_")
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    if tool == "valgrind":
        cmd = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null"]
        cmd += [f"--log-file={logs}/%p.log", *me]
    else:  # perf counts a process and its forked children together: one total
        cmd = ["perf", "stat", "-x,", "-e", "instructions:u", "-o", str(logs / "0.log"), *me]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"{case} failed:\n{run.stdout}\n{run.stderr}")
    counts, parents = {}, {}
    for log in logs.iterdir():
        text = log.read_text()
        if tool == "valgrind":
            match = re.search(r"I\s+refs:\s+([\d,]+)", text)
        else:
            match = re.search(r"^(\d+),[^,]*,instructions", text, re.M)
        if match is None:
            raise RuntimeError(f"no instruction count in {log}:\n{text[-2000:]}")
        counts[int(log.stem)] = int(match.group(1).replace(",", ""))
        parent = re.search(r"Parent PID:\s+(\d+)", text)
        parents[int(log.stem)] = int(parent.group(1)) if parent else None
    # the process the counter started first is the one whose parent was not counted
    roots = [pid for pid in counts if parents[pid] not in counts]
    if len(roots) != 1:
        raise RuntimeError(f"{case}: cannot tell the main process among {sorted(counts)}")
    return {"main": counts.pop(roots[0]), "children": sorted(counts.values(), reverse=True)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=3000)
    ap.add_argument("--chars", type=int, default=2000)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.work)
        return
    tool = counter()
    if tool is None:
        print("neither valgrind nor perf (with instruction counters) is available: skipped")
        return

    bench = _bench_module()
    work = Path(tempfile.mkdtemp(prefix="moelab-bench-tokins-"))
    texts = bench.write_corpus(work, args.docs, args.chars, args.files)
    tk = bench.train_bpe(texts[:2000], vocab_size=args.vocab)
    tk.save(work / "tok")
    on_disk = bench.read_corpus(work / "docs")
    (work / "texts.json").write_text(json.dumps(on_disk))

    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    per_case = {case: count(tool, case, work) for case in CASES}  # one at a time
    null = per_case["null"]["main"]
    net = {case: per_case[case]["main"] - null for case in ("bare", "1 worker")}
    # 2 workers: the parent is serial (before and after the pool); the workers run side by side.
    # A forked worker inherits the parent's count at the fork: the preamble plus some of the
    # parent's own work, so its own share lies between raw - null - parent and raw - null.
    parent = per_case["2 workers"]["main"] - null
    high = [raw - null for raw in per_case["2 workers"]["children"]]
    low = [max(h - parent, 0) for h in high]
    bare, one = net["bare"], net["1 worker"]
    if high:  # conservative: the busier worker's upper bound after the whole parent
        speedup = (one / (parent + high[0]), one / (parent + low[0]))
        net["2 workers"] = parent + sum(high)
    else:  # perf folds the workers into the parent: only the total is known
        speedup, net["2 workers"] = None, parent
    result = {
        "counter": tool,
        "command": "python -P benchmarks/tokenize_instructions.py " + " ".join(sys.argv[1:]),
        "load_average_before": round(load_before, 2),
        "load_average_after": round(os.getloadavg()[0], 2),
        "seconds_under_counter": round(time.perf_counter() - start, 1),
        "corpus": {"docs": len(on_disk), "files": args.files, "vocab_size": tk.vocab_size},
        "instructions_net_of_preamble": net,
        "preamble_instructions": null,
        "two_workers_per_process": {"parent_net": parent, "workers_at_most": high},
        "one_worker_vs_bare": round(bare / one, 3),
        "two_workers_total_vs_one_at_most": round(net["2 workers"] / one, 3),
        "two_workers_speedup_estimate": (
            {"conservative": round(speedup[0], 3), "optimistic": round(speedup[1], 3)}
            if speedup
            else None
        ),
        "goals": {"one_worker_vs_bare": 0.9, "two_workers_speedup": 1.8},
    }
    print(f"corpus: {len(on_disk)} docs in {args.files} files, vocab {tk.vocab_size}; {tool}")
    print(f"{'case':12} {'instructions (net)':>20} {'bare / case':>12}")
    for case in CASES[1:]:
        print(f"{case:12} {net[case]:20,} {bare / net[case]:12.3f}")
    print(f"1 worker = {bare / one:.3f}x the bare loop per core (goal 0.9)")
    if speedup:
        print(
            f"2 workers: parent {parent:,} + busier worker at most {high[0]:,} (the other "
            f"{', '.join(f'{w:,}' for w in high[1:])}) -> speedup on 2 idle cores "
            f"{speedup[0]:.2f}x (conservative) to {speedup[1]:.2f}x (goal 1.8)"
        )
    else:
        print("2 workers: the counter does not separate processes, no speedup estimate")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
