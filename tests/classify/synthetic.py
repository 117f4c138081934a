"""A small labelled synthetic web for stage-3 tests: categories, page types, quality, clutter.

Everything is generated from a seed; nothing is downloaded. The vocabularies overlap through a
shared pool of common words and some cross-category noise, so the tasks are learnable but not
trivial.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

from moelab.data.document import Document

COMMON = (
    "the a of and to in is that it for on with as was by this be are from at or an have not "
    "but had they his her which one you were all we there been has their more when will would"
).split()

CATEGORIES = {
    "science": "atom cell energy experiment theory molecule quantum gene climate physics data lab",
    "fiction": "dragon castle heart whispered knight forest sword queen dream shadow wept magic",
    "product": "price shipping warranty battery size colour discount model order stock buy review",
    "news": "minister election government reported police city council vote official crisis",
    "sports": "match goal team season league coach score player win championship stadium final",
}


def _words(rng: random.Random, pool: list[str], k: int) -> str:
    return " ".join(rng.choice(pool) for _ in range(k))


def category_docs(n: int, seed: int = 0, noise: float = 0.15) -> list[Document]:
    """Documents with ``metadata["label"]`` in CATEGORIES (uniform classes)."""
    rng = random.Random(seed)
    vocab = {c: w.split() for c, w in CATEGORIES.items()}
    names = sorted(vocab)
    docs = []
    for i in range(n):
        label = names[i % len(names)]
        words = []
        for _ in range(rng.randint(30, 80)):
            r = rng.random()
            if r < 0.45:
                words.append(rng.choice(COMMON))
            elif r < 0.45 + noise:
                words.append(rng.choice(vocab[rng.choice(names)]))
            else:
                words.append(rng.choice(vocab[label]))
        docs.append(Document(f"cat-{seed}-{i}", " ".join(words) + ".", metadata={"label": label}))
    return docs


def page_type_docs(n: int, seed: int = 0) -> list[Document]:
    """``detail`` articles versus ``tool``, ``video`` and ``forum`` pages."""
    rng = random.Random(seed)
    prose = "research shows history people water early century region known large species".split()
    makers = {
        "detail": lambda: ". ".join(_words(rng, COMMON + prose, 14) for _ in range(6)) + ".",
        "tool": lambda: "\n".join(
            f"from {_words(rng, prose, 1)} to {_words(rng, prose, 1)} depart {rng.randint(0, 23)}:{rng.randint(10, 59)} route {rng.randint(1, 99)}"
            for _ in range(5)
        ),
        "video": lambda: (
            f"watch video {rng.randint(1, 9)}:{rng.randint(10, 59)} "
            f"{rng.randint(1000, 99999)} views likes playlist autoplay next {_words(rng, COMMON, 6)}"
        ),
        "forum": lambda: "\n".join(
            f"reply #{k} posted by user{rng.randint(1, 999)} quote {_words(rng, COMMON + prose, 8)}"
            for k in range(4)
        ),
    }
    names = sorted(makers)
    return [
        Document(f"page-{seed}-{i}", makers[names[i % 4]](), metadata={"label": names[i % 4]})
        for i in range(n)
    ]


CLUTTER_TEMPLATES = [
    "Home | About | Contact | Blog",
    "Home » {w} » {w}",
    "We use cookies to improve your experience. Accept all cookies.",
    "Subscribe to our newsletter for weekly updates!",
    "© {y} {W} Media. All rights reserved.",
    "Share on Facebook Share on Twitter",
    "Posted by admin on March {d}, {y} in Uncategorized",
    "Advertisement",
    "Related posts: {w} {w} and more {w}.",
    "Tags: {w}, {w}, {w}",
    "Leave a comment.",
    "Previous post Next post",
    "Sign up for free to get the best {w} deals.",
    "Page {d} of {d}",
]


def _content_line(rng: random.Random) -> str:
    kind = rng.random()
    vocab = COMMON + "water history people early region known large city river mountain".split()
    if kind < 0.6:
        return _words(rng, vocab, rng.randint(8, 25)).capitalize() + "."
    if kind < 0.8:  # a heading: short, no punctuation (the heuristic's weak spot)
        return _words(rng, vocab, rng.randint(2, 4)).title()
    return f"{rng.randint(1, 5)} cups {rng.choice(vocab)} {rng.choice(vocab)}"  # a list item


def _clutter_line(rng: random.Random) -> str:
    t = rng.choice(CLUTTER_TEMPLATES)
    while "{" in t:
        t = (
            t.replace("{w}", rng.choice(COMMON), 1)
            .replace("{W}", rng.choice(COMMON).title(), 1)
            .replace("{y}", str(rng.randint(2005, 2025)), 1)
            .replace("{d}", str(rng.randint(1, 28)), 1)
        )
    return t


def clutter_docs(n: int, seed: int = 0) -> list[list[tuple[str, bool]]]:
    """Pages as ``[(line, is_clutter)]``: navigation on top, boilerplate at the bottom, some inside."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        lines = [(_clutter_line(rng), True) for _ in range(rng.randint(0, 3))]
        for _ in range(rng.randint(4, 12)):
            bad = rng.random() < 0.15
            lines.append((_clutter_line(rng), True) if bad else (_content_line(rng), False))
        lines += [(_clutter_line(rng), True) for _ in range(rng.randint(0, 4))]
        docs.append(lines)
    return docs


@dataclass
class _Stats:
    counters: Counter = field(default_factory=Counter)


@dataclass
class FakeContext:
    """Stands in for the data runner's step context: counts and dropped documents."""

    stats: _Stats = field(default_factory=_Stats)
    dropped: list = field(default_factory=list)

    def drop(self, doc: Document, reason: str) -> None:
        self.dropped.append((doc, reason))
