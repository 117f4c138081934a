"""Body text for synthetic pages, from text that ships with Python and with our dependencies.

English prose is cut from ``pydoc_data.topics`` (the Python reference manual) and standard-library
docstrings: only sentence-like lines (letters, terminal punctuation, no code or braces) are kept.
Chinese is sampled from jieba's dictionary (word frequency-weighted) and other languages from the
justext stop-word lists that trafilatura installs. Nothing is downloaded.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
import re
from pathlib import Path

import numpy as np

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_GOOD = re.compile(r"^[A-Z][A-Za-z0-9 ,;:'\"()\-]+[.!?]$")
_STDLIB_MODULES = (
    "string",
    "textwrap",
    "json",
    "csv",
    "collections",
    "functools",
    "itertools",
    "pathlib",
    "argparse",
    "logging",
    "datetime",
    "random",
    "statistics",
    "shutil",
    "subprocess",
    "threading",
    "unittest",
    "email",
    "http.client",
    "urllib.parse",
    "zipfile",
    "tarfile",
    "sqlite3",
    "decimal",
    "fractions",
    "heapq",
    "bisect",
    "os",
    "re",
    "io",
    "asyncio",
    "socket",
    "enum",
    "dataclasses",
    "inspect",
    "ast",
    "pickle",
    "copy",
    "codecs",
    "contextlib",
    "tempfile",
    "hashlib",
    "base64",
    "struct",
    "array",
    "queue",
    "sched",
    "selectors",
    "mailbox",
    "imaplib",
    "smtplib",
    "ftplib",
    "xml.dom.minidom",
    "configparser",
    "locale",
    "gettext",
    "calendar",
    "time",
    "math",
    "cmath",
    "operator",
    "abc",
)
OTHER_LANGUAGES = (
    "French",
    "German",
    "Spanish",
    "Italian",
    "Portuguese",
    "Dutch",
    "Polish",
    "Swedish",
)


def _sentences_from(text: str) -> list[str]:
    out = []
    for para in re.split(r"\n\s*\n", text):
        if para.startswith((" ", "\t")) or "::" in para or ">>>" in para:
            continue
        flat = " ".join(para.split())
        for s in _SENTENCE.split(flat):
            if 40 <= len(s) <= 260 and _GOOD.match(s) and len(s.split()) >= 7:
                out.append(s)
    return out


@functools.cache
def english_sentences() -> tuple[str, ...]:
    """Prose sentences from the Python reference manual and stdlib docstrings (deduplicated)."""
    from pydoc_data.topics import topics

    pool: list[str] = []
    for key in sorted(topics):
        pool.extend(_sentences_from(topics[key]))
    for name in _STDLIB_MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        for attr in sorted(dir(mod)):
            doc = getattr(getattr(mod, attr, None), "__doc__", None)
            if isinstance(doc, str):
                pool.extend(_sentences_from(doc))
    return tuple(dict.fromkeys(pool))


@functools.cache
def _jieba_words() -> tuple[list[str], np.ndarray]:
    spec = pkgutil.get_loader("jieba")
    path = Path(spec.get_filename()).parent / "dict.txt"  # type: ignore[union-attr]
    words, freqs = [], []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            parts = line.split()
            if (
                len(parts) >= 2
                and int(parts[1]) >= 2000
                and all("\u4e00" <= c <= "\u9fff" for c in parts[0])
            ):
                words.append(parts[0])
                freqs.append(int(parts[1]))
    p = np.sqrt(np.array(freqs, dtype=np.float64))
    return words, p / p.sum()


def chinese_paragraph(rng: np.random.Generator, sentences: int = 4) -> str:
    """A paragraph of frequency-sampled Chinese words with Chinese punctuation."""
    words, p = _jieba_words()
    out = []
    for _ in range(sentences):
        n = int(rng.integers(12, 28))
        idx = rng.choice(len(words), size=n, p=p)
        clause = "".join(words[i] for i in idx)
        cut = int(rng.integers(4, max(5, len(clause) - 4)))
        out.append(clause[:cut] + "，" + clause[cut:] + "。")
    return "".join(out)


@functools.cache
def _stopwords(language: str) -> tuple[str, ...]:
    spec = pkgutil.get_loader("justext")
    path = Path(spec.get_filename()).parent / "stoplists" / f"{language}.txt"  # type: ignore[union-attr]
    return tuple(w.strip() for w in path.read_text(encoding="utf-8").splitlines() if w.strip())


def other_language_paragraph(rng: np.random.Generator, language: str, sentences: int = 4) -> str:
    """A paragraph in ``language`` made of its stop words (enough for fastText to know it)."""
    words = _stopwords(language)
    out = []
    for _ in range(sentences):
        idx = rng.integers(0, len(words), size=int(rng.integers(9, 16)))
        s = " ".join(words[i] for i in idx)
        out.append(s[:1].upper() + s[1:] + ".")
    return " ".join(out)


TOPIC_MODULES: dict[str, tuple[str, ...]] = {
    "networking": (
        "socket",
        "http.client",
        "http.server",
        "urllib.parse",
        "urllib.request",
        "email",
        "smtplib",
        "imaplib",
        "ftplib",
        "mailbox",
        "selectors",
        "ssl",
    ),
    "files": (
        "pathlib",
        "shutil",
        "zipfile",
        "tarfile",
        "tempfile",
        "gzip",
        "glob",
        "filecmp",
        "sqlite3",
        "csv",
        "pickle",
        "shelve",
        "configparser",
    ),
    "text": (
        "string",
        "textwrap",
        "re",
        "codecs",
        "locale",
        "gettext",
        "difflib",
        "calendar",
        "datetime",
        "unicodedata",
        "json",
    ),
    "numbers": ("math", "cmath", "decimal", "fractions", "statistics", "random", "heapq", "bisect"),
}
"""Topical categories of English pages: prose from the docstrings of related stdlib modules.
A fifth, ``reference``, is the language reference manual (``pydoc_data.topics``)."""


@functools.cache
def topic_sentences() -> dict[str, tuple[str, ...]]:
    """Sentences per topic; a sentence found under two topics (an inherited docstring) goes."""
    from pydoc_data.topics import topics

    pools: dict[str, list[str]] = {"reference": []}
    for key in sorted(topics):
        pools["reference"].extend(_sentences_from(topics[key]))
    for topic, modules in TOPIC_MODULES.items():
        pool = pools[topic] = []
        for name in modules:
            try:
                mod = importlib.import_module(name)
            except ImportError:
                continue
            docs = [mod.__doc__] + [
                getattr(getattr(mod, a, None), "__doc__", None) for a in dir(mod)
            ]
            for doc in docs:
                if isinstance(doc, str):
                    pool.extend(_sentences_from(doc))
    seen: dict[str, set[str]] = {}
    for topic, pool in pools.items():
        for s in pool:
            seen.setdefault(s, set()).add(topic)
    return {
        t: tuple(dict.fromkeys(s for s in pool if len(seen[s]) == 1)) for t, pool in pools.items()
    }
