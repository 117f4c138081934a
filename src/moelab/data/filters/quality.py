"""Heuristic quality rules: Gopher repetition and quality, C4, FineWeb. One named reason per rule.

dots (App. C.2) names the rule families (RefinedWeb- and Gopher-style) but no thresholds, so the
defaults are datatrove's, which produced FineWeb (data_anchors §2.2). The rules run in FineWeb's
order and the first failing rule is the reason. C4 also *edits* documents as C4 does: lines with
too few words, "javascript" or cookie/policy boilerplate are removed before the sentence count.

Speed: n-gram repetition statistics are computed on integer word ids with numpy (datatrove's
Python loops ran at ~100 docs/s; see benchmarks/data_pipeline.py for ours).

CJK text has no spaces, so word rules are meaningless for it: for zh/ja/ko documents (by the
language step's tag, or by script) the Gopher-quality and C4 rules are skipped and repetition
rules count characters as words.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import numpy as np

from moelab.data.config import QualityConfig
from moelab.data.document import Document
from moelab.data.step import Step, StepContext

STOP_WORDS = frozenset(["the", "be", "to", "of", "and", "that", "have", "with"])
"""Gopher's required stop words (datatrove's list)."""
_CJK_LANGS = {"zh", "ja", "ko"}
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")
_TERMINAL = (".", "!", "?", '"', "'", "。", "！", "？", "”", "」")
_BULLETS = ("•", "●", "‣", "◦", "-", "*", "–")
_POLICY = (
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
)
_SENTENCE_END = re.compile(r"[.!?。！？]+(?:\s|$)")
_MULT = np.uint64(0x9E3779B97F4A7C15)


def _ngram_keys(ids: np.ndarray, n: int) -> np.ndarray:
    """A 64-bit key per n-gram of word ids (polynomial hash; collisions are negligible)."""
    m = len(ids) - n + 1
    key = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            key = key * _MULT + ids[j : j + m]
    return key


def _dup_ngram_char_frac(ids: np.ndarray, lens: np.ndarray, n: int, total: int) -> float:
    """Fraction of characters inside n-grams that occurred earlier in the document."""
    if len(ids) < n or total == 0:
        return 0.0
    keys = _ngram_keys(ids, n)
    _, first = np.unique(keys, return_index=True)
    repeat = np.ones(len(keys), dtype=bool)
    repeat[first] = False
    if not repeat.any():
        return 0.0
    cover = np.zeros(len(ids) + 1, dtype=np.int64)
    starts = np.flatnonzero(repeat)
    np.add.at(cover, starts, 1)
    np.add.at(cover, starts + n, -1)
    covered = np.cumsum(cover[:-1]) > 0
    return float(lens[covered].sum()) / total


def _top_ngram_char_frac(ids: np.ndarray, lens: np.ndarray, n: int, total: int) -> float:
    """Characters of the most frequent n-gram times its count, over all characters."""
    if len(ids) < n or total == 0:
        return 0.0
    keys = _ngram_keys(ids, n)
    uniq, first, counts = np.unique(keys, return_index=True, return_counts=True)
    best = int(np.argmax(counts))
    if counts[best] < 2:
        return 0.0
    start = first[best]
    return float(lens[start : start + n].sum()) * int(counts[best]) / total


def _dup_fraction(items: list[str]) -> tuple[float, float]:
    """(fraction of items seen before, fraction of characters in them)."""
    seen: set[str] = set()
    dup_n = dup_chars = total = 0
    for item in items:
        total += len(item)
        if item in seen:
            dup_n += 1
            dup_chars += len(item)
        else:
            seen.add(item)
    if not items:
        return 0.0, 0.0
    return dup_n / len(items), (dup_chars / total if total else 0.0)


class QualityFilter(Step):
    """All four rule families in one pass; drops with e.g. ``gopher_rep:top_2gram``."""

    name = "quality"

    def __init__(self, cfg: QualityConfig | None = None):
        self.cfg = cfg or QualityConfig()

    def run(self, docs: Iterable[Document], ctx: StepContext) -> Iterator[Document]:
        for doc in docs:
            reason = self.check(doc, ctx)
            if reason is None:
                yield doc
            else:
                ctx.drop(doc, reason)

    def check(self, doc: Document, ctx: StepContext | None = None) -> str | None:
        """The first failing rule's reason, or None; C4 may edit ``doc.text`` in place."""
        c = self.cfg
        cjk = _is_cjk(doc)
        words = list(doc.text.replace("\n", " ")) if cjk else doc.text.split()
        words = [w for w in words if not w.isspace()]
        if c.gopher_repetition and (r := self._gopher_repetition(doc.text, words)):
            return f"gopher_rep:{r}"
        if c.gopher_quality and not cjk and (r := self._gopher_quality(doc.text, words)):
            return f"gopher_qual:{r}"
        if c.c4 and not cjk and (r := self._c4(doc, ctx)):
            return f"c4:{r}"
        if c.fineweb:
            words = list(doc.text) if cjk else doc.text.split()
            if r := self._fineweb(doc.text, len(words)):
                return f"fineweb:{r}"
        return None

    def _gopher_repetition(self, text: str, words: list[str]) -> str | None:
        c = self.cfg
        paragraphs = [p for p in re.split(r"\n{2,}", text.strip()) if p.strip()]
        frac, chars = _dup_fraction(paragraphs)
        if frac > c.dup_para_frac:
            return "dup_para_frac"
        if chars > c.dup_para_char_frac:
            return "dup_para_char_frac"
        lines = [ln for ln in text.split("\n") if ln.strip()]
        frac, chars = _dup_fraction(lines)
        if frac > c.dup_line_frac:
            return "dup_line_frac"
        if chars > c.dup_line_char_frac:
            return "dup_line_char_frac"
        vocab: dict[str, int] = {}
        ids = np.fromiter((vocab.setdefault(w, len(vocab)) for w in words), np.uint64, len(words))
        lens = np.fromiter((len(w) for w in words), np.int64, len(words))
        total = int(lens.sum())
        for n, limit in zip((2, 3, 4), c.top_ngram_frac, strict=False):
            if _top_ngram_char_frac(ids, lens, n, total) > limit:
                return f"top_{n}gram"
        for n, limit in zip(range(5, 11), c.dup_ngram_frac, strict=False):
            if _dup_ngram_char_frac(ids, lens, n, total) > limit:
                return f"dup_{n}gram"
        return None

    def _gopher_quality(self, text: str, words: list[str]) -> str | None:
        c = self.cfg
        n = len(words)
        if n < c.min_words:
            return "too_few_words"
        if n > c.max_words:
            return "too_many_words"
        avg = sum(len(w) for w in words) / n
        if not c.min_avg_word_length <= avg <= c.max_avg_word_length:
            return "avg_word_length"
        symbols = text.count("#") + text.count("...") + text.count("…")
        if symbols / n > c.max_symbol_word_ratio:
            return "symbol_word_ratio"
        lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
        if lines:
            if sum(ln.startswith(_BULLETS) for ln in lines) / len(lines) > c.max_bullet_lines_ratio:
                return "bullet_lines"
            ellipsis = sum(ln.endswith(("...", "…")) for ln in lines) / len(lines)
            if ellipsis > c.max_ellipsis_lines_ratio:
                return "ellipsis_lines"
        alpha = sum(any(ch.isalpha() for ch in w) for w in words) / n
        if alpha < c.max_non_alpha_words_ratio:
            return "non_alpha_words"
        if sum(w.lower() in STOP_WORDS for w in words) < c.min_stop_words:
            return "stop_words"
        return None

    def _c4(self, doc: Document, ctx: StepContext | None) -> str | None:
        c = self.cfg
        lower = doc.text.lower()
        if "lorem ipsum" in lower:
            return "lorem_ipsum"
        if "{" in doc.text:
            return "curly_bracket"
        kept = []
        for line in doc.text.split("\n"):
            stripped = line.strip()
            words = stripped.split()
            low = stripped.lower()
            if (
                len(words) < c.c4_min_words_per_line
                or any(len(w) > c.c4_max_word_length for w in words)
                or "javascript" in low
                or any(p in low for p in _POLICY)
                or (c.c4_terminal_punct and not stripped.endswith(_TERMINAL))
            ):
                continue
            kept.append(line)
        text = "\n".join(kept)
        if len(_SENTENCE_END.findall(text)) < c.c4_min_sentences:
            return "too_few_sentences"
        if text != doc.text:
            if ctx is not None:
                ctx.stats.counters["c4_lines_removed"] += doc.text.count("\n") - text.count("\n")
                ctx.stats.counters["docs_modified"] += 1
            doc.text = text
        return None

    def _fineweb(self, text: str, n_words: int) -> str | None:
        c = self.cfg
        lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
        if not lines:
            return "empty"
        if (
            sum(ln.endswith(_TERMINAL) for ln in lines) / len(lines)
            < c.fineweb_min_punct_line_ratio
        ):
            return "line_punct_ratio"
        short = sum(len(ln) <= c.fineweb_short_line_chars for ln in lines) / len(lines)
        if short > c.fineweb_max_short_line_ratio:
            return "short_line_ratio"
        _, dup_chars = _dup_fraction(lines)
        if dup_chars > c.fineweb_max_dup_char_ratio:
            return "char_dup_ratio"
        if n_words and text.count("\n") / n_words > c.fineweb_max_newline_word_ratio:
            return "list_ratio"
        return None


def _is_cjk(doc: Document) -> bool:
    lang = doc.metadata.get("language")
    if lang is not None:
        return lang in _CJK_LANGS
    sample = doc.text[:2000]
    return bool(sample) and len(_CJK.findall(sample)) > 0.3 * len(sample)
