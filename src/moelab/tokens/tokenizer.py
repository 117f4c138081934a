"""A thin wrapper over Hugging Face ``tokenizers``: load, train, encode, decode, hash.

The two model families ship byte-level BPE ``tokenizer.json`` files that ``tokenizers`` reads
as they are; what differs is which special tokens mean what:

* dots.llm1 (Qwen2 tokenizer): **no BOS**, EOS ``<|endoftext|>`` (151643 in the real file).
* OLMoE (GPT-NeoX-derived): **no BOS**, EOS ``<|endoftext|>`` (50279), PAD ``<|padding|>`` (1).

Special tokens are resolved by *string* (the family's, or else a neighbouring
``tokenizer_config.json``'s) and then looked up in the vocabulary, so a small test tokenizer with
the same layout behaves like the real one. Pretraining text is encoded without the tokenizer's
post-processor (no template BOS); a document becomes ``[bos?] + ids + [eos]``, and a special
token's string inside the text (a web page quoting ``<|endoftext|>``) stays plain text, so the
only EOS ids in a shard are the document ends.

``Tokenizer.hash`` is a content hash of the canonical tokenizer JSON plus the resolved special
tokens. Every artifact made with a tokenizer records it, so shards made with one tokenizer are
refused by a run configured with another. Canonicalising a 150k-entry vocabulary costs a
fraction of a second, so it is computed once: ``save`` records it in ``tokenizer_config.json``
next to a SHA-256 of the ``tokenizer.json`` bytes it was made from, ``from_file`` reuses it only
while those bytes (and the special tokens) are unchanged, and tokenize workers receive the
parent's hash instead of hashing again.

``encode_packed`` is the pretraining path: many documents become one uint32 array plus document
ends, with no per-token Python objects beyond the list ``tokenizers`` itself returns; it calls
``tokenizers`` on small batches (``ENCODE_BATCH``), which is faster than large ones.

What this module does not know: documents, shards or models. It maps text to ids and back.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer as HFTokenizer

EOT = "<|endoftext|>"

ENCODE_BATCH = 32
"""Texts per ``encode_batch_fast`` call in ``encode_packed``. One thread gains nothing from
big batches, and a batch's ``Encoding`` objects stay alive until it returns: 512 texts of
~2 KB are ~20 MB of them, 32 are ~1 MB, within a core's L2. For speed it is a wash in fresh
processes (a bare loop over 15,000 such texts: 4.16 vs 4.23 CPU s for 32 vs 512 in one run,
5.42 vs 5.30 in another; ``tokenize_bench.py`` takes the faster as its baseline); in one
long-lived process 32 was the faster by ~10%; and it bounds the memory a long document
batch takes. It costs ~0.6% more instructions."""


@dataclass(frozen=True)
class SpecialTokens:
    """Special-token strings of a family; ``None`` means the family has none."""

    bos: str | None = None
    eos: str | None = EOT
    pad: str | None = None


FAMILIES: dict[str, SpecialTokens] = {
    # Qwen2 tokenizer as used by dots.llm1: bos_token null (model_spec §2.9).
    "dots": SpecialTokens(bos=None, eos=EOT, pad=None),
    # allenai/gpt-neox-olmo-dolma-v1_5: EOS 50279, PAD 1, id 0 is |||IP_ADDRESS||| (§3.7).
    "olmoe": SpecialTokens(bos=None, eos=EOT, pad="<|padding|>"),
    # The byte-level BPE trained for the demo by ``train_bpe``.
    "demo": SpecialTokens(bos=None, eos=EOT, pad=None),
}


def _token_content(value: Any) -> str | None:
    """tokenizer_config.json stores a special token as a string or as ``{"content": ...}``."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise ValueError(f"cannot read a special token from {value!r}")


def _read_config_specials(path: Path, base: SpecialTokens) -> SpecialTokens:
    """Apply bos/eos/pad from a tokenizer_config.json over the family defaults."""
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    values = {}
    for name in ("bos", "eos", "pad"):
        key = f"{name}_token"
        values[name] = _token_content(raw[key]) if key in raw else getattr(base, name)
    return SpecialTokens(**values)


def _saved_family(path: Path) -> str | None:
    """The family that ``Tokenizer.save`` recorded, if any (None for foreign files)."""
    try:
        family = json.loads(path.read_text()).get("moelab_family")
    except (json.JSONDecodeError, AttributeError):
        return None
    return family if family in FAMILIES else None


