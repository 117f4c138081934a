"""The OpenAI-compatible server under a real uvicorn, driven by the official `openai` client.

Answers are checked against the same model run directly through TextGenerator (greedy), so a
right-shaped response with the wrong text fails. Bad requests are sent raw with httpx.
"""

from __future__ import annotations

import concurrent.futures
import json
import time

import pytest
import torch

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from moelab.infer.chat import builtin_template  # noqa: E402
from moelab.infer.config import ServeConfig, ServeLimits  # noqa: E402
from moelab.infer.engine import Engine  # noqa: E402
from moelab.infer.sampling import SamplingParams  # noqa: E402
from moelab.infer.server import create_app  # noqa: E402
from moelab.infer.text import TextGenerator  # noqa: E402

from .serving import running_server  # noqa: E402

MODEL = "tiny"
LIMITS = ServeLimits(
    max_tokens=32, max_prompt_tokens=48, max_n=4, max_prompts=4, max_body_bytes=20_000
)


def _generator(model, tokenizer, max_batch: int = 16) -> TextGenerator:
    return TextGenerator(
        Engine(model, max_batch=max_batch, max_len=96), tokenizer, builtin_template("dots1")
    )


@pytest.fixture(scope="module")
def served(text_models, chat_tokenizer):
    """(base_url, reference generator): one server for the module's tests."""
    model = text_models["dots1"]
    cfg = ServeConfig(limits=LIMITS)
    app = create_app(_generator(model, chat_tokenizer), cfg, MODEL)
    with running_server(app) as url:
        yield url, _generator(model, chat_tokenizer, max_batch=1)


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served[0] + "/v1", api_key="unused", max_retries=0, timeout=60)


def _ref(gen: TextGenerator, prompt: str, max_tokens: int, chat: bool = False, stop=()):
    ids = gen.chat_ids([{"role": "user", "content": prompt}]) if chat else gen.prompt_ids(prompt)
    (done,) = gen.complete([ids], SamplingParams(max_new_tokens=max_tokens), stop=stop, chat=chat)
    return ids, done


def test_models_and_health(client, served):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert httpx.get(served[0] + "/health").json()["status"] == "ok"


def test_completion_matches_the_engine_with_usage(client, served):
    ids, ref = _ref(served[1], "the router", 10)
    out = client.completions.create(model=MODEL, prompt="the router", max_tokens=10, temperature=0)
    assert out.choices[0].text == ref.text
    assert out.choices[0].finish_reason == ref.finish_reason == "length"
    assert out.usage.prompt_tokens == len(ids) and out.usage.completion_tokens == 10
    assert out.usage.total_tokens == len(ids) + 10


def test_chat_matches_the_engine_and_streams_the_same_text(client, served):
    _, ref = _ref(served[1], "hello", 12, chat=True)
    messages = [{"role": "user", "content": "hello"}]
    out = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=12, temperature=0
    )
    assert out.choices[0].message.content == ref.text
    assert out.choices[0].message.role == "assistant"
    stream = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ref.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == ref.finish_reason
    assert chunks[-1].usage.completion_tokens == len(ref.token_ids)


def test_streamed_completion_with_stop_string_ends_with_done(served):
    _, free = _ref(served[1], "data model", 20)
    stop = free.text[4:7]
    _, ref = _ref(served[1], "data model", 20, stop=[stop])
    body = {
        "model": MODEL,
        "prompt": "data model",
        "max_tokens": 20,
        "temperature": 0,
        "stream": True,
        "stop": stop,
    }
    with httpx.stream("POST", served[0] + "/v1/completions", json=body, timeout=60) as r:
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[len("data: ") :]) for line in lines[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == ref.text
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_n_choices_and_token_prompts(client, served):
    out = client.completions.create(
        model=MODEL, prompt="the", max_tokens=8, n=3, temperature=1.0, seed=5
    )
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert len({c.text for c in out.choices}) > 1  # seeds 5, 6, 7 differ
    assert out.usage.prompt_tokens == len(served[1].prompt_ids("the"))  # counted once, not n times
    again = client.completions.create(
        model=MODEL, prompt="the", max_tokens=8, n=3, temperature=1.0, seed=5
    )
    assert [c.text for c in again.choices] == [c.text for c in out.choices]
    ids = served[1].prompt_ids("the")
    by_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=6, temperature=0)
    assert by_ids.choices[0].text == _ref(served[1], "the", 6)[1].text


