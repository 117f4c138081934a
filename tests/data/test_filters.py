"""Filters: inline text in, the expected reason out (or kept)."""

from __future__ import annotations

import numpy as np
import pytest

from moelab.data.config import QualityConfig
from moelab.data.document import Document
from moelab.data.extract import Extract
from moelab.data.filters.language import LanguageFilter
from moelab.data.filters.quality import QualityFilter
from moelab.data.filters.url import UrlFilter, read_list
from moelab.data.step import StepContext, StepStats
from moelab.data.synth.text import chinese_paragraph, english_sentences, other_language_paragraph


def _run(step, docs):
    ctx = StepContext(0, 1, StepStats(step.name))
    dropped = []
    ctx.sink = lambda d, r: dropped.append((d.id, r))
    kept = list(step.run(docs, ctx))
    return kept, dict(dropped)


def _prose(n: int = 24, seed: int = 0) -> str:
    s = english_sentences()
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(s), size=n, replace=False)
    return "\n".join(" ".join(s[i] for i in idx[k : k + 4]) for k in range(0, n, 4))


def test_url_filter_blocks_domains_subdomains_and_exact_urls(tmp_path):
    lst = tmp_path / "domains.txt"
    lst.write_text("# comment\nbad.example.com\n")
    f = UrlFilter(read_list(lst), {"https://ok.org/spam/page.html"})
    docs = [
        Document("a", "t", url="https://bad.example.com/x"),
        Document("b", "t", url="http://www.news.bad.example.com/y?q=1"),
        Document("c", "t", url="https://notbad.example.com/"),
        Document("d", "t", url="https://OK.org/spam/page.html"),
        Document("e", "t", url="https://ok.org/spam/other.html"),
        Document("f", "t", url=None),
    ]
    kept, dropped = _run(f, docs)
    assert [d.id for d in kept] == ["c", "e", "f"]
    assert dropped == {"a": "blocked_domain", "b": "blocked_domain", "d": "blocked_url"}


def test_url_word_scoring_hard_soft_and_subwords_with_reasons():
    from moelab.data.filters.url import default_word_lists

    f = UrlFilter(words=default_word_lists())
    docs = [
        Document("hard", "t", url="https://videos.example.com/free-PORN/clip?id=1"),
        Document("soft2", "t", url="https://example.net/casino-poker-bonus.html"),
        Document("soft1", "t", url="https://grand-casino-hotel.example.com/rooms"),
        Document("sussex", "t", url="https://sussex.example.ac.uk/news"),
        Document("sub", "t", url="https://freepornvideos.example.org/"),
        Document("ok", "t", url="https://news.example.com/science/2024/article.html"),
    ]
    kept, dropped = _run(f, docs)
    assert [d.id for d in kept] == ["soft1", "sussex", "ok"], "one soft word is not enough"
    assert dropped == {
        "hard": "url_banned_word",
        "soft2": "url_soft_words",
        "sub": "url_banned_subword",
    }
    assert docs[0].metadata["url_words"] == ["porn"]
    assert docs[1].metadata["url_words"] == ["casino", "poker"]
    assert docs[4].metadata["url_words"] == ["porn"]
    assert "url_words" not in docs[2].metadata


def test_url_word_lists_from_files_weights_and_threshold(tmp_path):
    from moelab.data.filters.url import UrlWordLists, read_weighted_list

    soft = tmp_path / "soft.txt"
    soft.write_text("# word weight\nloan 0.5\nPayday 1.5\ncheap\n")
    hard = tmp_path / "hard.txt"
    hard.write_text("spamword\n")
    lists = UrlWordLists.from_files([hard], [soft], [])
    assert lists.soft == {"loan": 0.5, "payday": 1.5, "cheap": 1.0}
    f = UrlFilter(words=lists, soft_threshold=2.0)
    docs = [
        Document("a", "t", url="https://x.com/payday-loan"),  # 2.0: dropped
        Document("b", "t", url="https://x.com/cheap-loan"),  # 1.5: kept
        Document("c", "t", url="https://spamword.x.com/"),
    ]
    kept, dropped = _run(f, docs)
    assert [d.id for d in kept] == ["b"]
    assert dropped == {"a": "url_soft_words", "c": "url_banned_word"}
    _, dropped = _run(
        UrlFilter(words=lists, soft_threshold=1.5), [Document("b", "t", url=docs[1].url)]
    )
    assert dropped == {"b": "url_soft_words"}
    bad = tmp_path / "bad.txt"
    bad.write_text("loan lots\n")
    with pytest.raises(ValueError, match="bad.txt:1"):
        read_weighted_list(bad)
    with pytest.raises(ValueError, match="soft_threshold"):
        UrlFilter(soft_threshold=0)


