"""Site templates for synthetic pages: navigation, cookie banners, share bars, related links.

Each site has a name, a domain, a layout (three shapes of markup) and a byline and sign-off line
that it prints at the head and tail of every article: the repeated lines the dots line dedup
exists to remove, placed inside the main content so that extraction keeps them.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import numpy as np

_SITE_WORDS = (
    "River",
    "Harbor",
    "Summit",
    "Maple",
    "Cedar",
    "Northern",
    "Civic",
    "Open",
    "Lantern",
    "Granite",
    "Meadow",
    "Beacon",
    "Atlas",
    "Pioneer",
    "Orchard",
    "Signal",
)
_SITE_KINDS = ("Times", "Gazette", "Review", "Journal", "Notes", "Daily", "Herald", "Digest")
_SECTIONS = ("News", "Science", "Technology", "Culture", "Opinion", "Education", "Travel", "Books")
_ZH_SITES = ("新闻网", "科技日报", "文化周刊", "教育在线", "生活频道", "财经观察")


@dataclass
class Site:
    name: str
    domain: str
    layout: int
    lang: str
    head_line: str
    tail_line: str


def make_sites(rng: np.random.Generator, n_en: int, n_zh: int) -> list[Site]:
    """English and Chinese sites with distinct domains, layouts and repeated lines."""
    sites = []
    for i in range(n_en):
        name = f"{_SITE_WORDS[i % len(_SITE_WORDS)]} {_SITE_KINDS[(i * 7 + 3) % len(_SITE_KINDS)]}"
        section = _SECTIONS[int(rng.integers(len(_SECTIONS)))]
        sites.append(
            Site(
                name,
                f"{name.lower().replace(' ', '')}{i}.example.com",
                int(rng.integers(3)),
                "en",
                f"Filed under {section} by the {name} editorial staff",
                f"Thanks for reading the {name}, and remember to share this story with your friends.",
            )
        )
    for i in range(n_zh):
        name = _ZH_SITES[i % len(_ZH_SITES)] + (str(i) if i >= len(_ZH_SITES) else "")
        sites.append(
            Site(
                name,
                f"zh{i}.example.cn",
                int(rng.integers(3)),
                "zh",
                f"本文由{name}编辑部整理发布，转载请注明出处。",
                f"感谢阅读{name}的文章，欢迎分享给您的朋友。",
            )
        )
    return sites


def _nav(site: Site) -> str:
    items = "".join(f'<li><a href="/{s.lower()}/">{s}</a></li>' for s in _SECTIONS[:6])
    return f'<nav class="menu"><a class="logo" href="/">{html.escape(site.name)}</a><ul>{items}</ul></nav>'


def _related(rng: np.random.Generator, titles: list[str]) -> str:
    picks = [titles[int(i)] for i in rng.integers(0, len(titles), size=4)] if titles else []
    items = "".join(f'<li><a href="/a/{k}">{html.escape(t)}</a></li>' for k, t in enumerate(picks))
    return f'<aside class="related"><h3>Related articles</h3><ul>{items}</ul></aside>'


def render_page(
    site: Site,
    title: str,
    paragraphs: list[str],
    rng: np.random.Generator,
    related_titles: list[str],
    charset: str = "utf-8",
    meta_charset: bool = True,
    with_repeated_lines: bool = True,
) -> str:
    """Full HTML of an article page in the site's layout."""
    body = "".join(f"<p>{html.escape(p)}</p>\n" for p in paragraphs)
    if with_repeated_lines:
        body = (
            f'<p class="byline">{html.escape(site.head_line)}</p>\n{body}'
            f'<p class="signoff">{html.escape(site.tail_line)}</p>\n'
        )
    article = f"<article><h1>{html.escape(title)}</h1>\n{body}</article>"
    cookie = (
        '<div class="cookie-banner">We use cookies to improve your experience on our site. '
        "<button>Accept all cookies</button></div>"
    )
    share = '<div class="share-bar">Share: <a>Facebook</a> <a>Twitter</a> <a>LinkedIn</a> <a>Email</a></div>'
    footer = (
        f"<footer><p>© 2024 {html.escape(site.name)}. All rights reserved.</p>"
        '<p><a href="/privacy">Privacy policy</a> · <a href="/terms">Terms of use</a></p></footer>'
    )
    meta = f'<meta charset="{charset}">' if meta_charset else ""
    head = (
        f'<!DOCTYPE html><html lang="{site.lang}"><head>{meta}'
        f"<title>{html.escape(title)} | {html.escape(site.name)}</title></head><body>"
    )
    if site.layout == 0:
        main = f"<main>{article}{share}{_related(rng, related_titles)}</main>"
        return f"{head}{cookie}<header>{_nav(site)}</header>{main}{footer}</body></html>"
    if site.layout == 1:
        main = (
            f'<div id="wrap"><div class="sidebar">{_related(rng, related_titles)}</div>'
            f'<div class="content">{article}{share}</div></div>'
        )
        return f"{head}<header>{_nav(site)}</header>{main}{cookie}{footer}</body></html>"
    main = f'<div class="post">{share}{article}</div><div class="widgets">{_related(rng, related_titles)}</div>'
    return f"{head}{_nav(site)}{cookie}{main}{footer}</body></html>"


def render_nav_only(site: Site, rng: np.random.Generator, titles: list[str]) -> str:
    """A page with no main content at all: navigation, related links and a footer."""
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(site.name)}</title>'
        f"</head><body>{_nav(site)}{_related(rng, titles)}<footer>© 2024</footer></body></html>"
    )
