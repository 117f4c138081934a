"""The dots.llm1 text normalisation shared by exact and fuzzy dedup.

dots (arXiv 2506.05767, App. C.1): remove all punctuation, Unicode NFD, lower case, collapse
extra spaces. "Punctuation" is the Unicode ``P`` category (the ``regex`` package's ``\\p{P}``),
so Chinese full-width marks go too. Symbols (``S``: $, +, emoji) are kept: the report says
punctuation, not symbols.
"""

from __future__ import annotations

import hashlib
import unicodedata

import regex

_PUNCT = regex.compile(r"\p{P}+")
_SPACE = regex.compile(r"\s+")


def dots_normalize(text: str) -> str:
    """Punctuation removed → NFD → lower case → whitespace runs collapsed to one space."""
    text = _PUNCT.sub("", text)
    text = unicodedata.normalize("NFD", text).lower()
    return _SPACE.sub(" ", text).strip()


def dots_md5(text: str) -> str:
    """32-hex MD5 of the dots normalisation: the identity-removal key."""
    return hashlib.md5(dots_normalize(text).encode("utf-8")).hexdigest()