def test_language_filter_keeps_en_zh_and_names_the_reason():
    rng = np.random.default_rng(0)
    docs = [
        Document("en", _prose()),
        Document("zh", chinese_paragraph(rng, 5)),
        Document("fr", other_language_paragraph(rng, "French", 5)),
        Document("junk", "asdf qwer zxcv 1234 !!!"),
    ]
    kept, dropped = _run(LanguageFilter(), docs)
    assert [d.id for d in kept] == ["en", "zh"]
    assert kept[0].metadata["language"] == "en" and kept[0].metadata["language_score"] >= 0.65
    assert dropped == {"fr": "language_not_kept", "junk": "low_confidence"}
    kept, _ = _run(LanguageFilter(languages=["fr"]), [Document("fr", docs[2].text)])
    assert [d.id for d in kept] == ["fr"]


def test_language_batches_give_the_same_verdicts_in_order_as_one_at_a_time():
    rng = np.random.default_rng(1)
    docs = [
        Document(f"{kind}{i}", text)
        for i in range(3)
        for kind, text in (
            ("en", _prose(seed=i)),
            ("fr", other_language_paragraph(rng, "French", 4)),
            ("zh", chinese_paragraph(rng, 4)),
            ("junk", f"qz{i} xv{i} 99{i} !!"),
        )
    ]
    one = LanguageFilter(batch_size=1)
    singles = [(d.id, one.filter(Document(d.id, d.text))) for d in docs]
    for size in (1, 5, 64):
        kept, dropped = _run(
            LanguageFilter(batch_size=size), [Document(d.id, d.text) for d in docs]
        )
        assert [d.id for d in kept] == [i for i, v in singles if v is True]
        assert dropped == {i: v[1] for i, v in singles if v is not True}
    assert {r for _, r in dropped.items()} == {"language_not_kept", "low_confidence"}
    with pytest.raises(ValueError, match="batch_size"):
        LanguageFilter(batch_size=0)


def test_extract_keeps_the_article_and_drops_navigation():
    body = _prose()
    html = (
        "<html><body><nav><ul><li><a href='/'>Home</a></li><li><a>World News Section</a></li></ul></nav>"
        f"<article><h1>A title</h1>{''.join(f'<p>{p}</p>' for p in body.split(chr(10)))}</article>"
        "<footer>Copyright 2024 Example Corp. All rights reserved.</footer></body></html>"
    )
    docs = [
        Document("page", html, metadata={"format": "html"}),
        Document("plain", "already text", metadata={"format": "text"}),
        Document("empty", "<html><body></body></html>", metadata={"format": "html"}),
    ]
    kept, dropped = _run(Extract(), docs)
    assert [d.id for d in kept] == ["page", "plain"]
    assert body.split("\n")[2] in kept[0].text
    assert "World News Section" not in kept[0].text and "All rights reserved" not in kept[0].text
    assert kept[1].text == "already text"
    assert dropped == {"empty": "no_main_text"}


def test_quality_keeps_prose():
    kept, dropped = _run(QualityFilter(), [Document("ok", _prose())])
    assert [d.id for d in kept] == ["ok"], dropped


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Short text with few words.", "gopher_qual:too_few_words"),
        (("buy cheap pills now " * 60).strip() + ".", "gopher_rep:top_2gram"),
        ("\n".join(["The same line repeats here and again."] * 10), "gopher_rep:dup_line_frac"),
        (" ".join(f"#t{i}" for i in range(40)) + " " + _prose(8), "gopher_qual:symbol_word_ratio"),
        (
            " ".join(["supercalifragilisticexpialidocious"] * 3)
            + " "
            + " ".join(f"extraordinarilylongword{i}" for i in range(60)),
            "gopher_qual:avg_word_length",
        ),
        ("Lorem ipsum dolor sit amet. " + _prose(8), "c4:lorem_ipsum"),
        ("function f() { return 1; } " + _prose(8), "c4:curly_bracket"),
    ],
)
def test_quality_rules_name_their_reason(text, reason):
    assert QualityFilter().check(Document("x", text)) == reason