class Tokenizer:
    """A ``tokenizers.Tokenizer`` plus resolved special-token ids and a content hash."""

    def __init__(
        self,
        tokenizer: HFTokenizer,
        specials: SpecialTokens,
        family: str = "custom",
        content_hash: str | None = None,
    ):
        """Wrap ``tokenizer``; ``content_hash`` is a hash already computed for this exact
        content (by ``from_file``'s record or a parent process), so it is not recomputed."""
        self.hf = tokenizer
        # Web text that happens to contain "<|endoftext|>" must not become an EOS id: special
        # tokens in text are encoded as ordinary text unless a caller asks otherwise.
        self.hf.encode_special_tokens = True
        self.specials = specials
        self.family = family
        self.bos_id = self._lookup(specials.bos, "bos")
        self.eos_id = self._lookup(specials.eos, "eos")
        self.pad_id = self._lookup(specials.pad, "pad")
        self.hash = content_hash or self._content_hash()

    def _lookup(self, token: str | None, role: str) -> int | None:
        if token is None:
            return None
        token_id = self.hf.token_to_id(token)
        if token_id is None:
            raise ValueError(f"{role} token {token!r} is not in the tokenizer's vocabulary")
        return token_id

    def _content_hash(self) -> str:
        canonical = json.dumps(json.loads(self.hf.to_str()), sort_keys=True, ensure_ascii=False)
        specials = json.dumps([self.specials.bos, self.specials.eos, self.specials.pad])
        digest = hashlib.sha256((canonical + "\n" + specials).encode("utf-8")).hexdigest()
        return f"sha256:{digest[:16]}"

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_file(cls, path: str | Path, family: str | None = None) -> Tokenizer:
        """Load ``tokenizer.json`` (a file, or a directory holding it).

        Special tokens are those of ``family`` (``dots``, ``olmoe``, ``demo``) when one is named
        or was saved by ``save``; otherwise those of a ``tokenizer_config.json`` next to the
        file; otherwise EOS ``<|endoftext|>`` and no BOS. A named family wins over the config
        because instruct releases change eos/bos there (``<|endofresponse|>``, an OLMoE BOS)
        while pretraining documents must end in ``<|endoftext|>``.
        """
        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"no tokenizer.json at {path}")
        if family is not None and family not in FAMILIES:
            raise ValueError(f"unknown tokenizer family {family!r} (known: {', '.join(FAMILIES)})")
        config = file.parent / "tokenizer_config.json"
        if family is None and config.is_file():
            family = _saved_family(config)
        if family is not None:
            specials = FAMILIES[family]
        elif config.is_file():
            specials = _read_config_specials(config, SpecialTokens())
        else:
            specials = SpecialTokens()
        data = file.read_bytes()
        recorded = _recorded_hash(config, data, specials) if config.is_file() else None
        hf = HFTokenizer.from_str(data.decode("utf-8"))
        return cls(hf, specials, family or "custom", content_hash=recorded)

    @classmethod
    def from_str(
        cls,
        text: str,
        specials: SpecialTokens,
        family: str = "custom",
        content_hash: str | None = None,
    ) -> Tokenizer:
        """Rebuild from ``to_str()`` output (how worker processes receive a tokenizer);
        pass the sender's ``hash`` as ``content_hash`` to skip rehashing."""
        return cls(HFTokenizer.from_str(text), specials, family, content_hash)

    def to_str(self) -> str:
        return self.hf.to_str()

    def save(self, directory: str | Path) -> Path:
        """Write ``tokenizer.json`` and a ``tokenizer_config.json`` naming the special tokens."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.hf.save(str(directory / "tokenizer.json"))
        config = {
            "bos_token": self.specials.bos,
            "eos_token": self.specials.eos,
            "pad_token": self.specials.pad,
            "moelab_family": self.family,
            "moelab_hash": self.hash,
            "moelab_hash_of": _hash_source(
                (directory / "tokenizer.json").read_bytes(), self.specials
            ),
        }
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
        return directory

    # -- encoding -----------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can emit, added tokens included."""
        return self.hf.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, parse_special: bool = False) -> list[int]:
        """Token ids of ``text`` without BOS/EOS or any template.

        ``parse_special=True`` maps special-token strings in ``text`` to their ids (for chat
        templates); by default they are encoded as plain text, as pretraining data must be.
        """
        if not parse_special:
            return self.hf.encode(text, add_special_tokens=False).ids
        self.hf.encode_special_tokens = False
        try:
            return self.hf.encode(text, add_special_tokens=False).ids
        finally:
            self.hf.encode_special_tokens = True

    def encode_chat(self, text: str) -> tuple[list[int], list[int]]:
        """Ids of a rendered chat (special-token strings parsed) and each token's start character.

        The start offsets let a caller mark which tokens came from which part of the text
        (assistant turns for SFT) while tokenizing the whole string at once, exactly as
        inference and transformers' ``apply_chat_template`` do.
        """
        self.hf.encode_special_tokens = False
        try:
            enc = self.hf.encode(text, add_special_tokens=False)
        finally:
            self.hf.encode_special_tokens = True
        return enc.ids, [start for start, _ in enc.offsets]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Ids of many texts at once (``tokenizers`` batches in Rust, skipping offsets)."""
        return [e.ids for e in self.hf.encode_batch_fast(list(texts), add_special_tokens=False)]

    def encode_documents(self, texts: Sequence[str]) -> list[list[int]]:
        """Ids of whole documents for pretraining: ``[bos?] + ids + [eos?]`` each."""
        out = self.encode_batch(texts)
        if self.bos_id is not None:
            out = [[self.bos_id, *ids] for ids in out]
        if self.eos_id is not None:
            for ids in out:
                ids.append(self.eos_id)
        return out

    def encode_packed(
        self, texts: Sequence[str], batch_size: int = ENCODE_BATCH
    ) -> tuple[np.ndarray, np.ndarray]:
        """Whole documents (``[bos?] + ids + [eos?]`` each) back to back, for shards.

        Returns:
            tokens: uint32, every document's ids concatenated.
            ends: int64 cumulative end of each document in ``tokens`` (``ends[-1] == len``).

        ``tokenizers`` is called on ``batch_size`` texts at a time: it keeps a whole batch's
        ``Encoding`` objects (tens of bytes a token) alive until the batch returns, and a small
        batch keeps them in the core's cache (see ``ENCODE_BATCH``). The ids go straight from
        ``tokenizers``' list into an ``array('I')`` with ``fromlist`` (one resize, then a C
        loop): about 8 ns a token here, against 16 for ``extend`` and about 40 for the chained
        ``np.fromiter`` over per-document lists that ``ShardWriter.write`` does.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        tokens = array("I")
        ends = array("q")
        put, end = tokens.fromlist, ends.append
        bos, eos = self.bos_id, self.eos_id
        encode = self.hf.encode_batch_fast
        texts = list(texts)
        for start in range(0, len(texts), batch_size):
            for enc in encode(texts[start : start + batch_size], add_special_tokens=False):
                if bos is not None:
                    tokens.append(bos)
                put(enc.ids)
                if eos is not None:
                    tokens.append(eos)
                end(len(tokens))
        return np.frombuffer(tokens, dtype=np.uint32), np.frombuffer(ends, dtype=np.int64)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def describe(self) -> dict[str, Any]:
        """What artifacts record about the tokenizer that made them."""
        return {
            "hash": self.hash,
            "family": self.family,
            "vocab_size": self.vocab_size,
            "bos_id": self.bos_id,
            "eos_id": self.eos_id,
            "pad_id": self.pad_id,
        }


