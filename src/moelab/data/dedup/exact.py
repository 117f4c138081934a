"""Exact dedup (dots "identity removal"): MD5 of the dots normalisation, one random keeper.

dots: "duplicate documents are then removed randomly". The keeper of each MD5 group is the
document with the smallest ``xxh64(seed, id)``: random, reproducible for a seed, and independent
of how the corpus is sharded or how many workers run. The dropped copies name their keeper in
``metadata['duplicate_of']``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import xxhash

from moelab.data.dedup.base import DropByIndex, GlobalStep, read_drops, write_drops
from moelab.data.document import Document
from moelab.data.normalize import dots_md5
from moelab.data.step import Step


class ExactDedup(GlobalStep):
    """Scan: MD5 and keeper priority per document. Reduce: group by MD5, keep one per group."""

    name = "exact_dedup"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def scan(self, docs: Iterable[Document], shard: int, work: Path) -> None:
        digests, prios, ids = [], [], []
        for doc in docs:
            digests.append(bytes.fromhex(dots_md5(doc.text)))
            prios.append(xxhash.xxh64_intdigest(doc.id.encode("utf-8"), seed=self.seed))
            ids.append(doc.id)
        out = work / "scan"
        out.mkdir(parents=True, exist_ok=True)
        md5 = np.frombuffer(b"".join(digests), dtype=np.uint64).reshape(-1, 2)
        np.savez(out / f"{shard:05d}.tmp.npz", md5=md5, prio=np.array(prios, dtype=np.uint64))
        (out / f"{shard:05d}.tmp.npz").replace(out / f"{shard:05d}.npz")
        (out / f"{shard:05d}.ids.json").write_text(json.dumps(ids))

    def reduce(self, work: Path, num_shards: int) -> None:
        parts = [np.load(work / "scan" / f"{s:05d}.npz") for s in range(num_shards)]
        ids = [
            json.loads((work / "scan" / f"{s:05d}.ids.json").read_text()) for s in range(num_shards)
        ]
        md5 = np.concatenate([p["md5"].reshape(-1, 2) for p in parts])
        prio = np.concatenate([p["prio"] for p in parts])
        shard = np.concatenate([np.full(len(p["prio"]), s, np.int64) for s, p in enumerate(parts)])
        index = np.concatenate([np.arange(len(p["prio"])) for p in parts])
        drops: dict[int, dict[int, tuple[str, dict]]] = {s: {} for s in range(num_shards)}
        if len(prio):
            order = np.lexsort((index, shard, prio, md5[:, 1], md5[:, 0]))
            key = md5[order]
            first = np.ones(len(order), dtype=bool)
            first[1:] = np.any(key[1:] != key[:-1], axis=1)
            keeper_pos = np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
            for pos in np.flatnonzero(~first):
                k = order[keeper_pos[pos]]
                d = order[pos]
                keeper = ids[shard[k]][index[k]]
                drops[int(shard[d])][int(index[d])] = ("exact_duplicate", {"duplicate_of": keeper})
        for s in range(num_shards):
            write_drops(work, s, drops[s])

    def apply(self, work: Path, shard: int) -> Step:
        return DropByIndex(self.name, read_drops(work, shard))
