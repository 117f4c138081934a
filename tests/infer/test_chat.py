"""Chat templates: both families' formats, the tokenizer_config.json template, and stop strings."""

from __future__ import annotations

import json

import pytest

from moelab.infer.chat import TULU_JINJA, builtin_template, load_chat_template
from moelab.infer.engine import Engine
from moelab.infer.sampling import SamplingParams
from moelab.infer.text import TextGenerator, TextSession

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello"},
    {"role": "user", "content": "Who are you?"},
]


def test_dots_format_has_no_newlines_and_ends_in_response():
    text = builtin_template("dots1").render(CHAT)
    assert text == (
        "<|system|>Be brief.<|endofsystem|><|userprompt|>Hi<|endofuserprompt|>"
        "<|response|>Hello<|endofresponse|><|userprompt|>Who are you?<|endofuserprompt|>"
        "<|response|>"
    )
    default = builtin_template("dots1").render(CHAT[1:2])
    assert default.startswith("<|system|>You are a helpful assistant.<|endofsystem|>")


def test_tulu_builtin_equals_the_published_jinja_template(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": TULU_JINJA, "eos_token": "<|endoftext|>"})
    )
    from_config = load_chat_template(tmp_path, "olmoe")
    builtin = builtin_template("olmoe")
    for messages in (CHAT, CHAT[1:2], CHAT[:3]):
        assert from_config.render(messages) == builtin.render(messages)
    assert (
        builtin.render(CHAT[1:3])
        == "<|user|>\nHi\n<|assistant|>\nHello<|endoftext|><|assistant|>\n"
    )


def test_model_dir_template_wins_and_bad_messages_are_refused(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": "{% for m in messages %}[{{ m['content'] }}]{% endfor %}"})
    )
    assert load_chat_template(tmp_path, "dots1").render(CHAT[1:2]) == "[Hi]"
    assert load_chat_template(tmp_path / "missing", "dots1").name == "dots"
    with pytest.raises(ValueError, match=r"messages\[0\]\.role"):
        builtin_template("olmoe").render([{"role": "robot", "content": "x"}])
    with pytest.raises(ValueError, match=r"content must be a string"):
        builtin_template("olmoe").render([{"role": "user", "content": 3}])


def test_chat_prompt_maps_tags_to_special_ids_and_stops_on_endofresponse(
    chat_tokenizer, text_models
):
    gen = TextGenerator(
        Engine(text_models["dots1"], max_batch=2), chat_tokenizer, builtin_template("dots1")
    )
    ids = gen.chat_ids(CHAT[1:2])
    tag = chat_tokenizer.hf.token_to_id
    assert ids[0] == tag("<|system|>") and ids[-1] == tag("<|response|>")
    assert tag("<|endofresponse|>") in gen.chat_stop_ids
    assert tag("<|endofresponse|>") not in gen.base_stop_ids
    assert ids.count(tag("<|userprompt|>")) == 1


def test_stop_strings_cut_the_text_and_end_generation(chat_tokenizer, text_models):
    gen = TextGenerator(
        Engine(text_models["olmoe"], max_batch=2), chat_tokenizer, builtin_template("olmoe")
    )
    prompt = gen.prompt_ids("the router")
    params = SamplingParams(max_new_tokens=24)
    (free,) = gen.complete([prompt], params)
    stop = free.text[len(free.text) // 2 : len(free.text) // 2 + 3]
    assert stop.strip(), f"degenerate sample text {free.text!r}"
    (cut,) = gen.complete([prompt], params, stop=[stop])
    assert cut.text == free.text[: free.text.find(stop)]
    assert cut.finish_reason == "stop" and len(cut.token_ids) < len(free.token_ids)


def test_streamed_deltas_join_to_the_final_text(chat_tokenizer, text_models):
    gen = TextGenerator(
        Engine(text_models["dots1"], max_batch=1), chat_tokenizer, builtin_template("dots1")
    )
    prompt = gen.prompt_ids("hello world")
    params = SamplingParams(max_new_tokens=20)
    (whole,) = gen.complete([prompt], params)
    stop = whole.text[5:8]
    deltas = list(gen.stream(prompt, params, stop=[stop]))
    assert "".join(deltas) == whole.text[: whole.text.find(stop)]


def test_session_holds_back_a_possible_stop_prefix(chat_tokenizer):
    session = TextSession(chat_tokenizer, stop=["mixture experts"])
    ids = chat_tokenizer.encode("the mixture")
    for i in range(len(ids)):
        session(ids[: i + 1])
    assert session.take() == "the "  # "mixture" may start the stop string
    for token in chat_tokenizer.encode(" experts"):
        session([*ids, token])
    assert session.stopped and session.take(final=True) == ""
