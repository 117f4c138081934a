"""URL blocklist filter: drop pages by domain or exact URL, before any content is looked at.

RefinedWeb and dots filter on the URL only. The lists are data, not code: one domain or URL per
line in plain text files (``#`` comments allowed). A domain entry blocks the domain and all its
subdomains; we match every dot-suffix of the host against the set, so no public-suffix list
(tldextract, which downloads one) is needed. The UT1 list that the datatrove wheel ships can be
used when datatrove is installed (``ut1_from_datatrove``); it is never downloaded.
"""

from __future__ import annotations

import tarfile
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


def ut1_from_datatrove() -> tuple[set[str], set[str]]:
    """(domains, urls) from the UT1 archive inside the datatrove wheel, if it is installed."""
    import importlib.util

    spec = importlib.util.find_spec("datatrove")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("datatrove is not installed; its UT1 list is unavailable")
    tar_path = (
        Path(spec.submodule_search_locations[0]) / "assets" / "url_filterblacklistsv0_3_0.tar.gz"
    )
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
    ):
        self.domains = {d.removeprefix("www.") for d in (domains or set())}
        self.urls = {
            normalize_url(u) if "://" in u else u.removeprefix("www.") for u in (urls or set())
        }
        self.drop_missing_url = drop_missing_url

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
        return True
