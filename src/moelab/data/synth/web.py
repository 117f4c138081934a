"""`moelab data synth OUT --pages N --seed S`: a synthetic crawl as WARC.gz files plus truth.

Writes ``OUT/warc/crawl-NNNNN.warc.gz`` (one gzip member per record, as Common Crawl does),
``OUT/blocklist/domains.txt``, ``OUT/truth.jsonl`` (one line per planted page: its kind, the step
that should remove it, its duplicate group and planted similarity) and ``OUT/pipeline.yaml``, a
ready data config for this crawl. Page kinds, and the step expected to remove them:

good_en, good_zh, odd encodings (cp1252, GBK via meta tag, mis-declared charset) → kept;
blocked domain → url_filter; no main text → dropped (extract or language); other language → language;
exact copy (case, punctuation, spacing perturbed) → exact_dedup; near copy (a fraction of words
replaced; its body's 5-gram Jaccard to the original is in the truth) → minhash; keyword spam → quality; binary, empty, undecodable, oversized, malformed or
truncated records → read. Every good page carries its site's byline and sign-off lines (the
line-dedup targets).

Stage-3 gold (``labels.py``): every page in the truth has ``page_type``, and articles ``quality``
and ``category``; listing/forum/video/adult pages → page_type, word-salad articles →
quality_model. ``clutter_lines`` lists the boilerplate lines planted inside an article (the
site's byline and sign-off in ``lines`` are boilerplate too). ``labelled_pages > 0`` also writes a
separate labelled split for training the stage-3 classifiers (``labelled.py``).
"""

from __future__ import annotations

import gzip
import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moelab.data.synth import labels
from moelab.data.synth.templates import Site, make_sites, render_nav_only, render_page
from moelab.data.synth.text import (
    OTHER_LANGUAGES,
    chinese_paragraph,
    english_sentences,
    other_language_paragraph,
)

NEAR_DUP_RATES = (0.01, 0.02, 0.04, 0.07, 0.1, 0.15, 0.25, 0.4)
"""Fractions of words replaced in planted near-duplicates (about J 0.95 down to 0.2)."""
_MIX = {  # kind -> share of pages
    "blocked": 0.03,
    "other_lang": 0.05,
    "spam": 0.03,
    "exact_dup": 0.06,
    "near_dup": 0.10,
    "no_text": 0.01,
    "good_zh": 0.14,
    "odd_encoding": 0.02,
    "binary": 0.004,
    "empty": 0.004,
    "undecodable": 0.003,
    "listing": 0.02,
    "forum": 0.02,
    "video": 0.015,
    "adult": 0.01,
    "low_quality": 0.04,
}


@dataclass
class SynthConfig:
    pages: int = 1000
    seed: int = 0
    files: int = 4
    huge_page_bytes: int = 5_300_000
    """One page this large is planted (the reader's default limit is 5,000,000 bytes)."""
    damage: bool = True
    """Plant a malformed record, a corrupt gzip member and a truncated file tail."""
    labelled_pages: int = 0
    """Pages of the separate labelled split for stage 3 (0: none); another seed, other pages."""


@dataclass
class Article:
    title: str
    paragraphs: list[str]
    category: str = "zh"