BAD = [
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    (json.dumps({"prompt": "x"}).encode(), 400, "model"),
    (json.dumps({"model": MODEL}).encode(), 400, "prompt"),
    (json.dumps({"model": MODEL, "prompt": "x", "max_tokens": "ten"}).encode(), 400, "max_tokens"),
    (json.dumps({"model": MODEL, "prompt": "x", "max_tokens": 10_000}).encode(), 400, "max_tokens"),
    (json.dumps({"model": MODEL, "prompt": "x", "n": 50}).encode(), 400, "n"),
    (
        json.dumps({"model": MODEL, "prompt": "x", "temperature": "hot"}).encode(),
        400,
        "temperature",
    ),
    (json.dumps({"model": MODEL, "prompt": "x", "stream": "yes"}).encode(), 400, "stream"),
    (json.dumps({"model": MODEL, "prompt": {"a": 1}}).encode(), 400, "prompt"),
    (json.dumps({"model": MODEL, "prompt": "data " * 200}).encode(), 400, "prompt"),
    (json.dumps({"model": "gpt-4", "prompt": "x"}).encode(), 404, "model"),
    (json.dumps({"model": MODEL, "prompt": "x" * 30_000}).encode(), 413, None),
]


@pytest.mark.parametrize(("body", "status", "param"), BAD, ids=range(len(BAD)))
def test_bad_completion_requests_get_openai_errors(served, body, status, param):
    r = httpx.post(
        served[0] + "/v1/completions",
        content=body,
        timeout=30,
        headers={"content-type": "application/json"},
    )
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error"
    assert error["param"] == param


def test_bad_chat_requests_and_the_server_keeps_serving(client, served):
    url = served[0] + "/v1/chat/completions"
    for body, param in [
        ({"model": MODEL}, "messages"),
        ({"model": MODEL, "messages": []}, "messages"),
        ({"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}, "messages"),
        ({"model": MODEL, "messages": [{"role": "user"}]}, "messages"),
    ]:
        r = httpx.post(url, json=body, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == param
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    out = client.completions.create(model=MODEL, prompt="the router", max_tokens=3, temperature=0)
    assert out.choices[0].text == _ref(served[1], "the router", 3)[1].text


def test_sixteen_concurrent_clients_are_batched_and_correct(served):
    url, ref_gen = served
    prompts = [f"the {w} model" for w in "abcdefghijklmnop"]
    expected = [_ref(ref_gen, p, 12)[1].text for p in prompts]
    before = httpx.get(url + "/health").json()["steps"]

    def ask(prompt: str) -> str:
        c = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=120)
        return (
            c.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0)
            .choices[0]
            .text
        )

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, prompts))
    assert answers == expected
    health = httpx.get(url + "/health").json()
    assert health["max_running"] >= 8, health  # decoded together, not one by one
    assert health["steps"] - before < 16 * 12, health


def test_api_key_is_required_when_set(text_models, chat_tokenizer):
    cfg = ServeConfig(api_key="sekrit", limits=LIMITS)
    app = create_app(_generator(text_models["olmoe"], chat_tokenizer, 2), cfg, MODEL)
    with running_server(app) as url:
        r = httpx.post(url + "/v1/completions", json={"model": MODEL, "prompt": "x"}, timeout=30)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        bad = openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        good = openai.OpenAI(base_url=url + "/v1", api_key="sekrit", max_retries=0)
        out = good.completions.create(model=MODEL, prompt="x", max_tokens=2, temperature=0)
        assert out.usage.completion_tokens <= 2


def test_streamed_choices_and_a_client_that_hangs_up(served):
    url = served[0]
    body = {
        "model": MODEL,
        "prompt": "the",
        "max_tokens": 6,
        "n": 2,
        "temperature": 0,
        "stream": True,
    }
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
        chunks = [
            json.loads(line[6:]) for line in r.iter_lines() if line and line != "data: [DONE]"
        ]
    ref = _ref(served[1], "the", 6)[1].text
    for index in (0, 1):
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == index]
        assert "".join(c["text"] for c in mine) == ref and mine[-1]["finish_reason"] == "length"


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "plain"])
def test_a_client_that_hangs_up_is_cancelled(text_models, chat_tokenizer, stream):
    """Streaming or not: the abandoned request stops, its cache row is free, others are served."""
    limits = ServeLimits(max_tokens=900, max_prompt_tokens=48)
    gen = TextGenerator(
        Engine(text_models["olmoe"], max_batch=2, max_len=1000),
        chat_tokenizer,
        builtin_template("olmoe"),
    )
    with running_server(create_app(gen, ServeConfig(limits=limits), MODEL)) as url:
        body = {"model": MODEL, "prompt": "the", "max_tokens": 900, "temperature": 0}
        if stream:
            with httpx.stream(
                "POST", url + "/v1/completions", json={**body, "stream": True}, timeout=60
            ) as r:
                next(r.iter_lines())  # one chunk, then hang up
        else:
            deadline = time.monotonic() + 20
            while httpx.get(url + "/health").json()["tokens"] == 0:
                # gives up while it is generating: 900 tokens take the engine ~0.6 s on the
                # 2-core CI box, so the wait must be far shorter than that
                with pytest.raises(httpx.ReadTimeout):
                    httpx.post(url + "/v1/completions", json=body, timeout=0.1)
                assert time.monotonic() < deadline
        deadline = time.monotonic() + 20
        while httpx.get(url + "/health").json()["running"] and time.monotonic() < deadline:
            time.sleep(0.05)
        health = httpx.get(url + "/health").json()
        after = httpx.post(url + "/v1/completions", json={**body, "max_tokens": 3}, timeout=60)
    assert health["running"] == 0 and health["cancelled"] >= 1, health
    assert health["free_rows"] == health["max_batch"] == 2, health
    assert health["tokens"] < 900, health
    assert after.status_code == 200 and after.json()["usage"]["completion_tokens"] == 3


