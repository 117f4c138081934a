"""Bytes of a web page → text, trying the HTTP header's charset, then the meta tag, then detection.

A page is refused (with a reason) rather than decoded into garbage: binary payloads (NUL bytes in
the first kilobyte), empty payloads and bytes that no candidate decodes strictly. A charset
declared as a single-byte code page (latin-1, cp1252), which never fails to decode, loses to
strict UTF-8 when the bytes are valid UTF-8: that mis-declaration is the most common one on the
web. Detection (charset-normalizer) runs only when the declared charsets fail, since it is slow.
"""

from __future__ import annotations

import codecs
import re

_META = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([a-zA-Z0-9_.:-]+)""", re.IGNORECASE)
_SINGLE_BYTE = {"latin_1", "iso8859_1", "cp1252", "ascii", "iso8859_15", "cp1250", "cp1251"}


class DecodeRefused(ValueError):
    """A payload is not text we can use; ``reason`` is the funnel's drop reason."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


def _codec(name: str | None) -> str | None:
    """Python's canonical codec name for ``name``, or None if unknown."""
    if not name:
        return None
    try:
        return codecs.lookup(name.strip().strip("\"'")).name.replace("-", "_")
    except (LookupError, ValueError):
        return None


def meta_charset(payload: bytes) -> str | None:
    """The charset named by a ``<meta charset>`` or http-equiv tag in the first 4 kB."""
    match = _META.search(payload[:4096])
    return match.group(1).decode("ascii", "ignore") if match else None


def _decodes(payload: bytes, codec: str) -> bool:
    try:
        payload.decode(codec)
    except UnicodeDecodeError:
        return False
    return True


def _detect(payload: bytes) -> str | None:
    from charset_normalizer import from_bytes

    best = from_bytes(payload[:65536]).best()
    return best.encoding if best is not None else None


def decode_page(payload: bytes, header_charset: str | None = None) -> tuple[str, str]:
    """Decode an HTML payload; returns ``(text, codec used)`` or raises :class:`DecodeRefused`."""
    if not payload.strip():
        raise DecodeRefused("empty_payload")
    if b"\x00" in payload[:1024]:
        raise DecodeRefused("binary_payload")
    tried: list[str] = []
    # The meta tag is searched only when the header names no charset that decodes the page.
    for declared in (lambda: header_charset, lambda: meta_charset(payload)):
        name = _codec(declared())
        if not name or name in tried:
            continue
        utf8_first = name in _SINGLE_BYTE and "utf_8" not in tried
        for candidate in (["utf_8"] if utf8_first else []) + [name]:
            if candidate in tried:
                continue
            tried.append(candidate)
            try:
                return payload.decode(candidate), candidate
            except (UnicodeDecodeError, LookupError):
                continue
    if not tried:
        tried.append("utf_8")
        try:
            return payload.decode("utf_8"), "utf_8"
        except UnicodeDecodeError:
            pass
    detected = _codec(_detect(payload))
    if detected in _SINGLE_BYTE or (detected or "").startswith(("cp", "iso8859", "mac")):
        # Detection cannot tell single-byte code pages apart on short pages; WHATWG's default
        # legacy encoding for the web is windows-1252, so it wins among them.
        detected = "cp1252" if _decodes(payload, "cp1252") else detected
    if detected and detected not in tried:
        try:
            return payload.decode(detected), detected
        except (UnicodeDecodeError, LookupError):
            pass
    raise DecodeRefused("undecodable")
