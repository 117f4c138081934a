"""The one type that flows between data steps, and its JSONL(.gz) form.

A step never sees raw bytes or tokens: it takes ``Document`` objects and yields ``Document``
objects. On disk a document is one JSON object per line: ``{id, text, url, source, metadata}``.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:  # ISA-L inflates gzip to the same bytes ~3x faster than zlib; optional (the `data` extra)
    from isal import igzip as _read_gzip
except ImportError:
    _read_gzip = gzip


@dataclass
class Document:
    id: str
    text: str
    url: str | None = None
    source: str | None = None
    """Where the document came from (a file path, a crawl name)."""
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        # A plain dict, not dataclasses.asdict: asdict deep-copies the metadata (17% of the
        # writer's time in stage 1) only for json to read it once.
        raw = {
            "id": self.id,
            "text": self.text,
            "url": self.url,
            "source": self.source,
            "metadata": self.metadata,
        }
        return json.dumps(raw, ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str) -> Document:
        raw = json.loads(line)
        if not isinstance(raw, dict) or "id" not in raw or "text" not in raw:
            raise ValueError("a document needs at least the fields 'id' and 'text'")
        return cls(
            id=str(raw["id"]),
            text=raw["text"],
            url=raw.get("url"),
            source=raw.get("source"),
            metadata=raw.get("metadata") or {},
        )


def _open_text(path: Path, mode: str) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, mode + "b"), encoding="utf-8")
    return open(path, mode, encoding="utf-8")


def read_documents(path: str | Path) -> Iterator[Document]:
    """Documents from a ``.jsonl`` or ``.jsonl.gz`` file, in file order.

    A ``.gz`` file is inflated by ISA-L when ``isal`` is installed: for the token stage,
    which reads every document once and does little else, zlib was ~3.5% of its CPU time."""
    path = Path(path)
    raw = _read_gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    with io.TextIOWrapper(raw, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield Document.from_json(line)
            except (ValueError, TypeError) as err:
                raise ValueError(f"{path}:{lineno}: not a document: {err}") from None


def write_documents(path: str | Path, docs: Iterable[Document]) -> int:
    """Write documents as JSONL (gzip if the name ends in .gz); returns how many."""
    path = Path(path)
    n = 0
    with _open_text(path, "w") as fh:
        for doc in docs:
            fh.write(doc.to_json() + "\n")
            n += 1
    return n
