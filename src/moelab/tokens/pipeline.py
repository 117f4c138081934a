"""Documents → token shards: splitting, parallel workers, completion markers, resume.

Input file ``i`` of the sorted documents folder becomes ``shard_{i:05d}`` in both
``<out>/train`` and ``<out>/validation`` (possibly empty), so the output does not depend on the
number of workers. A document goes to validation when a hash of ``salt + id`` falls below
``validation_fraction``: deterministic, independent of order, and stable when other documents
are added. Each document is ``[bos?] + ids + [eos]``.

Resume: a worker writes its shards under temporary names, publishes them, and only then writes
``completions/{i:05d}.json`` (input name, tokenizer hash, shard sizes). A rerun skips inputs
with a marker and redoes the others from scratch, overwriting their temporary files, so no
token is ever written twice. ``meta.json`` of each split is written last, from the markers.

What this module does not know: how documents were made (it only reads ``Document`` JSONL)
or how the trainer cuts rows.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from moelab.data.document import read_documents
from moelab.tokens.config import TokenizeConfig, TrainTokenizerConfig
from moelab.tokens.shards import META_NAME, ShardError, ShardInfo, ShardWriter, write_meta
from moelab.tokens.tokenizer import SpecialTokens, Tokenizer, train_bpe

SPLITS = ("train", "validation")
MARKERS = "completions"


def split_of(doc_id: str, validation_fraction: float, salt: str = "moelab") -> str:
    """``"validation"`` or ``"train"`` from a 64-bit hash of the document id."""
    digest = hashlib.blake2b(f"{salt}\0{doc_id}".encode(), digest_size=8).digest()
    return "validation" if int.from_bytes(digest, "big") / 2**64 < validation_fraction else "train"


def list_inputs(docs_dir: str | Path) -> list[Path]:
    """The ``*.jsonl`` / ``*.jsonl.gz`` files directly in ``docs_dir``, sorted by name."""
    docs_dir = Path(docs_dir)
    if not docs_dir.is_dir():
        raise FileNotFoundError(f"documents folder {docs_dir} does not exist")
    files = sorted(p for p in docs_dir.iterdir() if p.name.endswith((".jsonl", ".jsonl.gz")))
    if not files:
        raise FileNotFoundError(f"no *.jsonl or *.jsonl.gz files in {docs_dir}")
    return files


@dataclass
class _Job:
    index: int
    path: str
    out_dir: str
    validation_fraction: float
    salt: str
    batch_docs: int
    write_chars: int


_WORKER_ARGS: tuple[str, SpecialTokens, str, str] | None = None
_WORKER_TOKENIZER: Tokenizer | None = None


def _init_worker(args: tuple[str, SpecialTokens, str, str] | None) -> None:
    """Pool initializer: only keeps the tokenizer's description (this cannot fail).

    A pool restarts a worker whose initializer raises, forever; building the tokenizer in the
    first job instead turns a failure into an exception the parent sees. ``None``: a forked
    worker, which already holds the parent's tokenizer."""
    global _WORKER_ARGS
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER_ARGS = args


def _run_worker_job(job: _Job) -> dict[str, Any]:
    """One tokenizer per process: inherited from the parent when forked, else built at the
    first job with the parent's hash (a worker does not canonicalise the vocabulary again);
    parallelism comes from the processes."""
    global _WORKER_TOKENIZER
    if _WORKER_TOKENIZER is None:
        if _WORKER_ARGS is None:
            raise RuntimeError("worker not initialised")
        _WORKER_TOKENIZER = Tokenizer.from_str(*_WORKER_ARGS)
    return tokenize_input(job, _WORKER_TOKENIZER)


class _Split:
    """One split's shard being written: texts wait here until ``write_chars`` characters
    have come, then are encoded (``batch_docs`` per tokenizers call) and written at once."""

    def __init__(self, writer: ShardWriter, tk: Tokenizer, job: _Job):
        self.writer, self.tk, self.job = writer, tk, job
        self.texts: list[str] = []
        self.chars = 0

    def add(self, text: str) -> None:
        self.texts.append(text)
        self.chars += len(text)
        if self.chars >= self.job.write_chars:
            self.flush()

    def flush(self) -> None:
        if self.texts:
            self.writer.write_packed(*self.tk.encode_packed(self.texts, self.job.batch_docs))
        self.texts, self.chars = [], 0


def tokenize_input(job: _Job, tk: Tokenizer) -> dict[str, Any]:
    """Tokenize one input file into one shard per split; write its completion marker."""
    out = Path(job.out_dir)
    writers = {split: ShardWriter(out / split, job.index) for split in SPLITS}
    try:
        splits = {name: _Split(writer, tk, job) for name, writer in writers.items()}
        for doc in read_documents(job.path):
            splits[split_of(doc.id, job.validation_fraction, job.salt)].add(doc.text)
        for split in splits.values():
            split.flush()
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    marker = {
        "index": job.index,
        "input": Path(job.path).name,
        "tokenizer_hash": tk.hash,
        "split_rule": _split_rule(job),
        "splits": {split: asdict(w.close()) for split, w in writers.items()},
    }
    path = out / MARKERS / f"{job.index:05d}.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(marker, indent=2) + "\n")
    os.replace(tmp, path)
    return marker


