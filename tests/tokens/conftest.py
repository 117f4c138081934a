"""Fixtures for the token stage: a generated corpus, a tiny trained BPE, a documents folder."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from moelab.data.document import Document, write_documents
from moelab.tokens.tokenizer import Tokenizer, train_bpe

WORDS = (
    "the of and mixture experts router token shard model data train layer über naïve "
    "café 数据 模型 専門家 😀 — 3.14 x=y+1 \t tab"
).split(" ")


def make_texts(n: int, seed: int = 0) -> list[str]:
    """Deterministic pseudo-sentences with unicode, digits, tabs and newlines."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        lines = [
            " ".join(rng.choices(WORDS, k=rng.randint(3, 25))) for _ in range(rng.randint(1, 4))
        ]
        texts.append("\n".join(lines))
    return texts


def make_docs_dir(root: Path, n_files: int = 3, per_file: int = 40, seed: int = 0) -> Path:
    """``root/docs/{i:05d}.jsonl.gz`` (the last file plain .jsonl) with unique ids."""
    docs_dir = root / "docs"
    docs_dir.mkdir(parents=True, exist_ok=True)
    texts = make_texts(n_files * per_file, seed)
    for i in range(n_files):
        docs = [Document(id=f"doc-{i}-{j}", text=texts[i * per_file + j]) for j in range(per_file)]
        suffix = ".jsonl" if i == n_files - 1 else ".jsonl.gz"
        write_documents(docs_dir / f"{i:05d}{suffix}", docs)
    return docs_dir


@pytest.fixture(scope="session")
def demo_tokenizer() -> Tokenizer:
    return train_bpe(make_texts(300, seed=123), vocab_size=400)


@pytest.fixture()
def tokenizer_dir(tmp_path: Path, demo_tokenizer: Tokenizer) -> Path:
    return demo_tokenizer.save(tmp_path / "tok")


@pytest.fixture(scope="session")
def texts():
    """``texts(n, seed)``: the corpus generator, for tests that build their own tokenizers."""
    return make_texts


@pytest.fixture()
def docs_factory():
    """``docs_factory(root, n_files, per_file, seed)``: a documents folder as a data stage writes."""
    return make_docs_dir
