"""Readers: input files → Documents. WARC / WARC.gz, folders of HTML files, JSONL(.gz).

A shard is one input file (or, for HTML folders, a fixed-size run of files in sorted order);
the corpus order is shard order, then record order. Every broken input is counted as a drop of the
``read`` step with a reason and never stops the shard: a malformed WARC record resynchronises at the
next ``WARC/1.`` line, a corrupt gzip member at the next gzip header, and a truncated gzip tail ends
the file after every complete record before it has been read.

fastwarc reads the records (1.6–6.4× warcio in its published numbers, and measured faster here,
see benchmarks/data_pipeline.py); gzip members are inflated here with zlib, one at a time, so that
damage is localised to one member instead of ending the file silently, which both fastwarc and
warcio do on a truncated gzip stream.
"""

from __future__ import annotations

import io
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from moelab.data.charset import DecodeRefused, decode_page
from moelab.data.document import Document, _open_text
from moelab.data.step import StepContext

_GZ_MAGIC = b"\x1f\x8b\x08"
_WARC_MAGIC = b"WARC/1."
_CHUNK = 1 << 16
_HTML_TYPES = ("text/html", "application/xhtml+xml", "text/plain", "")
_FORMATS = {".warc": "warc", ".arc": "warc", ".jsonl": "jsonl", ".json": "jsonl", ".html": "html"}


@dataclass
class InputShard:
    """One unit of reading work: files read in order, in one format."""

    index: int
    paths: list[str]
    format: str
    text_field: str = "text"
    id_field: str = "id"
    max_bytes: int = 5_000_000
    extra: dict = field(default_factory=dict)


def detect_format(path: Path) -> str | None:
    """``warc``, ``jsonl`` or ``html`` from the name (``.gz`` ignored), or None."""
    suffixes = [s for s in path.suffixes if s != ".gz"]
    name = path.name.lower()
    if name.endswith(".htm") or name.endswith(".htm.gz"):
        return "html"
    return _FORMATS.get(suffixes[-1].lower()) if suffixes else None


def list_shards(
    paths: list[str],
    fmt: str = "auto",
    html_files_per_shard: int = 500,
    **kwargs,
) -> list[InputShard]:
    """Expand files and folders into shards, sorted by path so the corpus order is stable."""
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files.extend(sorted(q for q in p.rglob("*") if q.is_file()))
        elif p.exists():
            files.append(p)
        else:
            raise FileNotFoundError(f"input path does not exist: {p}")
    by_format: dict[str, list[Path]] = {"warc": [], "jsonl": [], "html": []}
    for f in sorted(set(files)):
        kind = detect_format(f) if fmt == "auto" else fmt
        if kind in by_format:
            by_format[kind].append(f)
    shards: list[InputShard] = []
    for kind in ("warc", "jsonl"):
        for f in by_format[kind]:
            shards.append(InputShard(len(shards), [str(f)], kind, **kwargs))
    html = by_format["html"]
    for start in range(0, len(html), html_files_per_shard):
        group = [str(f) for f in html[start : start + html_files_per_shard]]
        shards.append(InputShard(len(shards), group, "html", **kwargs))
    return shards


def read_shard(shard: InputShard, ctx: StepContext) -> Iterator[Document]:
    """All documents of a shard, in order; bad records are dropped into ``ctx`` with a reason."""
    for path in shard.paths:
        if shard.format == "warc":
            yield from read_warc(Path(path), ctx, shard.max_bytes)
        elif shard.format == "jsonl":
            yield from read_jsonl(Path(path), ctx, shard.text_field, shard.id_field)
        elif shard.format == "html":
            doc = read_html_file(Path(path), ctx, shard.max_bytes)
            if doc is not None:
                yield doc
        else:
            raise ValueError(f"unknown input format {shard.format!r}")


def _stub(record_id: str, url: str | None, source: str) -> Document:
    return Document(id=record_id, text="", url=url, source=source)


def html_document(
    payload: bytes,
    *,
    doc_id: str,
    url: str | None,
    source: str,
    ctx: StepContext,
    header_charset: str | None = None,
    content_type: str | None = None,
    max_bytes: int = 5_000_000,
    metadata: dict | None = None,
) -> Document | None:
    """Decode one page into an HTML Document, or count it as dropped and return None."""
    ctx.stats.docs_in += 1
    ctx.stats.bytes_in += len(payload)
    mime = (content_type or "").split(";")[0].strip().lower()
    if mime not in _HTML_TYPES:
        ctx.drop(_stub(doc_id, url, source), "not_html")
        return None
    if len(payload) > max_bytes:
        ctx.drop(_stub(doc_id, url, source), "too_large")
        return None
    try:
        text, codec = decode_page(payload, header_charset)
    except DecodeRefused as err:
        ctx.drop(_stub(doc_id, url, source), err.reason)
        return None
    meta = {"format": "html", "charset": codec, **(metadata or {})}
    return Document(id=doc_id, text=text, url=url, source=source, metadata=meta)


def read_html_file(path: Path, ctx: StepContext, max_bytes: int) -> Document | None:
    """One HTML file (optionally .gz); the id is the file name, the url is unknown."""
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = zlib.decompress(raw, wbits=47)
    except (OSError, zlib.error):
        ctx.stats.docs_in += 1
        ctx.drop(_stub(path.name, None, str(path)), "unreadable_file")
        return None
    return html_document(
        raw, doc_id=path.name, url=None, source=str(path), ctx=ctx, max_bytes=max_bytes
    )


