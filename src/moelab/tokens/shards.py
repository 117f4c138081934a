"""Token shards on disk: the hand-off from tokenization to training.

A shard folder (``shards/<split>/``) holds

* ``shard_{i:05d}.bin``: the tokens of whole documents, concatenated, as little-endian uint32;
* ``shard_{i:05d}.idx``: uint64 cumulative document ends within that shard (so the last entry
  equals the shard's token count);
* ``meta.json``: format, tokenizer hash and description, vocabulary size, dtypes, token and
  document counts, the largest token id, and the list of shards with their sizes.

``meta.json`` is written last, so a folder without it is unfinished. ``validate_shards`` checks
everything that can be checked without reading the tokens (sizes, index, tokenizer hash,
vocabulary fit) and raises ``ShardError`` with a message that says what to do. A shard may be
empty (an input that sent no document to this split); readers skip it.

What this module does not know: text, tokenizers (only their hash) or how rows are cut.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "moelab.tokens/1"
TOKEN_DTYPE = np.dtype("<u4")
INDEX_DTYPE = np.dtype("<u8")
META_NAME = "meta.json"


class ShardError(ValueError):
    """A shard folder is missing, truncated, or does not fit the run that wants to read it."""


def shard_name(index: int) -> str:
    return f"shard_{index:05d}"


@dataclass
class ShardInfo:
    """Sizes of one finished shard, as listed in ``meta.json``."""

    name: str
    tokens: int
    docs: int
    max_token_id: int = -1
    """-1 for an empty shard."""


@dataclass
class ShardMeta:
    """The parsed, validated ``meta.json`` of a shard folder."""

    directory: Path
    tokenizer_hash: str
    vocab_size: int
    num_tokens: int
    num_docs: int
    max_token_id: int
    shards: list[ShardInfo]
    extra: dict[str, Any] = field(default_factory=dict)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class ShardWriter:
    """Writes one shard (``.bin`` + ``.idx``) under temporary names; ``close()`` publishes it.

    A crash leaves only ``*.tmp`` files, which the next attempt overwrites, so a shard is
    either complete or absent.
    """

    def __init__(self, directory: str | Path, index: int):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.name = shard_name(index)
        self._bin_tmp = self.directory / f"{self.name}.bin.tmp"
        self._idx_tmp = self.directory / f"{self.name}.idx.tmp"
        self._bin = open(self._bin_tmp, "wb")
        self._idx = open(self._idx_tmp, "wb")
        self.tokens = 0
        self.docs = 0
        self.max_token_id = -1

    def write(self, docs: Sequence[Sequence[int]]) -> None:
        """Append whole documents, each a sequence of token ids."""
        if not docs:
            return
        lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
        total = int(lengths.sum())
        flat = np.fromiter(itertools.chain.from_iterable(docs), dtype=np.int64, count=total)
        if total and (int(flat.min()) < 0 or int(flat.max()) > np.iinfo(TOKEN_DTYPE).max):
            raise ShardError(f"{self.name}: token ids must fit in uint32")
        self.write_packed(flat.astype(TOKEN_DTYPE), np.cumsum(lengths))

    def write_packed(self, tokens: np.ndarray, ends: np.ndarray) -> None:
        """Append whole documents already packed, as ``Tokenizer.encode_packed`` returns them.

        Args:
            tokens: uint32, the documents' ids back to back.
            ends: cumulative end of each document within ``tokens`` (``ends[-1] == len``).
        """
        if tokens.dtype.kind != "u" or tokens.dtype.itemsize != 4:
            raise ShardError(f"{self.name}: packed tokens must be uint32, got {tokens.dtype}")
        if len(ends) == 0:
            if len(tokens):
                raise ShardError(f"{self.name}: {len(tokens)} tokens but no document ends")
            return
        if int(ends[-1]) != len(tokens) or np.any(np.diff(ends, prepend=0) < 0):
            raise ShardError(f"{self.name}: document ends are not an index of the tokens")
        if len(tokens):
            self.max_token_id = max(self.max_token_id, int(tokens.max()))
        tokens.astype(TOKEN_DTYPE, copy=False).tofile(self._bin)
        (self.tokens + np.asarray(ends, dtype=np.int64)).astype(INDEX_DTYPE).tofile(self._idx)
        self.tokens += len(tokens)
        self.docs += len(ends)

    def close(self) -> ShardInfo:
        self._bin.close()
        self._idx.close()
        os.replace(self._bin_tmp, self.directory / f"{self.name}.bin")
        os.replace(self._idx_tmp, self.directory / f"{self.name}.idx")
        return ShardInfo(self.name, self.tokens, self.docs, self.max_token_id)

    def abort(self) -> None:
        """Drop what was written (the shard stays absent)."""
        self._bin.close()
        self._idx.close()
        self._bin_tmp.unlink(missing_ok=True)
        self._idx_tmp.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is not None:
            self.abort()


def write_meta(
    directory: str | Path,
    shards: Sequence[ShardInfo],
    tokenizer: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``meta.json`` for finished shards; ``tokenizer`` is ``Tokenizer.describe()``."""
    shards = sorted(shards, key=lambda s: s.name)
    meta = {
        "format": FORMAT,
        "tokenizer_hash": tokenizer["hash"],
        "tokenizer": tokenizer,
        "vocab_size": int(tokenizer["vocab_size"]),
        "dtype": TOKEN_DTYPE.name,
        "index_dtype": INDEX_DTYPE.name,
        "num_tokens": sum(s.tokens for s in shards),
        "num_docs": sum(s.docs for s in shards),
        "max_token_id": max((s.max_token_id for s in shards), default=-1),
        "shards": [asdict(s) for s in shards],
        **(extra or {}),
    }
    _write_atomic(Path(directory) / META_NAME, json.dumps(meta, indent=2) + "\n")
    return meta


