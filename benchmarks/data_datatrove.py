"""Stage 1 + 2 of moelab against datatrove running the same steps, one core each, one run.

datatrove is not a moelab dependency (its `processing` extra downgrades trafilatura and xxhash),
so run this from a separate virtualenv that sees moelab's packages through a .pth file::

    python -m venv /tmp/dtv
    echo /work/venv/lib/python3.11/site-packages > /tmp/dtv/lib/python3.11/site-packages/m.pth
    echo $PWD/src >> /tmp/dtv/lib/python3.11/site-packages/m.pth
    /tmp/dtv/bin/pip install datatrove spacy orjson faust-cchardet python-magic
    HF_HOME=/tmp/hf /tmp/dtv/bin/python -P benchmarks/data_datatrove.py --pages 1000

Same synthetic crawl for both. datatrove pipeline: WarcReader → URLFilter (our blocklist, no
integrated lists, offline tldextract) → Trafilatura (no precision mode, no dedup; its sandbox) →
LID (a LambdaFilter on the same lid.176.ftz: datatrove's own LanguageFilter refuses
fasttext-predict, data_anchors §3.2 #4) → Gopher repetition, Gopher quality, C4, FineWeb → JSONL,
then its four MinHash stages at the dots setting (5-grams, 128 × 16). moelab: `moelab data run`
with one worker (it also runs exact and line dedup, which datatrove does not have here).
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


def run_moelab(crawl: Path, out: Path) -> dict:
    from moelab.data.config import DataConfig
    from moelab.data.funnel import load_funnel
    from moelab.data.runner import run_pipeline

    cfg = DataConfig.from_dict(
        {
            "input": {"paths": [str(crawl / "warc")]},
            "output_dir": str(out),
            "workers": 1,
            "url_filter": {"domains_files": [str(crawl / "blocklist" / "domains.txt")]},
        }
    )
    start = time.perf_counter()
    run_pipeline(cfg, log=lambda _: None)
    wall = time.perf_counter() - start
    funnel = dict(load_funnel(out))
    return {
        "wall_s": round(wall, 2),
        "pages_in": funnel["00_read"].docs_in,
        "docs_out": funnel["07_minhash"].docs_out,
        "step_seconds": {k: round(v.seconds, 2) for k, v in funnel.items()},
    }


def run_datatrove(crawl: Path, work: Path) -> dict:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
        LambdaFilter,
        URLFilter,
    )
    from datatrove.pipeline.readers import JsonlReader, WarcReader
    from datatrove.pipeline.writers import JsonlWriter
    from tldextract import TLDExtract

    from moelab.data.filters.language import LanguageID

    domains = [
        line.strip()
        for line in (crawl / "blocklist" / "domains.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    url_filter = URLFilter(extra_domains=domains, use_integrated_lists=False)
    url_filter.tldextractor = TLDExtract(suffix_list_urls=())
    lid = LanguageID()

    def keep_language(doc) -> bool:
        lang, score = lid.predict(doc.text)
        doc.metadata["language"] = lang
        return score >= 0.65 and lang in ("en", "zh")

    timings = {}
    start = time.perf_counter()
    LocalPipelineExecutor(
        pipeline=[
            WarcReader(str(crawl / "warc"), glob_pattern="*.warc.gz"),
            url_filter,
            Trafilatura(favour_precision=False, deduplicate=False),
            LambdaFilter(keep_language),
            GopherRepetitionFilter(),
            GopherQualityFilter(),
            C4QualityFilter(filter_no_terminal_punct=False),
            FineWebQualityFilter(),
            JsonlWriter(str(work / "stage1")),
        ],
        tasks=1,
        workers=1,
        logging_dir=str(work / "logs1"),
    ).run()
    timings["stage1_s"] = round(time.perf_counter() - start, 2)
    from datatrove.utils.hashing import HashConfig

    # sha1: datatrove's xxhash path passes str, which xxhash 4 refuses (data_anchors §3.2 #2)
    cfg = MinhashConfig(
        n_grams=5, num_buckets=128, hashes_per_bucket=16, hash_config=HashConfig(hash_fc="sha1")
    )
    sig, buckets, clusters = work / "sig", work / "buckets", work / "clusters"
    stages = [
        [JsonlReader(str(work / "stage1")), MinhashDedupSignature(str(sig), config=cfg)],
        [MinhashDedupBuckets(str(sig), str(buckets), config=cfg)],
        [MinhashDedupCluster(str(buckets), str(clusters), config=cfg)],
        [
            JsonlReader(str(work / "stage1")),
            MinhashDedupFilter(str(clusters)),
            JsonlWriter(str(work / "out")),
        ],
    ]
    start = time.perf_counter()
    for i, pipe in enumerate(stages):
        tasks = cfg.num_buckets if i == 1 else 1
        LocalPipelineExecutor(
            pipeline=pipe, tasks=tasks, workers=1, logging_dir=str(work / f"logs_mh{i}")
        ).run()
    timings["minhash_s"] = round(time.perf_counter() - start, 2)
    timings["wall_s"] = round(timings["stage1_s"] + timings["minhash_s"], 2)
    out_docs = sum(1 for p in (work / "out").glob("*.jsonl.gz") for _ in __import__("gzip").open(p))
    timings["docs_out"] = out_docs
    return timings


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=1000)
    ap.add_argument("--out", default="benchmarks/results/data_datatrove.json")
    args = ap.parse_args(argv)
    from moelab.data.synth.web import SynthConfig, write_synthetic_web

    with tempfile.TemporaryDirectory(prefix="moelab-dt-") as tmp_s:
        tmp = Path(tmp_s)
        os.environ.setdefault("HF_HOME", str(tmp / "hf"))
        # No planted damage: datatrove's WarcReader dies on a corrupt gzip member (CRC error).
        write_synthetic_web(
            tmp / "crawl", SynthConfig(pages=args.pages, seed=0, files=4, damage=False)
        )
        ours = run_moelab(tmp / "crawl", tmp / "ours")
        theirs = run_datatrove(tmp / "crawl", tmp / "dt")
    from importlib.metadata import version

    pages = ours["pages_in"]
    result = {
        "device": {
            "cores": os.cpu_count(),
            "python": sys.version.split()[0],
            "load_average_at_end": os.getloadavg(),
        },
        "pages": pages,
        "datatrove_version": version("datatrove"),
        "moelab": ours | {"pages_per_s": round(pages / ours["wall_s"], 1)},
        "datatrove": theirs | {"pages_per_s": round(pages / theirs["wall_s"], 1)},
        "speedup_vs_datatrove": round(theirs["wall_s"] / ours["wall_s"], 2),
    }
    print(f"{'':<12}{'wall s':>8}{'pages/s':>9}{'docs out':>10}")
    for name in ("moelab", "datatrove"):
        r = result[name]
        print(f"{name:<12}{r['wall_s']:>8}{r['pages_per_s']:>9}{r['docs_out']:>10}")
    print(f"moelab is {result['speedup_vs_datatrove']}x datatrove on stages 1+2 ({pages} pages)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