class _Generator:
    def __init__(self, cfg: SynthConfig):
        self.cfg = cfg
        self.rng = np.random.default_rng(cfg.seed)
        n_en = max(2, cfg.pages // 500)
        self.sites = make_sites(self.rng, n_en, max(1, n_en // 3))
        self.en_sites = [s for s in self.sites if s.lang == "en"]
        self.zh_sites = [s for s in self.sites if s.lang == "zh"]
        self.sentences = english_sentences()
        self.vocab = sorted({w for s in self.sentences for w in s.split() if w.isalpha()})
        self.titles: list[str] = []
        self.good: list[tuple[Site, Article, str]] = []  # (site, article, id) of kept originals
        self.counter = 0

    def uid(self) -> str:
        return str(uuid.UUID(int=int(self.rng.integers(0, 2**63)) << 64 | self.counter))

    def url(self, site: Site) -> str:
        self.counter += 1
        return f"https://{site.domain}/articles/{self.counter:07d}.html"

    def en_article(self, topic: str | None = None) -> Article:
        topic = topic or labels.pick_category(self.rng)
        title, paras = labels.topic_article(self.rng, topic)
        return Article(title, paras, topic)

    def zh_article(self) -> Article:
        paras = [
            chinese_paragraph(self.rng, int(self.rng.integers(3, 6)))
            for _ in range(int(self.rng.integers(3, 6)))
        ]
        return Article(paras[0][:12], paras)


def _perturb_exact(text: str, rng: np.random.Generator) -> str:
    """Change case, punctuation and spacing only: the dots normalisation undoes all of it."""
    out = []
    for word in text.split(" "):
        r = rng.random()
        if r < 0.15:
            word = word.upper()
        elif r < 0.3:
            word = word.lower()
        elif r < 0.38 and word.isalpha():
            word = word + ","
        out.append(word)
    return (
        ("  " if rng.random() < 0.5 else " ")
        .join(out)
        .replace(".", "!" if rng.random() < 0.5 else ".")
    )


def _perturb_near(text: str, rate: float, rng: np.random.Generator, vocab: list[str]) -> str:
    words = text.split(" ")
    for i in np.flatnonzero(rng.random(len(words)) < rate):
        words[i] = vocab[int(rng.integers(len(vocab)))]
    return " ".join(words)


def _body_jaccard(a: Article, b: Article) -> float:
    """Planted similarity: exact 5-gram Jaccard of the two article bodies (dots-normalised)."""
    from moelab.data.dedup.shingles import jaccard, shingle_hashes, tokenize

    sa, sb = (shingle_hashes(tokenize("\n".join([x.title, *x.paragraphs]))) for x in (a, b))
    return jaccard(sa, sb)


def http_response_record(url: str, record_id: str, payload: bytes, content_type: str) -> bytes:
    http = (
        f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode("ascii") + payload
    head = (
        f"WARC/1.0\r\nWARC-Type: response\r\nWARC-Record-ID: <urn:uuid:{record_id}>\r\n"
        f"WARC-Date: 2024-05-01T00:00:00Z\r\nWARC-Target-URI: {url}\r\n"
        f"Content-Type: application/http; msgtype=response\r\n"
        f"Content-Length: {len(http)}\r\n\r\n"
    ).encode("ascii")
    return head + http + b"\r\n\r\n"


def write_synthetic_web(out: str | Path, cfg: SynthConfig) -> dict:
    """Write the crawl, its blocklist, its truth and a pipeline config; returns a summary."""
    out = Path(out)
    (out / "warc").mkdir(parents=True, exist_ok=True)
    (out / "blocklist").mkdir(parents=True, exist_ok=True)
    gen = _Generator(cfg)
    records, truth = _plan_pages(gen, cfg)
    files = [bytearray() for _ in range(max(1, cfg.files))]
    for i, rec in enumerate(records):
        files[i * len(files) // len(records)] += rec
    if cfg.damage:
        _plant_damage(gen, files, truth)
    for k, data in enumerate(files):
        (out / "warc" / f"crawl-{k:05d}.warc.gz").write_bytes(bytes(data))
    (out / "blocklist" / "domains.txt").write_text(
        "# planted blocklist\nblocked-casino.example.net\nadult-site.example.org\n"
    )
    with open(out / "truth.jsonl", "w", encoding="utf-8") as fh:
        for t in truth:
            fh.write(json.dumps(t, ensure_ascii=False) + "\n")
    _write_pipeline_yaml(out, gen)
    summary_labelled = None
    if cfg.labelled_pages > 0:
        from moelab.data.synth.labelled import write_labelled_split

        summary_labelled = write_labelled_split(out / "labelled", cfg.labelled_pages, cfg.seed)
    kinds: dict[str, int] = {}
    for t in truth:
        kinds[t["kind"]] = kinds.get(t["kind"], 0) + 1
    summary = {"out": str(out), "pages": len(truth), "files": len(files), "kinds": kinds}
    return summary | ({"labelled": summary_labelled} if summary_labelled else {})


def _plan_pages(gen: _Generator, cfg: SynthConfig) -> tuple[list[bytes], list[dict]]:
    n = cfg.pages
    counts = {k: int(round(v * n)) for k, v in _MIX.items()}
    kinds = [k for k, c in counts.items() for _ in range(c)]
    kinds += ["good_en"] * max(0, n - len(kinds) - 1)
    gen.rng.shuffle(kinds)
    kinds.insert(0, "good_en")
    records, truth = [], []
    for kind in kinds:
        rec, t = _make_page(gen, kind)
        records.append(rec)
        truth.append(t)
    if n >= 200:
        rid = gen.uid()
        site = gen.en_sites[0]
        payload = (
            b"<html><body>" + b"<p>large page</p>" * (cfg.huge_page_bytes // 15) + b"</body></html>"
        )
        url = gen.url(site)
        records.append(
            gzip.compress(
                http_response_record(url, rid, payload, "text/html; charset=utf-8"), mtime=0
            )
        )
        truth.append({"id": rid, "url": url, "kind": "huge", "expected": "read"})
    return records, truth


def _good_page(gen: _Generator, zh: bool = False) -> tuple[Site, Article]:
    sites = gen.zh_sites if zh else gen.en_sites
    site = sites[int(gen.rng.integers(len(sites)))]
    return site, gen.zh_article() if zh else gen.en_article()


def _make_page(gen: _Generator, kind: str, as_html: bool = False) -> tuple[bytes | str, dict]:
    """One page as a gzipped WARC record (or, for article-like kinds, its HTML) and its truth."""
    rng = gen.rng
    rid = gen.uid()
    t: dict = {"id": rid, "kind": kind, "expected": "kept"}
    ctype, charset = "text/html; charset=utf-8", "utf-8"
    if kind in ("exact_dup", "near_dup") and not gen.good:
        kind = t["kind"] = "good_en"
    gold = {"page_type": "detail", "quality": "high"}
    if kind in ("good_en", "good_zh"):
        site, art = _good_page(gen, kind == "good_zh")
        planted: list[str] = []
        if kind == "good_en" and rng.random() < 0.85:
            paras, planted = labels.plant_clutter(
                rng, art.paragraphs, gen.titles, art.category, site.name
            )
            art = Article(art.title, paras, art.category)
        gen.good.append((site, art, rid))
        gen.titles.append(art.title)
        t.update(site=site.domain, lines=[site.head_line, site.tail_line], **gold)
        t.update(category=art.category, clutter_lines=planted)
    elif kind == "exact_dup":
        site, orig, oid = gen.good[int(rng.integers(len(gen.good)))]
        art = Article(
            _perturb_exact(orig.title, rng), [_perturb_exact(p, rng) for p in orig.paragraphs]
        )
        if site.lang == "zh":
            art = Article(orig.title, [p.replace("，", "、", 1) + "  " for p in orig.paragraphs])
        t.update(gold, category=orig.category)
        t.update(
            expected="exact_dedup",
            group=oid,
            site=site.domain,
            lines=[site.head_line, site.tail_line],
        )
    elif kind == "near_dup":
        site, orig, oid = gen.good[int(rng.integers(len(gen.good)))]
        while site.lang != "en":
            site, orig, oid = gen.good[int(rng.integers(len(gen.good)))]
        rate = NEAR_DUP_RATES[int(rng.integers(len(NEAR_DUP_RATES)))]
        art = Article(orig.title, [_perturb_near(p, rate, rng, gen.vocab) for p in orig.paragraphs])
        t.update(gold, category=orig.category)
        t.update(
            expected="minhash",
            group=oid,
            rate=rate,
            jaccard=round(_body_jaccard(orig, art), 4),
            site=site.domain,
            lines=[site.head_line, site.tail_line],
        )
    elif kind == "blocked":
        site, art = _good_page(gen)
        site = Site(
            site.name,
            "www.blocked-casino.example.net" if rng.random() < 0.5 else "adult-site.example.org",
            site.layout,
            "en",
            site.head_line,
            site.tail_line,
        )
        t.update(expected="url_filter")
    elif kind == "other_lang":
        site, _ = _good_page(gen)
        lang = OTHER_LANGUAGES[int(rng.integers(len(OTHER_LANGUAGES)))]
        paras = [other_language_paragraph(rng, lang, int(rng.integers(3, 6))) for _ in range(4)]
        art = Article(paras[0][:30], paras)
        t.update(expected="language", language=lang)
    elif kind == "spam":
        site, art = _good_page(gen)
        stuffed = "Buy cheap pills online at the best price with a free casino bonus today. "
        art.paragraphs = [
            art.paragraphs[0],
            stuffed * int(rng.integers(8, 15)),
            *art.paragraphs[1:],
            stuffed * int(rng.integers(4, 8)),
        ]
        t.update(expected="quality")
    elif kind in labels.JUNK_TYPES:
        site = gen.en_sites[int(rng.integers(len(gen.en_sites)))]
        title, paras = labels.junk_page(rng, kind, gen.titles, labels.pick_category(rng))
        art = Article(title, paras, "")
        t.update(expected="page_type", page_type=kind, site=site.domain)
    elif kind == "low_quality":
        site, art = _good_page(gen)
        art = Article(art.title, labels.word_salad(rng, art.paragraphs), art.category)
        t.update(gold, expected="quality_model", quality="low", category=art.category)
        t.update(site=site.domain, lines=[site.head_line, site.tail_line])
    elif kind == "no_text":
        site = gen.en_sites[int(rng.integers(len(gen.en_sites)))]
        payload = render_nav_only(site, rng, gen.titles).encode("utf-8")
        url = gen.url(site)
        t.update(url=url, expected="dropped")
        return gzip.compress(http_response_record(url, rid, payload, ctype), mtime=0), t
    elif kind == "odd_encoding":
        return _odd_encoding_page(gen, rid, t)
    else:
        return _fault_page(gen, kind, rid, t)
    html = render_page(
        site,
        art.title,
        art.paragraphs,
        rng,
        gen.titles,
        charset=charset,
        with_repeated_lines=kind not in ("spam", "other_lang", *labels.JUNK_TYPES),
    )
    url = gen.url(site)
    t["url"] = url
    if as_html:
        return html, t
    return gzip.compress(http_response_record(url, rid, html.encode(charset), ctype), mtime=0), t


def _odd_encoding_page(gen: _Generator, rid: str, t: dict) -> tuple[bytes, dict]:
    rng = gen.rng
    variant = ["cp1252_header", "gbk_meta", "misdeclared_utf8"][int(rng.integers(3))]
    zh = variant == "gbk_meta"
    site, art = _good_page(gen, zh)
    if not zh:
        art.paragraphs[0] = (
            "Café society and naïve résumés were the talk of the season. " + art.paragraphs[0]
        )
    if variant == "cp1252_header":
        html = render_page(site, art.title, art.paragraphs, rng, gen.titles, meta_charset=False)
        payload, ctype = html.encode("cp1252", "replace"), "text/html; charset=windows-1252"
    elif variant == "gbk_meta":
        html = render_page(site, art.title, art.paragraphs, rng, gen.titles, charset="gbk")
        payload, ctype = html.encode("gbk", "replace"), "text/html"
    else:
        html = render_page(site, art.title, art.paragraphs, rng, gen.titles, meta_charset=False)
        payload, ctype = html.encode("cp1252", "replace"), "text/html; charset=utf-8"
    gen.good.append((site, art, rid))
    url = gen.url(site)
    t.update(
        url=url,
        variant=variant,
        site=site.domain,
        lines=[site.head_line, site.tail_line],
        marker="Café society" if not zh else None,
        page_type="detail",
        quality="high",
        category=art.category,
    )
    return gzip.compress(http_response_record(url, rid, payload, ctype), mtime=0), t


def _fault_page(gen: _Generator, kind: str, rid: str, t: dict) -> tuple[bytes, dict]:
    rng = gen.rng
    site = gen.en_sites[0]
    url = gen.url(site)
    if kind == "binary":
        payload = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + rng.bytes(2000)
    elif kind == "empty":
        payload = b""
    else:  # undecodable: invalid in UTF-8 and in GBK, declared as UTF-8
        payload = (
            b"<html><body><p>"
            + bytes(rng.integers(0x80, 0x100, 3000, dtype=np.uint8))
            + b"</p></body></html>"
        )
    t.update(url=url, expected="read" if kind != "undecodable" else "dropped")
    return gzip.compress(
        http_response_record(url, rid, payload, "text/html; charset=utf-8"), mtime=0
    ), t


def _plant_damage(gen: _Generator, files: list[bytearray], truth: list[dict]) -> None:
    """A malformed record and a corrupt gzip member in file 0, a truncated tail in the last."""
    bad = gzip.compress(
        b"WARC/1.0\r\nWARC-Type: response\r\nContent-Length: banana\r\n\r\nxx\r\n\r\n", mtime=0
    )
    corrupt = bytearray(gzip.compress(b"WARC/1.0\r\n" + gen.rng.bytes(500), mtime=0))
    corrupt[20:40] = b"\x00" * 20
    files[0] += bad + bytes(corrupt)
    truth.append({"id": None, "kind": "malformed_record", "expected": "read"})
    truth.append({"id": None, "kind": "corrupt_gzip", "expected": "read"})
    rid = gen.uid()
    site = gen.en_sites[0]
    url = gen.url(site)
    art = gen.en_article()
    html = render_page(site, art.title, art.paragraphs, gen.rng, gen.titles)
    member = gzip.compress(
        http_response_record(url, rid, html.encode(), "text/html; charset=utf-8"), mtime=0
    )
    files[-1] += member[: len(member) // 2]
    truth.append({"id": rid, "url": url, "kind": "truncated_tail", "expected": "read"})


def _write_pipeline_yaml(out: Path, gen: _Generator) -> None:
    # Each site repeats its byline and sign-off on every page; dots caps a line at 200
    # occurrences, which a small crawl never reaches, so the cap scales down with the crawl.
    cap = 200 if gen.cfg.pages >= 10_000 else max(5, gen.cfg.pages // 15)
    text = (
        "# data pipeline for this synthetic crawl (moelab data run THIS_FILE)\n"
        "input:\n"
        f"  paths: [{(out / 'warc').resolve()}]\n"
        f"output_dir: {(out / 'run').resolve()}\n"
        "workers: 2\n"
        "url_filter:\n"
        f"  domains_files: [{(out / 'blocklist' / 'domains.txt').resolve()}]\n"
        "line_dedup:\n"
        f"  max_occurrences: {cap}   # dots: 200; scaled to the crawl's size below 10,000 pages\n"
    )
    if gen.cfg.labelled_pages > 0:
        text += _stage3_yaml(out.resolve())
    (out / "pipeline.yaml").write_text(text)


def _stage3_yaml(out: Path) -> str:
    """Commented stage-3 section: train on the labelled split, then uncomment."""
    lines = ["# stage 3: train the models on the labelled split, then uncomment the section below"]
    for name, field, kind in (
        ("page_type", "page_type", "document"),
        ("quality", "quality", "document"),
        ("category", "category", "document"),
        ("clutter", "clutter_lines", "clutter"),
    ):
        lines.append(
            f"#   moelab data train-classifier docs={out}/labelled/{name}.jsonl "
            f"out_dir={out}/models/{name} label_field={field} kind={kind}"
        )
    lines += [
        "# stage3:",
        f"#   page_type: {{enabled: true, model: {out}/models/page_type}}",
        f"#   clutter: {{enabled: true, model: {out}/models/clutter}}",
        f"#   quality: {{enabled: true, model: {out}/models/quality}}",
        f"#   category: {{enabled: true, model: {out}/models/category, "
        "weights: {reference: 0.3, files: 0.17, networking: 0.15, numbers: 0.13, text: 0.1, zh: 0.15}}",
    ]
    return "\n".join(lines) + "\n"