def _read_meta(directory: Path) -> dict[str, Any]:
    path = directory / META_NAME
    if not directory.is_dir():
        raise ShardError(f"shard folder {directory} does not exist")
    if not path.is_file():
        raise ShardError(
            f"{path} is missing: {directory} is not a finished shard folder "
            "(was `moelab tokens tokenize` interrupted? re-run it to finish)"
        )
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ShardError(f"{path} is not valid JSON: {err}") from None
    if meta.get("format") != FORMAT:
        raise ShardError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("dtype") != TOKEN_DTYPE.name or meta.get("index_dtype") != INDEX_DTYPE.name:
        raise ShardError(
            f"{path}: unsupported dtypes {meta.get('dtype')}/{meta.get('index_dtype')}"
        )
    return meta


def _check_shard(directory: Path, info: ShardInfo) -> None:
    bin_path, idx_path = directory / f"{info.name}.bin", directory / f"{info.name}.idx"
    for path, count, dtype in (
        (bin_path, info.tokens, TOKEN_DTYPE),
        (idx_path, info.docs, INDEX_DTYPE),
    ):
        if not path.is_file():
            raise ShardError(f"{path} is missing but listed in {directory / META_NAME}")
        size, want = path.stat().st_size, count * dtype.itemsize
        if size != want:
            raise ShardError(
                f"{path} is {size} bytes but {META_NAME} says {count} entries ({want} bytes): "
                "the file is truncated or was overwritten; re-tokenize this folder"
            )
    if info.docs:
        ends = np.fromfile(idx_path, dtype=INDEX_DTYPE)
        if int(ends[-1]) != info.tokens or np.any(np.diff(ends.astype(np.int64)) < 0):
            raise ShardError(f"{idx_path}: document ends are not a valid index of {bin_path.name}")