def read_jsonl(path: Path, ctx: StepContext, text_field: str, id_field: str) -> Iterator[Document]:
    """JSONL(.gz) lines; ``text_field`` holds plain text (no extraction needed)."""
    try:
        fh = _open_text(path, "r")
        lines = iter(fh)
        lineno = 0
        while True:
            try:
                line = next(lines)
            except StopIteration:
                break
            except (OSError, EOFError, UnicodeDecodeError, zlib.error):
                ctx.stats.docs_in += 1
                ctx.drop(_stub(f"{path.name}:{lineno + 1}", None, str(path)), "truncated_file")
                break
            lineno += 1
            if not line.strip():
                continue
            doc = _jsonl_document(line, path, lineno, ctx, text_field, id_field)
            if doc is not None:
                yield doc
        fh.close()
    except OSError:
        ctx.drop(_stub(path.name, None, str(path)), "unreadable_file")


def _jsonl_document(
    line: str, path: Path, lineno: int, ctx: StepContext, text_field: str, id_field: str
) -> Document | None:
    ctx.stats.docs_in += 1
    ctx.stats.bytes_in += len(line)
    stub_id = f"{path.name}:{lineno}"
    try:
        raw = json.loads(line)
    except ValueError:
        ctx.drop(_stub(stub_id, None, str(path)), "bad_json")
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get(text_field), str):
        ctx.drop(_stub(stub_id, None, str(path)), "missing_text_field")
        return None
    metadata = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
    return Document(
        id=str(raw.get(id_field, stub_id)),
        text=raw[text_field],
        url=raw.get("url"),
        source=str(path),
        metadata={"format": "text", **metadata},
    )


# ---------------------------------------------------------------------------------------------
# WARC


def read_warc(path: Path, ctx: StepContext, max_bytes: int = 5_000_000) -> Iterator[Document]:
    """Response records of a WARC or WARC.gz file as HTML Documents."""
    if path.suffix == ".gz":
        for member in _gzip_members(path, ctx):
            yield from _warc_records(member, str(path), ctx, max_bytes)
    else:
        yield from _warc_records(path.read_bytes(), str(path), ctx, max_bytes)


def _gzip_members(path: Path, ctx: StepContext) -> Iterator[bytes]:
    """Inflate gzip members one by one; damage is counted and skipped to the next header.

    Input is fed in 64 kB slices of a memoryview, so a file of many members costs linear time
    (``decompress(data[pos:])`` would copy the rest of the file for every member).
    """
    with open(path, "rb") as fh:
        data = fh.read()
    view = memoryview(data)
    pos, size = 0, len(data)
    while pos < size:
        if data[pos : pos + 3] != _GZ_MAGIC:
            ctx.stats.docs_in += 1
            ctx.drop(_stub(f"{path.name}@{pos}", None, str(path)), "corrupt_gzip")
            pos = data.find(_GZ_MAGIC, pos + 1)
            if pos < 0:
                return
            continue
        inflater = zlib.decompressobj(wbits=31)
        out, cur = [], pos
        try:
            while not inflater.eof and cur < size:
                out.append(inflater.decompress(view[cur : cur + _CHUNK]))
                cur += _CHUNK
        except zlib.error:
            ctx.stats.docs_in += 1
            ctx.drop(_stub(f"{path.name}@{pos}", None, str(path)), "corrupt_gzip")
            pos = data.find(_GZ_MAGIC, pos + 1)
            if pos < 0:
                return
            continue
        if not inflater.eof:
            ctx.stats.docs_in += 1
            ctx.drop(_stub(f"{path.name}@{pos}", None, str(path)), "truncated_gzip")
            return
        yield b"".join(out)
        pos = min(cur, size) - len(inflater.unused_data)


def _warc_records(data: bytes, source: str, ctx: StepContext, max_bytes: int) -> Iterator[Document]:
    """Response records of uncompressed WARC bytes, resynchronising after a malformed record."""
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    pos = 0
    while pos < len(data):
        last = pos
        malformed = False
        try:
            stream = io.BytesIO(data[pos:])
            records = ArchiveIterator(stream, record_types=WarcRecordType.response, parse_http=True)
            for rec in records:
                last = pos + rec.stream_pos
                if not str(rec.headers.get("Content-Length", "")).strip().isdigit():
                    malformed = True  # its body is parsed as garbage next: count it once
                    ctx.stats.docs_in += 1
                    ctx.drop(_stub(f"{Path(source).name}@{last}", None, source), "broken_record")
                    continue
                doc = _record_document(rec, source, ctx, max_bytes)
                if doc is not None:
                    yield doc
            return
        except (OSError, ValueError, UnicodeDecodeError):
            if not malformed:
                ctx.stats.docs_in += 1
                ctx.drop(_stub(f"{Path(source).name}@{last}", None, source), "broken_record")
            nxt = data.find(_WARC_MAGIC, last + 1)
            if nxt < 0:
                return
            pos = nxt


def _record_document(rec, source: str, ctx: StepContext, max_bytes: int) -> Document | None:
    record_id = (rec.record_id or "").strip("<>").removeprefix("urn:uuid:")
    record_id = record_id or f"{Path(source).name}@{rec.stream_pos}"  # ids must be unique
    url = rec.headers.get("WARC-Target-URI")
    payload = rec.reader.read()
    if rec.content_length and len(payload) < rec.content_length:
        ctx.stats.docs_in += 1
        ctx.drop(_stub(record_id, url, source), "truncated_record")
        return None
    status = rec.http_headers.status_code if rec.http_headers is not None else None
    if status is not None and status != 200:
        ctx.stats.docs_in += 1
        ctx.drop(_stub(record_id, url, source), "http_status")
        return None
    return html_document(
        payload,
        doc_id=record_id,
        url=url,
        source=source,
        ctx=ctx,
        header_charset=rec.http_charset,
        content_type=rec.http_content_type,
        max_bytes=max_bytes,
        metadata={"warc_date": rec.headers.get("WARC-Date")},
    )
