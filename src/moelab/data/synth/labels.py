"""Stage-3 gold for the synthetic web: page types, quality, topical categories, clutter lines.

Every English article is drawn from one topic's sentence pool (``text.topic_sentences``) with a
known share per category (``CATEGORY_SHARES``; Chinese pages are the category ``zh``). Pages
that are not text-rich articles are listing, forum, video or adult-like pages (the page types
dots.llm1 drops); low-quality pages are articles whose sentences are word salad. Most articles
get boilerplate lines planted *inside* the main content (so extraction keeps them) and a few
sub-headings (short, unpunctuated content lines: the rule baseline's weak spot). The gold lives
in ``truth.jsonl`` and in the labelled split, never in the page text.

What this module does not know: WARC, HTML or files (``web.py``, ``labelled.py`` do).
"""

from __future__ import annotations

import numpy as np

from moelab.data.synth.text import topic_sentences

CATEGORY_SHARES = {
    "reference": 0.40,
    "files": 0.20,
    "networking": 0.17,
    "numbers": 0.15,
    "text": 0.08,
}
"""Share of each topic among English articles (Chinese pages are category ``zh``)."""
PAGE_TYPES = ("detail", "listing", "forum", "video", "adult")
JUNK_TYPES = PAGE_TYPES[1:]

_CLUTTER = (
    "Advertisement",
    "Continue reading below",
    "Read more: {title}",
    "Related: {title}",
    "Most popular this week: {title}",
    "Share this article on Facebook, Twitter or by email.",
    "Subscribe to our newsletter for the latest {topic} news.",
    "Click here to download the full guide as a PDF.",
    "Photo: {site} staff",
    "Sponsored content from our partners.",
    "Sign up for free to keep reading this story.",
    "This article was updated on May {d}, 2024.",
    "Comments are closed.",
    "Tags: {w1}, {w2}, {w3}",
    "Skip to main content",
    "Follow us on social media for more updates!",
    "Story continues after the advertisement.",
    "Recommended for you",
    "Print this page",
    "Report a correction or typo on this page.",
)


def pick_category(rng: np.random.Generator) -> str:
    names = list(CATEGORY_SHARES)
    return names[int(rng.choice(len(names), p=list(CATEGORY_SHARES.values())))]


def topic_article(rng: np.random.Generator, topic: str) -> tuple[str, list[str]]:
    """(title, paragraphs) of 12..25 sentences from one topic's pool."""
    pool = topic_sentences()[topic]
    n = int(rng.integers(12, 26))
    sents = [pool[i] for i in rng.choice(len(pool), size=n, replace=False)]
    cuts = sorted(rng.choice(np.arange(2, n - 1), size=min(4, n - 3), replace=False))
    paras = [" ".join(sents[a:b]) for a, b in zip([0, *cuts], [*cuts, n], strict=True)]
    title = " ".join(sents[0].split()[: int(rng.integers(4, 9))]).rstrip(",;:")
    return title, paras


def _fill(template: str, rng: np.random.Generator, titles: list[str], topic: str, site: str) -> str:
    words = [w.strip(".,;:()").lower() for t in titles[-20:] for w in t.split() if len(w) > 4]
    words = words or ["python", "module", "function"]
    pick = [words[int(i)] for i in rng.integers(0, len(words), size=3)]
    return template.format(
        title=titles[int(rng.integers(len(titles)))] if titles else "Our latest stories",
        topic=topic,
        site=site,
        d=int(rng.integers(1, 29)),
        w1=pick[0],
        w2=pick[1],
        w3=pick[2],
    )


def _heading(rng: np.random.Generator, paragraph: str) -> str:
    words = [w.strip(".,;:()'\"") for w in paragraph.split()]
    words = [w for w in words if w.isalpha()]
    start = int(rng.integers(0, max(1, len(words) - 5)))
    return " ".join(words[start : start + int(rng.integers(3, 6))]).title()


