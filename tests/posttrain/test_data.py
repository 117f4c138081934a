"""Chat records: which tokens are trained, and malformed records reported by line (raise or skip)."""

from __future__ import annotations

import pytest

from moelab.infer.chat import builtin_template, jinja_template
from moelab.posttrain.data import DataError, RecordError, check_conversation, load_jsonl
from moelab.posttrain.pairs import dpo_pair
from moelab.posttrain.render import encode_chat
from moelab.posttrain.sft import sft_example

from .conftest import write_jsonl

CHAT = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "the fruit of red please"},
    {"role": "assistant", "content": "apple"},
    {"role": "user", "content": "the fruit of blue"},
    {"role": "assistant", "content": "plum yes"},
]
END = {"dots1": "<|endofresponse|>", "olmoe": "<|endoftext|>"}


@pytest.mark.parametrize("family", ["dots1", "olmoe"])
def test_only_assistant_replies_and_their_end_token_are_trained(family, chat_tokenizer):
    tok, template = chat_tokenizer, builtin_template(family)
    enc = encode_chat(tok, template, CHAT)
    assert enc.ids == tok.encode(
        template.render(CHAT, add_generation_prompt=False), parse_special=True
    )
    expected = sum(len(tok.encode(m["content"])) + 1 for m in CHAT if m["role"] == "assistant")
    assert enc.num_trained == expected == 5
    trained = [t for t, keep in zip(enc.ids, enc.trained, strict=True) if keep]
    assert tok.decode(trained) == f"apple{END[family]}plum yes{END[family]}"
    # SFT targets: the same tokens, shifted by one; everything else ignored.
    ex = sft_example({"messages": CHAT}, tok, template, max_tokens=200)
    assert int((ex.targets != -100).sum()) == expected
    assert tok.decode(ex.targets[ex.targets != -100].tolist()) == tok.decode(trained)


def test_dpo_scores_only_the_response_after_the_prompt(chat_tokenizer):
    template = builtin_template("dots1")
    record = {
        "prompt": CHAT[:4],
        "chosen": "plum yes",
        "rejected": [*CHAT[:4], CHAT[4] | {"content": "fig no"}],
    }
    pair = dpo_pair(record, chat_tokenizer, template, max_tokens=200)
    for side, text in ((pair.chosen, "plum yes"), (pair.rejected, "fig no")):
        assert (
            chat_tokenizer.decode(side.targets[side.targets != -100].tolist())
            == text + END["dots1"]
        )


def test_a_template_that_rewrites_earlier_turns_is_refused(chat_tokenizer):
    # Renders the last message differently from earlier ones: spans would be wrong.
    source = "{% for m in messages %}{% if loop.last %}[{{ m['content'] }}]{% else %}{{ m['content'] }}{% endif %}{% endfor %}"
    with pytest.raises(ValueError, match="prefix-stable"):
        encode_chat(chat_tokenizer, jinja_template(source, None, "<|endoftext|>"), CHAT[1:3])


@pytest.mark.parametrize(
    ("messages", "reason"),
    [
        ([{"content": "hi"}, {"role": "assistant", "content": "x"}], "messages[0] has no role"),
        (
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}],
            "messages[1]: empty assistant turn",
        ),
        (
            [{"role": "user", "content": "hi"}, {"role": "system", "content": "s"}],
            "system message may only come first",
        ),
        (
            [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
            "messages[1]: expected an assistant turn",
        ),
        ([{"role": "assistant", "content": "a"}], "messages[0]: expected a user turn"),
        ([{"role": "user", "content": "a"}], "must end with an assistant turn"),
        ([{"role": "bot", "content": "a"}], "unknown role 'bot'"),
    ],
)
def test_structure_errors_name_the_message(messages, reason):
    with pytest.raises(RecordError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        check_conversation(messages)


def _mixed_file(tmp_path):
    good = {"messages": CHAT[1:3]}
    long = {"messages": [CHAT[1], {"role": "assistant", "content": "apple " * 80}]}
    return write_jsonl(
        tmp_path / "sft.jsonl",
        [
            good,
            good,
            "{not json",
            {"messages": [{"content": "hi"}, CHAT[2]]},
            "",
            {"messages": [CHAT[1], {"role": "assistant", "content": ""}]},
            long,
            good,
            {"prompt": "no messages key"},
        ],
    )


def test_malformed_records_raise_with_their_line(tmp_path, chat_tokenizer):
    path = _mixed_file(tmp_path)
    template = builtin_template("olmoe")
    with pytest.raises(DataError, match=r"sft.jsonl:3: not valid JSON.*on_error=skip"):
        load_jsonl(path, lambda o: sft_example(o, chat_tokenizer, template, 65), "raise")


def test_malformed_records_are_skipped_and_each_reported(tmp_path, chat_tokenizer):
    path = _mixed_file(tmp_path)
    template = builtin_template("olmoe")
    logged = []
    loaded = load_jsonl(
        path, lambda o: sft_example(o, chat_tokenizer, template, 65), "skip", log=logged.append
    )
    assert loaded.lines == [1, 2, 8]  # blank line 5 is not a record
    reasons = [p.split(": ", 1)[1] for p in loaded.problems]
    assert [p.split(":")[1] for p in loaded.problems] == ["3", "4", "6", "7", "9"]
    assert reasons[0].startswith("not valid JSON")
    assert reasons[1] == "messages[0] has no role"
    assert reasons[2] == "messages[1]: empty assistant turn"
    assert "more than the 65 a row holds" in reasons[3] and "never truncated" in reasons[3]
    assert reasons[4] == 'a record must be an object with "messages"'
    assert "skipped 5 malformed record(s)" in logged[0]


def test_dpo_pair_errors(chat_tokenizer):
    template = builtin_template("dots1")
    with pytest.raises(RecordError, match="missing rejected"):
        dpo_pair({"prompt": "a", "chosen": "b"}, chat_tokenizer, template, 100)
    with pytest.raises(RecordError, match="the same response"):
        dpo_pair({"prompt": "a", "chosen": "b", "rejected": "b"}, chat_tokenizer, template, 100)
    with pytest.raises(RecordError, match="empty assistant turn"):
        dpo_pair({"prompt": "a", "chosen": "b", "rejected": ""}, chat_tokenizer, template, 100)
    with pytest.raises(RecordError, match="prompt must end with a user turn"):
        dpo_pair(
            {"prompt": CHAT[:3], "chosen": "b", "rejected": "c"}, chat_tokenizer, template, 100
        )