def _logits_at_end(gen: TextGenerator, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return gen.engine.model(torch.tensor([ids])).logits[0, -1].log_softmax(-1)


def test_completion_logprobs_and_echo(client, served):
    ids, ref = _ref(served[1], "the router", 6)
    out = client.completions.create(
        model=MODEL, prompt="the router", max_tokens=6, temperature=0, logprobs=3
    )
    lp = out.choices[0].logprobs
    assert out.choices[0].text == ref.text
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 6
    first = _logits_at_end(served[1], ids)
    assert lp.token_logprobs[0] == pytest.approx(float(first.max()), abs=1e-4)  # greedy: the best
    assert all(1 <= len(top) <= 3 for top in lp.top_logprobs)  # keyed by text: ids may share one
    assert all(
        max(top.values()) == pytest.approx(v, abs=1e-6)
        for top, v in zip(lp.top_logprobs, lp.token_logprobs, strict=True)
    )
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    echoed = client.completions.create(
        model=MODEL, prompt="the router", max_tokens=6, temperature=0, echo=True
    )
    assert echoed.choices[0].text == "the router" + ref.text
    assert echoed.usage.completion_tokens == 6
    body = {"model": MODEL, "prompt": "the router", "max_tokens": 6, "temperature": 0}
    with httpx.stream(
        "POST",
        served[0] + "/v1/completions",
        json={**body, "echo": True, "stream": True},
        timeout=60,
    ) as r:
        chunks = [json.loads(x[6:]) for x in r.iter_lines() if x and x != "data: [DONE]"]
    assert "".join(c["choices"][0]["text"] for c in chunks) == "the router" + ref.text


def test_echo_with_logprobs_scores_the_prompt(client, served):
    """echo + logprobs: the prompt's tokens come first with their logprobs (the first null),
    each equal to the full forward's log-softmax one position earlier; then the completion's,
    as without echo. Streamed, the first chunk is the echo carrying the prompt's logprobs."""
    gen = served[1]
    ids, ref = _ref(gen, "the router", 3)
    P = len(ids)
    plain = client.completions.create(
        model=MODEL, prompt="the router", max_tokens=3, temperature=0, logprobs=2
    )
    out = client.completions.create(
        model=MODEL, prompt="the router", max_tokens=3, temperature=0, logprobs=2, echo=True
    )
    choice = out.choices[0]
    lp = choice.logprobs
    assert choice.text == "the router" + ref.text
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.text_offset) == P + 3
    assert lp.tokens[:P] == [gen.token_text(t) for t in ids]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    with torch.no_grad():
        full = gen.engine.model(torch.tensor([ids])).logits[0].log_softmax(-1)
    for i in range(1, P):
        assert lp.token_logprobs[i] == pytest.approx(float(full[i - 1, ids[i]]), abs=1e-4)
        best = full[i - 1].topk(2)
        assert max(lp.top_logprobs[i].values()) == pytest.approx(float(best.values[0]), abs=1e-4)
    assert lp.text_offset[0] == 0 and lp.text_offset[:P] == sorted(lp.text_offset[:P])
    assert lp.tokens[P:] == plain.choices[0].logprobs.tokens
    assert lp.token_logprobs[P:] == pytest.approx(plain.choices[0].logprobs.token_logprobs)
    assert lp.text_offset[P:] == [
        len("the router") + o for o in plain.choices[0].logprobs.text_offset
    ]
    body = {"model": MODEL, "prompt": "the router", "max_tokens": 3, "temperature": 0}
    with httpx.stream(
        "POST",
        served[0] + "/v1/completions",
        json={**body, "echo": True, "logprobs": 2, "stream": True},
        timeout=60,
    ) as r:
        chunks = [json.loads(x[6:]) for x in r.iter_lines() if x and x != "data: [DONE]"]
    first = chunks[0]["choices"][0]
    assert first["text"] == "the router"
    assert first["logprobs"]["token_logprobs"] == pytest.approx(lp.token_logprobs[:P])
    assert "".join(c["choices"][0]["text"] for c in chunks) == choice.text
    streamed = [
        v
        for c in chunks[1:]
        if c["choices"][0]["logprobs"]
        for v in c["choices"][0]["logprobs"]["token_logprobs"]
    ]
    assert streamed == pytest.approx(lp.token_logprobs[P:])