def validate_shards(
    directory: str | Path, tokenizer_hash: str | None = None, vocab_size: int | None = None
) -> ShardMeta:
    """Check a shard folder before training; raise ``ShardError`` saying what is wrong.

    Args:
        directory: a ``shards/<split>/`` folder.
        tokenizer_hash: the hash of the tokenizer the run is configured with, if known.
        vocab_size: the model's embedding rows; every token id must be below it.
    """
    directory = Path(directory)
    meta = _read_meta(directory)
    shards = [ShardInfo(**s) for s in meta["shards"]]
    for info in shards:
        _check_shard(directory, info)
    if sum(s.tokens for s in shards) != meta["num_tokens"]:
        raise ShardError(f"{directory / META_NAME}: num_tokens disagrees with its shard list")
    if tokenizer_hash is not None and meta["tokenizer_hash"] != tokenizer_hash:
        raise ShardError(
            f"{directory} was tokenized with tokenizer {meta['tokenizer_hash']}, but this run uses "
            f"{tokenizer_hash}: re-tokenize with the configured tokenizer or point at its shards"
        )
    if vocab_size is not None:
        if meta["vocab_size"] > vocab_size or meta["max_token_id"] >= vocab_size:
            raise ShardError(
                f"{directory}: the tokenizer's vocabulary ({meta['vocab_size']} ids, largest id "
                f"used {meta['max_token_id']}) does not fit the model's vocab_size ({vocab_size})"
            )
    known = {"shards", "tokenizer_hash", "vocab_size", "num_tokens", "num_docs", "max_token_id"}
    return ShardMeta(
        directory=directory,
        tokenizer_hash=meta["tokenizer_hash"],
        vocab_size=meta["vocab_size"],
        num_tokens=meta["num_tokens"],
        num_docs=meta["num_docs"],
        max_token_id=meta["max_token_id"],
        shards=shards,
        extra={k: v for k, v in meta.items() if k not in known},
    )


class ShardReader:
    """Memory-mapped, read-only view of a validated shard folder as one token stream.

    Shards are concatenated in name order; ``read(start, n)`` may cross shard boundaries.
    ``doc_ends`` holds global cumulative document ends (int64), loaded into memory
    (8 bytes per document).
    """

    def __init__(
        self,
        directory: str | Path,
        tokenizer_hash: str | None = None,
        vocab_size: int | None = None,
    ):
        self.meta = validate_shards(directory, tokenizer_hash, vocab_size)
        self.directory = self.meta.directory
        shards = [s for s in self.meta.shards if s.tokens > 0]
        self._names = [s.name for s in shards]
        self._starts = np.cumsum([0] + [s.tokens for s in shards]).astype(np.int64)
        self._maps: dict[int, np.memmap] = {}
        ends = [
            np.fromfile(self.directory / f"{s.name}.idx", dtype=INDEX_DTYPE).astype(np.int64)
            + self._starts[i]
            for i, s in enumerate(shards)
        ]
        self.doc_ends = np.concatenate(ends) if ends else np.zeros(0, dtype=np.int64)

    @property
    def num_tokens(self) -> int:
        return int(self._starts[-1])

    @property
    def num_docs(self) -> int:
        return len(self.doc_ends)

    def _map(self, i: int) -> np.memmap:
        if i not in self._maps:
            path = self.directory / f"{self._names[i]}.bin"
            self._maps[i] = np.memmap(path, dtype=TOKEN_DTYPE, mode="r")
        return self._maps[i]

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens ``[start, start + length)`` of the concatenated stream, as uint32."""
        if start < 0 or length < 0 or start + length > self.num_tokens:
            raise IndexError(f"tokens [{start}, {start + length}) outside 0..{self.num_tokens}")
        out = np.empty(length, dtype=TOKEN_DTYPE)
        pos, filled = start, 0
        while filled < length:
            i = int(np.searchsorted(self._starts, pos, side="right")) - 1
            local = pos - int(self._starts[i])
            take = min(length - filled, int(self._starts[i + 1]) - pos)
            out[filled : filled + take] = self._map(i)[local : local + take]
            pos, filled = pos + take, filled + take
        return out

    def document(self, i: int) -> np.ndarray:
        """Tokens of document ``i`` (its EOS included)."""
        begin = int(self.doc_ends[i - 1]) if i > 0 else 0
        return self.read(begin, int(self.doc_ends[i]) - begin)