def plant_clutter(
    rng: np.random.Generator, paragraphs: list[str], titles: list[str], topic: str, site: str
) -> tuple[list[str], list[str]]:
    """Insert 1..4 boilerplate lines and 0..2 sub-headings among ``paragraphs``.

    Returns the new paragraph list and the planted clutter lines (the gold); headings are
    content, not clutter.
    """
    out = list(paragraphs)
    for _ in range(int(rng.integers(0, 3))):
        at = int(rng.integers(1, len(out) + 1))
        out.insert(at, _heading(rng, out[at - 1]))
    planted = []
    for _ in range(int(rng.integers(1, 5))):
        line = _fill(_CLUTTER[int(rng.integers(len(_CLUTTER)))], rng, titles, topic, site)
        out.insert(int(rng.integers(0, len(out) + 1)), line)
        planted.append(line)
    return out, planted


_SEO = (
    "best free online guide 2024",
    "top 10 tips and tricks you need to know",
    "download now for free no registration",
    "cheap deals click the link below",
    "ultimate tutorial for beginners and experts",
    "you will not believe what happens next",
)


def word_salad(rng: np.random.Generator, paragraphs: list[str]) -> list[str]:
    """Low quality: most sentences with their words shuffled, some words doubled, and SEO
    filler phrases spliced in (machine-spun pages)."""
    out = []
    for para in paragraphs:
        sents = []
        for s in para.split(". "):
            words = s.rstrip(".").split()
            if rng.random() < 0.8 and len(words) > 3:
                words = [words[int(i)] for i in rng.permutation(len(words))]
                if rng.random() < 0.3:
                    k = int(rng.integers(len(words)))
                    words.insert(k, words[k])
            sents.append(" ".join(words).capitalize() + ".")
        for _ in range(int(rng.integers(0, 3))):
            seo = _SEO[int(rng.integers(len(_SEO)))]
            sents.insert(int(rng.integers(len(sents) + 1)), seo.capitalize() + ".")
        out.append(" ".join(sents))
    return out


def junk_page(
    rng: np.random.Generator, kind: str, titles: list[str], topic: str
) -> tuple[str, list[str]]:
    """(title, paragraphs) of a listing, forum, video or adult-like page."""
    pool = topic_sentences()[topic]

    def sent() -> str:
        return pool[int(rng.integers(len(pool)))]

    def title() -> str:
        return titles[int(rng.integers(len(titles)))] if titles else sent()[:40]

    if kind == "listing":
        items = [
            f"{title()}. {sent()} Read more ({int(rng.integers(0, 90))} comments)"
            for _ in range(int(rng.integers(8, 15)))
        ]
        return f"Latest {topic} stories", [
            *items,
            f"Page 1 of {int(rng.integers(2, 40))}. Next page",
        ]
    if kind == "forum":
        posts = []
        for k in range(int(rng.integers(4, 9))):
            user = f"user{int(rng.integers(1, 9999))}"
            posts.append(f"Reply #{k + 1} posted by {user} on May {int(rng.integers(1, 29))}:")
            posts.append(
                f"{sent()} {sent()}" if rng.random() < 0.6 else f"Quote: {sent()} +1, same here."
            )
        return f"Re: {title()}", [*posts, "Reply · Report · Like · Log in to post a reply"]
    if kind == "video":
        views = int(rng.integers(1_000, 2_000_000))
        lines = [
            f"{views:,} views · {int(rng.integers(1, 59))}:{int(rng.integers(10, 59))} · uploaded May 2024",
            f"Video description: {sent()} {sent()}",
        ]
        lines += [
            f"Up next: {title()} ({int(rng.integers(1, 20))}:{int(rng.integers(10, 59))})"
            for _ in range(4)
        ]
        lines.append("Autoplay is on. Subscribe to the channel and hit the bell for new videos.")
        return f"Watch: {title()}", lines
    if kind == "adult":
        lines = [
            "18+ only. Meet lonely singles in your area tonight, no sign up needed.",
            "Explicit live chat rooms are open now, verify your age to enter.",
            f"{sent()} {sent()}",
            "Hot singles are waiting for you. Click to enter, you must be over 18.",
            f"Members online now: {int(rng.integers(100, 9999))}. Private shows start at midnight.",
        ]
        return "Adult chat and dating tonight", [lines[int(i)] for i in rng.permutation(len(lines))]
    raise ValueError(f"unknown junk page kind {kind!r}")