def test_chat_logprobs_streamed_and_not(client, served):
    _, ref = _ref(served[1], "hello", 8, chat=True)
    messages = [{"role": "user", "content": "hello"}]
    kw = dict(model=MODEL, messages=messages, max_tokens=8, temperature=0, logprobs=True)
    out = client.chat.completions.create(**kw, top_logprobs=2)
    content = out.choices[0].logprobs.content
    assert out.choices[0].message.content == ref.text
    assert len(content) == out.usage.completion_tokens == len(ref.token_ids)
    for entry in content:
        assert len(entry.top_logprobs) == 2 and entry.logprob <= 0
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob, abs=1e-6)
        assert entry.bytes == list(entry.token.encode())
    stream = client.chat.completions.create(**kw, top_logprobs=2, stream=True)
    streamed = [
        e
        for c in stream
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content
    ]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in content], abs=1e-6)
    bare = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
    assert bare.choices[0].logprobs is None


def test_penalties_and_seed_reach_the_sampler(client, served):
    plain = client.completions.create(model=MODEL, prompt="the", max_tokens=12, temperature=0)
    penalised = client.completions.create(
        model=MODEL,
        prompt="the",
        max_tokens=12,
        temperature=0,
        frequency_penalty=2.0,
        presence_penalty=2.0,
    )
    ids, _ = _ref(served[1], "the", 1)
    params = SamplingParams(max_new_tokens=12, frequency_penalty=2.0, presence_penalty=2.0)
    (ref,) = served[1].complete([ids], params)
    assert penalised.choices[0].text == ref.text != plain.choices[0].text
    a, b = (
        client.completions.create(model=MODEL, prompt="the", max_tokens=8, temperature=1.0, seed=s)
        for s in (1, 1)
    )
    assert a.choices[0].text == b.choices[0].text


MORE_BAD = [
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"frequency_penalty": "x"}, "frequency_penalty"),
    ({"logprobs": 50}, "logprobs"),
    ({"echo": "yes"}, "echo"),
    ({"seed": 1.5}, "seed"),
]


@pytest.mark.parametrize(("extra", "param"), MORE_BAD, ids=[p for _, p in MORE_BAD])
def test_bad_new_fields_are_refused_and_unknown_ones_ignored(served, extra, param):
    body = {"model": MODEL, "prompt": "x", "max_tokens": 2, **extra}
    r = httpx.post(served[0] + "/v1/completions", json=body, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    ok = httpx.post(
        served[0] + "/v1/completions",
        json={**body, **dict.fromkeys(extra), "foo": {"bar": 1}},
        timeout=30,
    )
    assert ok.status_code == 200, ok.text


def test_chat_top_logprobs_needs_logprobs(served):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}
    r = httpx.post(served[0] + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "top_logprobs"


def test_prompt_plus_max_tokens_beyond_the_cache_is_a_400(text_models, chat_tokenizer):
    gen = TextGenerator(
        Engine(text_models["dots1"], max_batch=2, max_len=40),
        chat_tokenizer,
        builtin_template("dots1"),
    )
    with running_server(create_app(gen, ServeConfig(limits=LIMITS), MODEL)) as url:
        ids = gen.prompt_ids("data model " * 20)[:30]
        body = {"model": MODEL, "prompt": ids, "temperature": 0}
        over = httpx.post(url + "/v1/completions", json={**body, "max_tokens": 11}, timeout=30)
        fits = httpx.post(url + "/v1/completions", json={**body, "max_tokens": 10}, timeout=30)
        default = httpx.post(url + "/v1/completions", json=body, timeout=30)  # 16 asked by default
        chat = httpx.post(
            url + "/v1/chat/completions",
            json={
                "model": MODEL,
                "messages": [{"role": "user", "content": "data " * 30}],
                "max_tokens": 32,
            },
            timeout=30,
        )
    error = over.json()["error"]
    assert over.status_code == 400 and error["code"] == "context_length_exceeded"
    assert error["param"] == "max_tokens" and "41" in error["message"]
    assert fits.status_code == 200 and fits.json()["usage"]["completion_tokens"] == 10
    assert default.status_code == 200 and default.json()["usage"]["completion_tokens"] == 10
    assert default.json()["choices"][0]["finish_reason"] == "length"
    assert chat.status_code == 400 and chat.json()["error"]["code"] == "context_length_exceeded"
