"""Typed configs of the token stage: training a demo tokenizer and tokenizing documents.

What this module does not know: how either job runs (see ``pipeline.py`` and ``tokenizer.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from moelab.config import Config, ConfigError

Family = Literal["dots", "olmoe", "demo"]


def _at(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _require(path: str, name: str, value: str) -> None:
    if not value:
        raise ConfigError(_at(path, name), "is required")


@dataclass
class TokenizeConfig(Config):
    """``moelab tokens tokenize``: a documents folder → ``<out_dir>/{train,validation}/`` shards."""

    docs_dir: str = ""
    """Folder of ``*.jsonl`` / ``*.jsonl.gz`` documents (a data stage's output)."""
    out_dir: str = ""
    """Where shards go: ``<out_dir>/train``, ``<out_dir>/validation``, ``<out_dir>/completions``."""
    tokenizer: str = ""
    """A ``tokenizer.json`` or the folder holding it (with an optional tokenizer_config.json)."""
    family: Family | None = None
    """Special-token defaults (dots, olmoe, demo); null: those saved with the tokenizer."""
    validation_fraction: float = 0.01
    """Share of documents (by hash of their id) sent to the validation split."""
    split_salt: str = "moelab"
    """Mixed into the id hash; change it to draw a different validation set."""
    workers: int = 1
    """Worker processes; each takes whole input files. 1 runs in this process."""
    batch_docs: int = 32
    """Documents per ``tokenizers`` batch call; small batches bound the memory a batch's
    ``Encoding`` objects take and are no slower on one thread (``tokenizer.ENCODE_BATCH``)."""
    write_chars: int = 1 << 22
    """Characters of text a split collects before they are encoded and written to its shard:
    bounds a worker's memory, and keeps writes large."""

    def validate(self, path: str) -> None:
        for name in ("docs_dir", "out_dir", "tokenizer"):
            _require(path, name, getattr(self, name))
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ConfigError(
                _at(path, "validation_fraction"),
                f"must be in [0, 1), got {self.validation_fraction}",
            )
        if self.workers < 1:
            raise ConfigError(_at(path, "workers"), f"must be >= 1, got {self.workers}")
        if self.batch_docs < 1:
            raise ConfigError(_at(path, "batch_docs"), f"must be >= 1, got {self.batch_docs}")
        if self.write_chars < 1:
            raise ConfigError(_at(path, "write_chars"), f"must be >= 1, got {self.write_chars}")


@dataclass
class TrainTokenizerConfig(Config):
    """``moelab tokens train-tokenizer``: a byte-level BPE trained on documents (the demo's)."""

    docs_dir: str = ""
    """Folder of ``*.jsonl`` / ``*.jsonl.gz`` documents to learn merges from."""
    out_dir: str = ""
    """Where ``tokenizer.json`` and ``tokenizer_config.json`` are written."""
    vocab_size: int = 4096
    """Total ids including the 256 bytes and the special tokens."""
    max_docs: int | None = None
    """Use at most this many documents (null: all)."""
    min_frequency: int = 2
    """A pair must occur this often to be merged."""

    def validate(self, path: str) -> None:
        for name in ("docs_dir", "out_dir"):
            _require(path, name, getattr(self, name))
        if self.vocab_size < 257:
            raise ConfigError(_at(path, "vocab_size"), f"must be >= 257, got {self.vocab_size}")
        if self.max_docs is not None and self.max_docs < 1:
            raise ConfigError(_at(path, "max_docs"), f"must be >= 1 or null, got {self.max_docs}")
