"""URL blocklist filter: drop pages by domain or exact URL, before any content is looked at.

RefinedWeb and dots filter on the URL only. The lists are data, not code: one domain or URL per
line in plain text files (``#`` comments allowed). A domain entry blocks the domain and all its
subdomains; we match every dot-suffix of the host against the set, so no public-suffix list
(tldextract, which downloads one) is needed. The UT1 list that the datatrove wheel ships can be
used when datatrove is installed (``ut1_from_datatrove``); it is never downloaded.

URL word scoring (RefinedWeb §G.1.2, as datatrove's URLFilter implements it) runs after the
lists: the URL is lower-cased and split into words (runs of ``[a-z0-9]``, host and path alike);
* one *banned word* drops the page (``url_banned_word``);
* *soft words* carry weights (default 1); when the weights of the distinct soft words in the URL add
  up to ``soft_threshold`` the page goes (``url_soft_words``): one "casino" is a hotel's page,
  "casino-poker-bonus" is not;
* a *banned sub-word* matches anywhere in the URL with every non-``[a-z0-9]`` removed
  (``url_banned_subword``), which catches words run together ("freepornvideos").
The matched words are kept in ``metadata['url_words']`` of the removed page. Small default lists
ship in ``filters/url_words/`` (:func:`default_word_lists`); list files replace or extend them.
"""

from __future__ import annotations

import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from moelab.data.document import Document
from moelab.data.step import Filter


def read_list(path: str | Path) -> set[str]:
    """Non-empty, non-comment lines of a text file, lower-cased."""
    out = set()
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            line = line.strip().lower()
            if line and not line.startswith("#"):
                out.add(line)
    return out


_WORD_SPLIT = re.compile(r"[^a-z0-9]+")
WORD_LISTS_DIR = Path(__file__).parent / "url_words"


def read_weighted_list(path: str | Path) -> dict[str, float]:
    """``word [weight]`` lines (weight 1 when absent); a bad weight is an error naming the line."""
    out: dict[str, float] = {}
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.strip().lower().split()
            if not parts or parts[0].startswith("#"):
                continue
            try:
                weight = float(parts[1]) if len(parts) > 1 else 1.0
            except ValueError:
                raise ValueError(f"{path}:{lineno}: weight {parts[1]!r} is not a number") from None
            out[parts[0]] = weight
    return out


@dataclass
class UrlWordLists:
    """The three word lists of RefinedWeb-style URL scoring."""

    banned: set[str] = field(default_factory=set)
    soft: dict[str, float] = field(default_factory=dict)
    subwords: set[str] = field(default_factory=set)

    def update(self, other: UrlWordLists) -> None:
        self.banned |= other.banned
        self.soft.update(other.soft)
        self.subwords |= other.subwords

    @classmethod
    def from_files(
        cls,
        banned: list[str] = (),
        soft: list[str] = (),
        subwords: list[str] = (),
    ) -> UrlWordLists:
        lists = cls()
        for f in banned:
            lists.banned |= read_list(f)
        for f in soft:
            lists.soft.update(read_weighted_list(f))
        for f in subwords:
            lists.subwords |= {_WORD_SPLIT.sub("", w) for w in read_list(f)} - {""}
        return lists


def default_word_lists() -> UrlWordLists:
    """The small lists shipped with moelab (adult and gambling words)."""
    d = WORD_LISTS_DIR
    return UrlWordLists.from_files(
        [d / "banned_words.txt"], [d / "soft_words.txt"], [d / "banned_subwords.txt"]
    )


def _datatrove_assets() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("datatrove")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("datatrove is not installed; its UT1 list is unavailable")
    return Path(spec.submodule_search_locations[0]) / "assets"


def datatrove_word_lists() -> UrlWordLists:
    """The banned, soft-banned (weight 1 each) and sub-word lists of the datatrove wheel."""
    assets = _datatrove_assets()
    names = ("banned_words.txt", "soft_banned_words.txt", "banned_subwords.txt")
    missing = [n for n in names if not (assets / n).exists()]
    if missing:
        raise FileNotFoundError(f"datatrove's URL word lists are missing: {missing} in {assets}")
    return UrlWordLists.from_files(*([assets / n] for n in names))


def ut1_from_datatrove() -> tuple[set[str], set[str]]:
    """(domains, urls) from the UT1 archive inside the datatrove wheel, if it is installed."""
    tar_path = _datatrove_assets() / "url_filterblacklistsv0_3_0.tar.gz"
    domains: set[str] = set()
    urls: set[str] = set()
    with tarfile.open(tar_path) as tar:
        for member in tar.getmembers():
            target = domains if member.name.endswith("domains") else urls
            if member.isfile() and member.name.split("/")[-1] in ("domains", "urls"):
                fh = tar.extractfile(member)
                assert fh is not None
                target.update(
                    x.strip().lower() for x in fh.read().decode().splitlines() if x.strip()
                )
    return domains, urls


def normalize_url(url: str) -> str:
    """Scheme-less, lower-cased host plus path, as list entries are written."""
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").removeprefix("www.")
    query = f"?{parts.query}" if parts.query else ""
    return f"{host}{parts.path}{query}".lower()


class UrlFilter(Filter):
    """Drop a page whose host (or a parent domain) or whose exact URL is blocklisted."""

    name = "url_filter"

    def __init__(
        self,
        domains: set[str] | None = None,
        urls: set[str] | None = None,
        drop_missing_url: bool = False,
        words: UrlWordLists | None = None,
        soft_threshold: float = 2.0,
    ):
        if soft_threshold <= 0:
            raise ValueError(f"soft_threshold must be > 0, got {soft_threshold}")
        self.domains = {d.removeprefix("www.") for d in (domains or set())}
        self.urls = {
            normalize_url(u) if "://" in u else u.removeprefix("www.") for u in (urls or set())
        }
        self.drop_missing_url = drop_missing_url
        self.words = words or UrlWordLists()
        self.soft_threshold = soft_threshold
        subs = sorted(self.words.subwords, key=len, reverse=True)
        self._subword_re = re.compile("|".join(map(re.escape, subs))) if subs else None

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if not doc.url:
            return (False, "missing_url") if self.drop_missing_url else True
        try:
            host = (urlsplit(doc.url).hostname or "").lower()
        except ValueError:
            return False, "bad_url"
        labels = host.split(".")
        for i in range(len(labels) - 1):
            if ".".join(labels[i:]) in self.domains:
                return False, "blocked_domain"
        if self.urls and normalize_url(doc.url) in self.urls:
            return False, "blocked_url"
        return self._score_words(doc)

    def _score_words(self, doc: Document) -> bool | tuple[bool, str]:
        lowered = doc.url.lower()
        words = set(_WORD_SPLIT.split(lowered))
        hard = sorted(words & self.words.banned)
        if hard:
            doc.metadata["url_words"] = hard
            return False, "url_banned_word"
        soft = sorted(words & self.words.soft.keys())
        if soft and sum(self.words.soft[w] for w in soft) >= self.soft_threshold:
            doc.metadata["url_words"] = soft
            return False, "url_soft_words"
        if self._subword_re is not None:
            match = self._subword_re.search(_WORD_SPLIT.sub("", lowered))
            if match:
                doc.metadata["url_words"] = [match.group(0)]
                return False, "url_banned_subword"
        return True