def _split_rule(job: _Job) -> dict[str, Any]:
    return {"validation_fraction": job.validation_fraction, "salt": job.salt}


def _read_marker(path: Path, job: _Job, tokenizer_hash: str) -> dict[str, Any] | None:
    """A finished input's marker, or None; raises if it was made by a different run."""
    if not path.is_file():
        return None
    marker = json.loads(path.read_text())
    mine = {"input": Path(job.path).name, "tokenizer_hash": tokenizer_hash}
    mine["split_rule"] = _split_rule(job)
    theirs = {key: marker.get(key) for key in mine}
    if theirs != mine:
        raise ShardError(
            f"{path} records {theirs}, but this run has {mine}: the output folder belongs to "
            "another run (other inputs, tokenizer or split); use a fresh out_dir"
        )
    return marker


def _start_method() -> str:
    """``fork`` starts a worker in milliseconds instead of ~0.5 s of imports, but forking a
    process whose threads hold locks can deadlock: use it only on Linux and only while torch
    (OpenMP threads) is not loaded. The parent never encodes, so tokenizers has no threads."""
    return "fork" if sys.platform == "linux" and "torch" not in sys.modules else "spawn"


def _run_jobs(jobs: list[_Job], tk: Tokenizer, workers: int) -> list[dict[str, Any]]:
    if workers == 1 or len(jobs) <= 1:
        return [tokenize_input(job, tk) for job in jobs]
    global _WORKER_TOKENIZER
    method = _start_method()
    # A forked worker inherits the built tokenizer: no to_str here and no from_str in each
    # worker, whose cost grows with the vocabulary (8 ms for the demo's 4,096 ids).
    args = None if method == "fork" else (tk.to_str(), tk.specials, tk.family, tk.hash)
    _WORKER_TOKENIZER = tk if method == "fork" else None
    try:
        ctx = mp.get_context(method)
        with ctx.Pool(min(workers, len(jobs)), initializer=_init_worker, initargs=(args,)) as pool:
            return list(pool.imap_unordered(_run_worker_job, jobs))
    finally:
        _WORKER_TOKENIZER = None


def tokenize(cfg: TokenizeConfig, tokenizer: Tokenizer | None = None) -> dict[str, Any]:
    """Run ``cfg``: tokenize every unfinished input, then write each split's ``meta.json``.

    Returns a summary: inputs processed and skipped, and tokens/documents per split.
    """
    tk = tokenizer or Tokenizer.from_file(cfg.tokenizer, cfg.family)
    inputs = list_inputs(cfg.docs_dir)
    out = Path(cfg.out_dir)
    (out / MARKERS).mkdir(parents=True, exist_ok=True)
    markers: dict[int, dict[str, Any]] = {}
    jobs = []
    for i, path in enumerate(inputs):
        job = _Job(
            i,
            str(path),
            str(out),
            cfg.validation_fraction,
            cfg.split_salt,
            cfg.batch_docs,
            cfg.write_chars,
        )
        marker = _read_marker(out / MARKERS / f"{i:05d}.json", job, tk.hash)
        if marker is not None:
            markers[i] = marker
        else:
            jobs.append(job)
    skipped = len(markers)
    if jobs:  # the folders are about to change: no meta.json until they are complete again
        for split in SPLITS:
            (out / split / META_NAME).unlink(missing_ok=True)
    start = time.perf_counter()
    for marker in _run_jobs(jobs, tk, cfg.workers):
        markers[marker["index"]] = marker
    seconds = time.perf_counter() - start
    summary: dict[str, Any] = {"processed": len(jobs), "skipped": skipped, "seconds": seconds}
    for split in SPLITS:
        infos = [ShardInfo(**markers[i]["splits"][split]) for i in sorted(markers)]
        extra = {"split": split, "docs_dir": str(cfg.docs_dir), "num_inputs": len(inputs)}
        meta = write_meta(out / split, infos, tk.describe(), extra)
        summary[split] = {"tokens": meta["num_tokens"], "docs": meta["num_docs"]}
    cfg.to_yaml(out / "config.yaml")
    return summary


def train_tokenizer(cfg: TrainTokenizerConfig) -> Tokenizer:
    """Train the demo byte-level BPE on the documents of ``cfg.docs_dir`` and save it."""

    def texts() -> Iterator[str]:
        n = 0
        for path in list_inputs(cfg.docs_dir):
            for doc in read_documents(path):
                if cfg.max_docs is not None and n >= cfg.max_docs:
                    return
                n += 1
                yield doc.text

    tk = train_bpe(texts(), cfg.vocab_size, min_frequency=cfg.min_frequency)
    tk.save(cfg.out_dir)
    cfg.to_yaml(Path(cfg.out_dir) / "train_config.yaml")
    return tk
