"""Main-text extraction with trafilatura, the extractor dots.llm1 (after RefinedWeb) used.

Only documents whose ``metadata["format"]`` is ``html`` are extracted; plain-text inputs (JSONL)
pass through untouched. An empty or too-short extraction drops the page with a reason. The step
calls ``trafilatura.extract`` directly, with no per-page sandbox process: datatrove's sandbox cost
28% of throughput (data_anchors §4.2), and a pathological page is bounded by ``max_bytes`` in the
reader instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from moelab.common.deps import require
from moelab.data.document import Document
from moelab.data.step import Step, StepContext


class Extract(Step):
    """HTML → main text (trafilatura); keeps the page title in ``metadata['title']``."""

    name = "extract"

    def __init__(
        self, favor_precision: bool = False, include_tables: bool = True, min_chars: int = 1
    ):
        self.favor_precision = favor_precision
        self.include_tables = include_tables
        self.min_chars = min_chars
        self._options = self.options()
        # Imported here, not on the first page: a one-off cost is not per-page time in the funnel.
        self._extract = require("trafilatura", "data").extract

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_extract": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._extract = require("trafilatura", "data").extract

    def options(self) -> dict:
        """The keyword arguments of every ``trafilatura.extract`` call (the benchmark's bare
        loop passes the same ones, so the comparison is like for like)."""
        return {
            "favor_precision": self.favor_precision,
            "include_tables": self.include_tables,
            "include_comments": False,
            "deduplicate": False,
            "with_metadata": False,
        }

    def extract_text(self, html: str) -> str | None:
        return self._extract(html, **self._options)

    def run(self, docs: Iterable[Document], ctx: StepContext) -> Iterator[Document]:
        for doc in docs:
            if doc.metadata.get("format") != "html":
                yield doc
                continue
            try:
                text = self.extract_text(doc.text)
            except (ValueError, TypeError, RecursionError, AttributeError):
                ctx.drop(doc, "extract_error")
                continue
            if not text or len(text.strip()) < self.min_chars:
                ctx.drop(doc, "no_main_text")
                continue
            doc.text = text
            doc.metadata["format"] = "text"
            yield doc
