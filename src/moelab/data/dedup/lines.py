"""dots line-level inter-document dedup: a head/tail line seen > N times keeps its first N.

dots (App. C.2): take the first 5 and last 5 lines of each document, ignore lines that are empty
or only whitespace/symbols, count each line over the entire dataset, and for a line that appears
more than 200 times keep its first 200 occurrences and delete the rest from their documents.

Distributed and exact, in three passes (data_anchors §6.2.3):

* scan: per shard, count each candidate line's xxh3-64 hash (in document order);
* reduce: global count per hash; for each heavy hash (count > N), each shard's quota is how many
  of its occurrences fall within the global first N, a prefix sum over shards in corpus order;
* apply: per shard, walk documents in order and keep a heavy line while its quota lasts.

The result equals one sequential pass over the corpus, for any shard or worker count. A line is
its text with surrounding whitespace stripped; "occurrence" order is shard, document, line.

Incremental mode (dots: "implemented in an incremental manner"): every run writes the count of
every line seen so far to ``line_counts.npz``; a later run given it as ``state_in`` spends only
what is left of each line's quota, so corpus A then corpus B equals one run over A + B.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import regex
import xxhash

from moelab.data.dedup.base import GlobalStep
from moelab.data.document import Document
from moelab.data.step import Step, StepContext

_HAS_CONTENT = regex.compile(r"[\p{L}\p{N}]")


def candidate_lines(lines: list[str], head: int, tail: int) -> list[tuple[int, int]]:
    """(position, hash) of the head/tail lines that count: those with a letter or a digit."""
    n = len(lines)
    positions = sorted(set(range(min(head, n))) | set(range(max(n - tail, 0), n)))
    out = []
    for i in positions:
        line = lines[i].strip()
        if line and _HAS_CONTENT.search(line):
            out.append((i, xxhash.xxh3_64_intdigest(line.encode("utf-8"))))
    return out


class LineDedup(GlobalStep):
    """The dots head/tail line cap, as scan → reduce → apply passes."""

    name = "line_dedup"

    def __init__(
        self,
        head: int = 5,
        tail: int = 5,
        max_occurrences: int = 200,
        state_in: str | None = None,
    ):
        self.head = head
        self.tail = tail
        self.max_occurrences = max_occurrences
        self.state_in = state_in

    def scan(self, docs: Iterable[Document], shard: int, work: Path) -> None:
        counts: Counter[int] = Counter()
        for doc in docs:
            counts.update(h for _, h in candidate_lines(doc.text.split("\n"), self.head, self.tail))
        keys = np.fromiter(counts.keys(), dtype=np.uint64, count=len(counts))
        vals = np.fromiter(counts.values(), dtype=np.int64, count=len(counts))
        out = work / "scan"
        out.mkdir(parents=True, exist_ok=True)
        np.savez(out / f"{shard:05d}.tmp.npz", keys=keys, counts=vals)
        (out / f"{shard:05d}.tmp.npz").replace(out / f"{shard:05d}.npz")

    def reduce(self, work: Path, num_shards: int) -> None:
        keys, counts, shards = [], [], []
        for s in range(num_shards):
            part = np.load(work / "scan" / f"{s:05d}.npz")
            keys.append(part["keys"])
            counts.append(part["counts"])
            shards.append(np.full(len(part["keys"]), s, dtype=np.int64))
        key = np.concatenate(keys) if keys else np.zeros(0, np.uint64)
        cnt = np.concatenate(counts) if counts else np.zeros(0, np.int64)
        shard = np.concatenate(shards) if shards else np.zeros(0, np.int64)
        order = np.lexsort((shard, key))
        key, cnt, shard = key[order], cnt[order], shard[order]
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else key[:0]
        group = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(key)]).astype(int))
        total = np.add.reduceat(cnt, starts) if len(starts) else np.zeros(0, np.int64)
        prior = self._prior_counts(key[starts])
        heavy = (prior + total)[group] > self.max_occurrences
        cum = np.cumsum(cnt)
        before = cum - cnt - (cum[starts] - cnt[starts])[group] + prior[group]
        quota = np.clip(self.max_occurrences - before, 0, cnt)
        limited = heavy & (quota < cnt)
        out = work / "quota"
        out.mkdir(parents=True, exist_ok=True)
        for s in range(num_shards):
            sel = limited & (shard == s)
            np.savez(out / f"{s:05d}.npz", keys=key[sel], quota=quota[sel])
        self._write_state(work, key[starts], total)

    def _prior_counts(self, keys: np.ndarray) -> np.ndarray:
        """Occurrences of each key in the corpora of earlier runs (incremental mode), else 0."""
        prior = np.zeros(len(keys), dtype=np.int64)
        if self.state_in is None:
            return prior
        state = np.load(self.state_in)
        pos = np.searchsorted(state["keys"], keys)
        pos = np.minimum(pos, max(len(state["keys"]) - 1, 0))
        hit = (state["keys"][pos] == keys) if len(state["keys"]) else np.zeros(len(keys), bool)
        prior[hit] = state["counts"][pos[hit]]
        return prior

    def _write_state(self, work: Path, keys: np.ndarray, counts: np.ndarray) -> None:
        """``line_counts.npz``: every line's count so far (earlier runs + this one), sorted."""
        if self.state_in is not None:
            state = np.load(self.state_in)
            keys = np.r_[state["keys"], keys]
            counts = np.r_[state["counts"], counts]
            order = np.argsort(keys, kind="stable")
            keys, counts = keys[order], counts[order]
            starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else keys[:0]
            keys = keys[starts]
            counts = np.add.reduceat(counts, starts) if len(starts) else counts[:0]
        heavy = keys[counts > self.max_occurrences]
        np.savez(work / "line_counts.npz", keys=keys, counts=counts)
        np.save(work / "heavy_lines.npy", heavy)

    def apply(self, work: Path, shard: int) -> Step:
        part = np.load(work / "quota" / f"{shard:05d}.npz")
        quota = dict(zip(part["keys"].tolist(), part["quota"].tolist(), strict=True))
        return _ApplyLineQuota(self, quota)


class _ApplyLineQuota(Step):
    name = "line_dedup"

    def __init__(self, spec: LineDedup, quota: dict[int, int]):
        self.spec = spec
        self.quota = quota

    def run(self, docs: Iterable[Document], ctx: StepContext) -> Iterator[Document]:
        used: Counter[int] = Counter()
        for doc in docs:
            if not self.quota:
                yield doc
                continue
            lines = doc.text.split("\n")
            removed = set()
            for pos, h in candidate_lines(lines, self.spec.head, self.spec.tail):
                q = self.quota.get(h)
                if q is None:
                    continue
                used[h] += 1
                if used[h] > q:
                    removed.add(pos)
            if not removed:
                yield doc
                continue
            ctx.stats.counters["lines_removed"] += len(removed)
            ctx.stats.counters["docs_modified"] += 1
            doc.text = "\n".join(line for i, line in enumerate(lines) if i not in removed)
            if not doc.text.strip():
                ctx.drop(doc, "all_lines_removed")
                continue
            yield doc
