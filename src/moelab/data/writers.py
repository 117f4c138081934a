"""Writers: a shard's kept documents, its removed documents per step, its stats and marker.

Every file is written under a temporary name and renamed into place when complete, and a task's
completion marker is written last. A task killed at any point (even SIGKILL) therefore leaves no
final file that a rerun would append to: the rerun rewrites the same names, so no document is lost
or written twice.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from pathlib import Path
from typing import Any

from moelab.data.document import Document


class AtomicJsonlWriter:
    """JSONL(.gz) written to ``path.tmp.<pid>`` and renamed to ``path`` on close."""

    def __init__(self, path: Path, compresslevel: int = 3):
        self.path = path
        self.tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
        path.parent.mkdir(parents=True, exist_ok=True)
        raw = open(self.tmp, "wb")
        if path.suffix == ".gz":
            self._fh: io.TextIOBase = io.TextIOWrapper(
                gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=compresslevel, mtime=0),
                encoding="utf-8",
            )
            self._raw = raw
        else:
            self._fh = io.TextIOWrapper(raw, encoding="utf-8")
            self._raw = None
        self.count = 0

    def write(self, doc: Document) -> None:
        self._fh.write(doc.to_json() + "\n")
        self.count += 1

    def close(self) -> None:
        self._fh.close()
        if self._raw is not None:
            self._raw.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self._fh.close()
        self.tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, ensure_ascii=False))


class RemovedWriter:
    """Per-step exclusion files ``removed/<nn_step>/<shard>.jsonl.gz``, opened on first drop."""

    def __init__(self, root: Path, shard: int, enabled: bool = True, compresslevel: int = 3):
        self.root = root
        self.shard = shard
        self.enabled = enabled
        self.compresslevel = compresslevel
        self._writers: dict[str, AtomicJsonlWriter] = {}

    def sink_for(self, step_dir: str):
        """A ``(doc, reason)`` callback that records the reason and writes the document aside."""

        def sink(doc: Document, reason: str) -> None:
            if not self.enabled:
                return
            writer = self._writers.get(step_dir)
            if writer is None:
                path = self.root / step_dir / f"{self.shard:05d}.jsonl.gz"
                writer = self._writers[step_dir] = AtomicJsonlWriter(path, self.compresslevel)
            doc.metadata["filter_reason"] = reason
            doc.metadata["filter_step"] = step_dir
            writer.write(doc)

        return sink

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
