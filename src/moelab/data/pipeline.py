"""The dots recipe as phases of tasks over shards, and the code that runs one task.

A *phase* is an optional global step followed by map steps. Its tasks are ``scan`` (one per
shard, only with a global step), one ``reduce``, then ``map`` (one per shard: apply the global
decision, then the map steps, writing ``docs/``, ``removed/`` and ``stats/``). Phases chain through
directories: the map output of phase k is the input of phase k+1; the first phase reads the raw
input, the last writes ``RUN/docs``. Every task ends by writing its completion marker, and an
executor only runs tasks without one: that is the whole resume story.

Run directory::

    RUN/config.yaml  shards.json
    RUN/docs/00000.jsonl.gz ...                 final documents
    RUN/removed/<nn_step>/00000.jsonl.gz        what each step dropped, with filter_reason
    RUN/stats/<phase>/map_00000.json            per-step funnel numbers of one shard
    RUN/completions/<phase>/{scan,map}_00000, reduce
    RUN/phases/<phase>/docs/                    intermediate hand-offs between phases
    RUN/work/<phase>/                           a global step's on-disk intermediates

What this module does not know: how tasks are scheduled (runner.py, ray_executor.py).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from moelab.config import ConfigError
from moelab.data.config import DataConfig
from moelab.data.dedup.base import GlobalStep
from moelab.data.document import read_documents
from moelab.data.readers import InputShard, list_shards, read_shard
from moelab.data.step import Step, StepContext, StepStats, chain_steps, counted
from moelab.data.writers import AtomicJsonlWriter, RemovedWriter, atomic_write_json

_RESUMABLE = ("workers", "executor")
"""Config keys a resumed run may change: they never change the output."""


@dataclass
class Phase:
    name: str
    global_step: GlobalStep | None
    global_dir: str | None = None
    """The ``nn_name`` of the global step (its removed/ folder)."""
    steps: list[tuple[str, Step]] = field(default_factory=list)


def build_steps(cfg: DataConfig) -> list[tuple[str, Step | GlobalStep]]:
    """The enabled steps of the dots recipe, in order, each with its short name."""
    out: list[tuple[str, Step | GlobalStep]] = []
    if cfg.url_filter.enabled:
        out.append(("url_filter", _url_filter(cfg)))
    if cfg.extract.enabled:
        from moelab.data.extract import Extract

        e = cfg.extract
        out.append(("extract", Extract(e.favor_precision, e.include_tables, e.min_chars)))
    if cfg.language.enabled:
        from moelab.data.filters.language import LanguageFilter

        lc = cfg.language
        out.append(("language", LanguageFilter(lc.languages, lc.threshold, lc.model_path)))
    if cfg.exact_dedup.enabled:
        from moelab.data.dedup.exact import ExactDedup

        out.append(("exact_dedup", ExactDedup(cfg.exact_dedup.seed)))
    if cfg.line_dedup.enabled:
        from moelab.data.dedup.lines import LineDedup

        ld = cfg.line_dedup
        out.append(("line_dedup", LineDedup(ld.head, ld.tail, ld.max_occurrences, ld.state_in)))
    if cfg.quality.enabled:
        from moelab.data.filters.quality import QualityFilter

        out.append(("quality", QualityFilter(cfg.quality)))
    if cfg.minhash.enabled:
        from moelab.data.dedup.minhash import MinHashDedup

        out.append(("minhash", MinHashDedup(cfg.minhash)))
    from moelab.data.stage3 import stage3_steps

    return out + stage3_steps(cfg.stage3)


def _url_filter(cfg: DataConfig) -> Step:
    from moelab.data.filters import url

    uc = cfg.url_filter
    domains: set[str] = set()
    urls: set[str] = set()
    for f in uc.domains_files:
        domains |= url.read_list(f)
    for f in uc.urls_files:
        urls |= url.read_list(f)
    words = url.default_word_lists() if uc.default_words else url.UrlWordLists()
    words.update(
        url.UrlWordLists.from_files(
            uc.banned_words_files, uc.soft_words_files, uc.banned_subwords_files
        )
    )
    if uc.ut1_from_datatrove:
        d, u = url.ut1_from_datatrove()
        domains |= d
        urls |= u
        words.update(url.datatrove_word_lists())
    return url.UrlFilter(domains, urls, words=words, soft_threshold=uc.soft_threshold)


def build_phases(cfg: DataConfig) -> list[Phase]:
    """Group the steps: a new phase starts at every global step."""
    phases = [Phase("p0_map", None)]
    for i, (name, step) in enumerate(build_steps(cfg), start=1):
        step_dir = f"{i:02d}_{name}"
        if isinstance(step, GlobalStep):
            phases.append(Phase(f"p{len(phases)}_{name}", step, step_dir))
        else:
            phases[-1].steps.append((step_dir, step))
    return phases


class Pipeline:
    """A configured run directory: its shards, phases and the code of each task."""

    def __init__(self, cfg: DataConfig, run_dir: str | Path):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.phases = build_phases(cfg)
        self.shards = self._load_or_list_shards()

    @classmethod
    def open(cls, run_dir: str | Path) -> Pipeline:
        run_dir = Path(run_dir)
        return cls(DataConfig.from_yaml(run_dir / "config.yaml"), run_dir)

    def prepare(self) -> None:
        """Write config and shard list, or check that a resumed run has the same config."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        cfg_path = self.run_dir / "config.yaml"
        if cfg_path.exists():
            old = DataConfig.from_yaml(cfg_path).to_dict()
            new = self.cfg.to_dict()
            changed = sorted(k for k in new if k not in _RESUMABLE and new[k] != old.get(k))
            if changed:
                raise ConfigError(
                    "output_dir",
                    f"{self.run_dir} holds a run whose {', '.join(changed)} differ(s); "
                    "resume with the same config or use a new output_dir",
                )
        else:
            cfg_path.write_text(self.cfg.to_yaml())

    def _load_or_list_shards(self) -> list[InputShard]:
        path = self.run_dir / "shards.json"
        if path.exists():
            return [InputShard(**raw) for raw in json.loads(path.read_text())]
        ic = self.cfg.input
        shards = list_shards(
            ic.paths,
            ic.format,
            ic.html_files_per_shard,
            text_field=ic.text_field,
            id_field=ic.id_field,
            max_bytes=ic.max_page_bytes,
        )
        if not shards:
            raise ConfigError("input.paths", f"no input files found in {ic.paths}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, [s.__dict__ for s in shards])
        return shards

    # --- task bookkeeping -------------------------------------------------------------------

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    def marker(self, phase: int, kind: str, shard: int | None = None) -> Path:
        name = kind if shard is None else f"{kind}_{shard:05d}"
        return self.run_dir / "completions" / self.phases[phase].name / name

    def done(self, phase: int, kind: str, shard: int | None = None) -> bool:
        return self.marker(phase, kind, shard).exists()

    def task_groups(self, phase: int) -> list[tuple[str, list[int | None]]]:
        """The barriers of a phase: (kind, shards) groups that must finish in order."""
        shards: list[int | None] = list(range(self.num_shards))
        if self.phases[phase].global_step is None:
            return [("map", shards)]
        return [("scan", shards), ("reduce", [None]), ("map", shards)]

    def docs_path(self, phase: int, shard: int) -> Path:
        if phase == len(self.phases) - 1:
            return self.run_dir / "docs" / f"{shard:05d}.jsonl.gz"
        return self.run_dir / "phases" / self.phases[phase].name / "docs" / f"{shard:05d}.jsonl.gz"

    def work_dir(self, phase: int) -> Path:
        return self.run_dir / "work" / self.phases[phase].name

    # --- running one task --------------------------------------------------------------------

    def run_task(self, phase: int, kind: str, shard: int | None) -> None:
        """Run one task and write its completion marker (skips if already done)."""
        if self.done(phase, kind, shard):
            return
        start, cpu = time.time(), time.process_time()
        ph = self.phases[phase]
        if kind in ("scan", "reduce"):
            if kind == "scan":
                assert shard is not None
                ph.global_step.scan(self._input_docs(phase, shard), shard, self.work_dir(phase))
            else:
                ph.global_step.reduce(self.work_dir(phase), self.num_shards)
            st = StepStats(ph.global_step.name, seconds=time.time() - start)
            name = kind if shard is None else f"{kind}_{shard:05d}"
            record = {
                "phase": ph.name,
                "cpu_seconds": round(time.process_time() - cpu, 3),
                "pid": os.getpid(),
                "steps": [{"step": ph.global_dir, **st.to_dict()}],
            }
            atomic_write_json(self.run_dir / "stats" / ph.name / f"{name}.json", record)
        else:
            assert shard is not None
            self._run_map(phase, shard, start, cpu)
        marker = self.marker(phase, kind, shard)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{time.time() - start:.3f}\n")

    def _input_docs(self, phase: int, shard: int):
        """What a phase reads: the previous phase's output (a global step never opens phase 0)."""
        return read_documents(self.docs_path(phase - 1, shard))

    def _clear_partial(self, phase: int, shard: int) -> None:
        """Remove temporary files a killed attempt at this task left behind."""
        name = f"{shard:05d}.jsonl.gz.tmp.*"
        for stale in [
            *self.docs_path(phase, shard).parent.glob(name),
            *(self.run_dir / "removed").glob(f"*/{name}"),
        ]:
            stale.unlink(missing_ok=True)

    def _run_map(self, phase: int, shard: int, start: float, cpu: float) -> None:
        ph = self.phases[phase]
        self._clear_partial(phase, shard)
        removed = RemovedWriter(
            self.run_dir / "removed", shard, self.cfg.write_removed, self.cfg.compression_level
        )
        stats: list[tuple[str, StepStats]] = []
        steps: list[Step] = []
        contexts: list[StepContext] = []
        read_stats = None
        if phase == 0:
            read_stats = StepStats("read")
            read_stats_ctx = StepContext(
                shard, self.num_shards, read_stats, removed.sink_for("00_read")
            )
            docs = counted(read_shard(self.shards[shard], read_stats_ctx), read_stats, "out")
            stats.append(("00_read", read_stats))
        else:
            docs = read_documents(self.docs_path(phase - 1, shard))
        named = list(ph.steps)
        if ph.global_step is not None:
            named.insert(0, (ph.global_dir, ph.global_step.apply(self.work_dir(phase), shard)))
        for step_dir, step in named:
            st = StepStats(step_dir.split("_", 1)[1])
            stats.append((step_dir, st))
            steps.append(step)
            contexts.append(StepContext(shard, self.num_shards, st, removed.sink_for(step_dir)))
        writer = AtomicJsonlWriter(self.docs_path(phase, shard), self.cfg.compression_level)
        try:
            for doc in chain_steps(docs, steps, contexts, read_stats):
                writer.write(doc)
        except BaseException:
            writer.abort()
            raise
        writer.close()
        removed.close()
        record = {
            "phase": ph.name,
            "shard": shard,
            "seconds": round(time.time() - start, 3),
            "cpu_seconds": round(time.process_time() - cpu, 3),
            "pid": os.getpid(),
            "steps": [{"step": d, **s.to_dict()} for d, s in stats],
        }
        atomic_write_json(self.run_dir / "stats" / ph.name / f"map_{shard:05d}.json", record)


_CACHE: dict[str, Pipeline] = {}


def execute_task(
    run_dir: str, phase: int, kind: str, shard: int | None
) -> tuple[int, str, int | None]:
    """Entry point of a worker process (local pool or Ray task): run one task by its address."""
    pipe = _CACHE.get(run_dir)
    if pipe is None:
        pipe = _CACHE[run_dir] = Pipeline.open(run_dir)
    pipe.run_task(phase, kind, shard)
    return phase, kind, shard