def _hash_source(tokenizer_json: bytes, specials: SpecialTokens) -> dict[str, Any]:
    """What a recorded hash was computed from: the exact file bytes and special tokens."""
    return {
        "tokenizer_json_sha256": hashlib.sha256(tokenizer_json).hexdigest(),
        "specials": [specials.bos, specials.eos, specials.pad],
    }


def _recorded_hash(config: Path, tokenizer_json: bytes, specials: SpecialTokens) -> str | None:
    """The hash ``save`` recorded in ``config``, if it still describes these bytes and specials.

    Hashing raw bytes (milliseconds) instead of the canonical JSON (a fraction of a second for
    a real vocabulary) is what makes the reuse cheap; an edited file falls back to rehashing.
    """
    try:
        raw = json.loads(config.read_text())
    except json.JSONDecodeError:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("moelab_hash"), str):
        return None
    if raw.get("moelab_hash_of") != _hash_source(tokenizer_json, specials):
        return None
    return raw["moelab_hash"]


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    special_tokens: Sequence[str] = (EOT,),
    min_frequency: int = 2,
) -> Tokenizer:
    """Train a byte-level BPE (GPT-2 style) on ``texts``; for the offline demo.

    The 256 byte symbols are always in the vocabulary, so any text round-trips. The special
    tokens get the first ids; ``<|endoftext|>`` is the EOS.
    """
    from tokenizers import decoders, models, pre_tokenizers, trainers

    if vocab_size < 256 + len(special_tokens):
        raise ValueError(
            f"vocab_size ({vocab_size}) must be >= 256 bytes + {len(special_tokens)} special tokens"
        )
    if EOT not in special_tokens:
        raise ValueError(f"special_tokens must include the EOS {EOT!r}")
    tk = HFTokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(tk, FAMILIES["demo"], family="demo")