def test_quality_fineweb_rules_when_c4_is_off():
    q = QualityFilter(QualityConfig(c4=False))
    no_punct = "\n".join(s.rstrip(".!?") for s in english_sentences()[:60])
    assert q.check(Document("x", no_punct)) == "fineweb:line_punct_ratio"
    dup_line = _prose(24) + "\nSubscribe to our newsletter for updates today.\n" + _prose(24, 1)
    dup_line += "\nSubscribe to our newsletter for updates today."
    assert q.check(Document("y", dup_line)) == "fineweb:char_dup_ratio"


def test_quality_c4_removes_policy_and_javascript_lines():
    text = (
        _prose(20)
        + "\nPlease enable JavaScript to view the comments.\nRead our privacy policy here."
    )
    doc = Document("x", text)
    assert QualityFilter().check(doc) is None
    assert "JavaScript" not in doc.text and "privacy policy" not in doc.text


def test_quality_skips_word_rules_for_chinese():
    rng = np.random.default_rng(1)
    doc = Document(
        "zh", "\n".join(chinese_paragraph(rng, 4) for _ in range(4)), metadata={"language": "zh"}
    )
    assert QualityFilter().check(doc) is None


def test_ut1_list_is_read_from_the_datatrove_wheel_layout(tmp_path, monkeypatch):
    import io
    import sys
    import tarfile

    from moelab.data.filters.url import ut1_from_datatrove

    pkg = tmp_path / "site" / "datatrove"
    (pkg / "assets").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    with tarfile.open(pkg / "assets" / "url_filterblacklistsv0_3_0.tar.gz", "w:gz") as tar:
        for name, body in [
            ("blacklists/adult/domains", "porn.example\n"),
            ("blacklists/adult/urls", "ok.example/bad\n"),
            ("blacklists/README", "not a list\n"),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body.encode()))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "datatrove", raising=False)
    domains, urls = ut1_from_datatrove()
    assert domains == {"porn.example"} and urls == {"ok.example/bad"}
    from moelab.data.filters.url import datatrove_word_lists

    with pytest.raises(FileNotFoundError, match="banned_words.txt"):
        datatrove_word_lists()
    for name, body in [
        ("banned_words.txt", "badword\n"),
        ("soft_banned_words.txt", "meh\n"),
        ("banned_subwords.txt", "bad-sub\n"),
    ]:
        (pkg / "assets" / name).write_text(body)
    lists = datatrove_word_lists()
    assert (lists.banned, lists.soft, lists.subwords) == ({"badword"}, {"meh": 1.0}, {"badsub"})
    kept, dropped = _run(
        UrlFilter(domains, urls), [Document("a", "t", url="http://www.porn.example/x")]
    )
    assert dropped == {"a": "blocked_domain"}


def test_config_wires_default_and_file_word_lists(tmp_path):
    from moelab.config import ConfigError
    from moelab.data.config import DataConfig
    from moelab.data.pipeline import build_steps

    extra = tmp_path / "soft.txt"
    extra.write_text("loan 2\n")
    cfg = DataConfig.from_dict({"url_filter": {"soft_words_files": [str(extra)]}})
    name, f = build_steps(cfg)[0]
    assert name == "url_filter" and "porn" in f.words.banned and f.words.soft["loan"] == 2.0
    off = DataConfig.from_dict({"url_filter": {"default_words": False}})
    assert build_steps(off)[0][1].words.banned == set()
    with pytest.raises(ConfigError, match="url_filter.soft_threshold"):
        DataConfig.from_dict({"url_filter": {"soft_threshold": 0}})
