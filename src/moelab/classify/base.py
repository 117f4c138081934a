"""The one classifier interface of stage 3, its two backends, and loading either from disk.

A classifier has ``labels`` and ``predict_proba(texts) -> (N, C)``. Backends:

* ``ngram``: :class:`moelab.classify.ngram.NgramClassifier`, trained here on a CPU
  (``classifier.json`` + ``weights.npz``);
* ``transformers``: any local ``AutoModelForSequenceClassification`` directory
  (``config.json`` with ``id2label``, weights and a tokenizer), run in batches, on CUDA when
  present. This is how the 1.5B page-type / quality / category models of dots.llm1 would run.

What this module does not know: documents, thresholds or what the labels mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from moelab.classify.ngram import NgramClassifier
from moelab.common.deps import require


class Classifier(Protocol):
    labels: list[str]

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray: ...


class TransformersClassifier:
    """A local transformers sequence-classification model behind the ``Classifier`` interface.

    Args:
        directory: holds ``config.json`` (with ``id2label``), the weights and a tokenizer.
        batch_size: texts per forward pass.
        max_length: tokens kept per text (longer texts are truncated).
        device: ``cuda``/``cpu``; default CUDA when available.
    """

    backend = "transformers"

    def __init__(
        self,
        directory: str | Path,
        batch_size: int = 32,
        max_length: int = 512,
        device: str | None = None,
    ):
        require("transformers", "hf")
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        self.model = AutoModelForSequenceClassification.from_pretrained(
            str(directory), local_files_only=True, dtype=dtype
        ).to(self.device)
        self.model.eval()
        id2label: dict[Any, str] = self.model.config.id2label
        self.labels = [id2label[i] for i in range(len(id2label))]
        self.batch_size, self.max_length = batch_size, max_length

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        out = []
        for enc in encoded_batches(
            self.tokenizer, texts, self.batch_size, self.max_length, self.device
        ):
            with torch.inference_mode():
                logits = self.model(**enc).logits.float()
            out.append(torch.softmax(logits, dim=-1).cpu().numpy())
        if not out:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return np.concatenate(out)


def classifier_labels(directory: str | Path) -> list[str]:
    """The labels of a saved classifier, read from its metadata without loading weights."""
    import json

    directory = Path(directory)
    if (directory / "classifier.json").is_file():
        return list(json.loads((directory / "classifier.json").read_text())["labels"])
    if (directory / "config.json").is_file():
        id2label = json.loads((directory / "config.json").read_text()).get("id2label") or {}
        return [id2label[k] for k in sorted(id2label, key=int)]
    raise FileNotFoundError(
        f"{directory} holds neither classifier.json (ngram) nor config.json (transformers)"
    )


class LazyClassifier:
    """A saved classifier whose weights load on the first ``predict_proba``.

    The data runner builds its steps in the parent process and again in every worker; only the
    workers that classify should pay for (and hold GPU memory for) the model. ``labels`` are
    known at once, so a step can check its keep-labels before anything runs.
    """

    def __init__(self, directory: str | Path, **kwargs: Any):
        self.directory, self.kwargs = Path(directory), kwargs
        self.labels = classifier_labels(self.directory)
        self._model: Classifier | None = None

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        if self._model is None:
            self._model = load_classifier(self.directory, **self.kwargs)
        return self._model.predict_proba(texts)


def load_classifier(directory: str | Path, **kwargs: Any) -> Classifier:
    """An ngram classifier (``classifier.json``) or a transformers model (``config.json``)."""
    directory = Path(directory)
    if (directory / "classifier.json").is_file():
        return NgramClassifier.load(directory)
    if (directory / "config.json").is_file():
        return TransformersClassifier(directory, **kwargs)
    raise FileNotFoundError(
        f"{directory} holds neither classifier.json (ngram) nor config.json (transformers)"
    )


def encoded_batches(tokenizer, texts: Sequence[str], batch_size: int, max_length: int, device):
    """Padded, truncated tensor batches of ``texts`` for a transformers model on ``device``."""
    for i in range(0, len(texts), batch_size):
        yield tokenizer(
            list(texts[i : i + batch_size]),
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        ).to(device)
