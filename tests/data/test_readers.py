"""Readers: every complete record is read, every broken input is counted with a reason."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from moelab.data.readers import list_shards, read_html_file, read_jsonl, read_shard, read_warc
from moelab.data.step import StepContext, StepStats
from moelab.data.synth.web import http_response_record

PAGE = "<html><body><article><p>{}</p></article></body></html>"


def _ctx() -> StepContext:
    return StepContext(0, 1, StepStats("read"))


def _record(i: int, payload: bytes | None = None, ctype: str = "text/html; charset=utf-8") -> bytes:
    body = payload if payload is not None else PAGE.format(f"page number {i}").encode()
    return http_response_record(f"https://ex.com/{i}", f"id-{i}", body, ctype)


def _warc_gz(path: Path, records: list[bytes]) -> Path:
    path.write_bytes(b"".join(gzip.compress(r, mtime=0) for r in records))
    return path


def test_warc_gz_reads_ids_urls_and_text(tmp_path):
    path = _warc_gz(tmp_path / "a.warc.gz", [_record(i) for i in range(5)])
    ctx = _ctx()
    docs = list(read_warc(path, ctx))
    assert [d.id for d in docs] == [f"id-{i}" for i in range(5)]
    assert docs[2].url == "https://ex.com/2" and "page number 2" in docs[2].text
    assert docs[0].metadata["format"] == "html" and docs[0].metadata["charset"] == "utf_8"
    assert ctx.stats.docs_in == 5 and not ctx.stats.dropped


def test_malformed_record_is_skipped_and_reading_resumes(tmp_path):
    bad = b"WARC/1.0\r\nWARC-Type: response\r\nContent-Length: banana\r\n\r\nxx\r\n\r\n"
    plain = tmp_path / "b.warc"
    plain.write_bytes(_record(0) + _record(1) + b"GARBAGE LINE\r\n\r\n" + _record(2) + _record(3))
    ctx = _ctx()
    ids = [d.id for d in read_warc(plain, ctx)]
    assert ids[:2] == ["id-0", "id-1"] and "id-3" in ids
    assert ctx.stats.dropped["broken_record"] >= 1
    gz = _warc_gz(tmp_path / "c.warc.gz", [_record(0), bad, _record(1)])
    ctx = _ctx()
    assert [d.id for d in read_warc(gz, ctx)] == ["id-0", "id-1"]
    assert sum(ctx.stats.dropped.values()) == 1


def test_truncated_gzip_keeps_every_complete_record_before_it(tmp_path):
    members = [gzip.compress(_record(i), mtime=0) for i in range(4)]
    path = tmp_path / "t.warc.gz"
    path.write_bytes(b"".join(members[:3]) + members[3][: len(members[3]) // 2])
    ctx = _ctx()
    assert [d.id for d in read_warc(path, ctx)] == ["id-0", "id-1", "id-2"]
    assert ctx.stats.dropped == {"truncated_gzip": 1}


def test_corrupt_gzip_member_is_skipped_to_the_next_member(tmp_path):
    corrupt = bytearray(gzip.compress(_record(1), mtime=0))
    corrupt[15:45] = b"\x00" * 30
    path = tmp_path / "x.warc.gz"
    path.write_bytes(
        gzip.compress(_record(0), mtime=0) + bytes(corrupt) + gzip.compress(_record(2), mtime=0)
    )
    ctx = _ctx()
    assert [d.id for d in read_warc(path, ctx)] == ["id-0", "id-2"]
    assert ctx.stats.dropped == {"corrupt_gzip": 1}


def test_bad_payloads_are_dropped_with_their_reason(tmp_path):
    records = [
        _record(0, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))),
        _record(1, b""),
        _record(2, b"<html>" + b"x" * 2000 + b"</html>"),
        _record(3, b"GIF89a...", "image/gif"),
        _record(4),
    ]
    path = _warc_gz(tmp_path / "p.warc.gz", records)
    ctx = _ctx()
    dropped = []
    ctx.sink = lambda doc, reason: dropped.append((doc.id, reason))
    docs = list(read_warc(path, ctx, max_bytes=1000))
    assert [d.id for d in docs] == ["id-4"]
    assert dropped == [
        ("id-0", "binary_payload"),
        ("id-1", "empty_payload"),
        ("id-2", "too_large"),
        ("id-3", "not_html"),
    ]


def test_charset_header_meta_and_misdeclared(tmp_path):
    text = "Café naïve résumé"
    zh = "中文网页的内容"
    records = [
        _record(0, PAGE.format(text).encode("cp1252"), "text/html; charset=windows-1252"),
        _record(1, ('<meta charset="gbk">' + PAGE.format(zh)).encode("gbk"), "text/html"),
        _record(2, PAGE.format(text).encode("cp1252"), "text/html; charset=utf-8"),
        _record(3, PAGE.format(text).encode("utf-8"), "text/html; charset=iso-8859-1"),
        _record(4, PAGE.format(text).encode("utf-8"), "text/html; charset=no-such-charset"),
    ]
    ctx = _ctx()
    docs = list(read_warc(_warc_gz(tmp_path / "e.warc.gz", records), ctx))
    assert len(docs) == 5, ctx.stats.dropped
    assert text in docs[0].text and zh in docs[1].text
    assert text in docs[2].text, "a page mis-declared as UTF-8 is decoded by detection"
    assert text in docs[3].text, "valid UTF-8 wins over a declared single-byte code page"
    assert text in docs[4].text


def test_charset_detection_and_meta_run_only_when_the_declared_charset_fails(monkeypatch):
    from moelab.data import charset

    calls = []
    monkeypatch.setattr(charset, "_detect", lambda p: calls.append("detect") or "utf-8")
    real_meta = charset.meta_charset
    monkeypatch.setattr(charset, "meta_charset", lambda p: calls.append("meta") or real_meta(p))
    page = ('<meta charset="gbk">' + PAGE.format("中文网页")).encode("utf-8")
    assert charset.decode_page(page, "utf-8") == (page.decode("utf-8"), "utf_8")
    assert calls == [], "a header charset that decodes the page is enough"
    gbk = ('<meta charset="gbk">' + PAGE.format("中文网页")).encode("gbk")
    assert charset.decode_page(gbk, "utf-8")[1] == "gbk"
    assert calls == ["meta"], "the meta tag is read when the header's charset fails"
    assert charset.decode_page(gbk)[1] == "gbk"
    assert "detect" not in calls


def test_jsonl_reader_counts_bad_lines_and_truncation(tmp_path):
    path = tmp_path / "d.jsonl.gz"
    lines = [json.dumps({"id": "a", "content": "hello"}), "{not json", json.dumps({"id": "b"})]
    lines += [json.dumps({"id": f"c{i}", "content": "x" * 50}) for i in range(200)]
    raw = gzip.compress(("\n".join(lines) + "\n").encode())
    path.write_bytes(raw[: len(raw) - 20])
    ctx = _ctx()
    docs = list(read_jsonl(path, ctx, text_field="content", id_field="id"))
    assert docs[0].id == "a" and docs[0].text == "hello" and docs[0].metadata["format"] == "text"
    assert ctx.stats.dropped["bad_json"] == 1
    assert ctx.stats.dropped["missing_text_field"] == 1
    assert ctx.stats.dropped["truncated_file"] == 1
    assert len(docs) > 150


def test_html_folder_shards_in_sorted_order(tmp_path):
    folder = tmp_path / "site"
    folder.mkdir()
    for i in range(5):
        (folder / f"p{i}.html").write_text(PAGE.format(f"page {i}"))
    shards = list_shards([str(folder)], html_files_per_shard=2)
    assert [len(s.paths) for s in shards] == [2, 2, 1]
    ctx = _ctx()
    docs = [d for s in shards for d in read_shard(s, ctx)]
    assert [d.id for d in docs] == [f"p{i}.html" for i in range(5)]
    assert read_html_file(folder / "missing.html", ctx, 100) is None
    assert ctx.stats.dropped["unreadable_file"] == 1
