"""The engine: cached decode equals full recompute, batching changes nothing, sampling is seeded."""

from __future__ import annotations

import copy

import pytest
import torch

from moelab.infer.engine import Engine
from moelab.infer.sampling import SamplingParams

from .conftest import random_prompts

FAMILIES = ["dots1", "olmoe"]


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_greedy_decode_equals_full_recompute(tiny_models, family):
    model = tiny_models[family]
    prompts = random_prompts([3, 11, 6])
    requests = Engine(model, max_batch=3, max_len=64).generate(
        prompts, SamplingParams(max_new_tokens=10)
    )
    for r in requests:
        full = torch.tensor([r.prompt + r.output])
        with torch.no_grad():
            logits = model(full).logits[0]
        assert logits[len(r.prompt) - 1 : -1].argmax(-1).tolist() == r.output
        assert r.finish_reason == "length" and len(r.output) == 10


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_logits_match_full_forward(tiny_models, family):
    """Each decode step's logits (at its own position in a ragged batch) equal a full forward."""
    model = tiny_models[family]
    engine = Engine(model, max_batch=2, max_len=32)
    prompts = random_prompts([4, 9], seed=3)
    captured = []
    original = engine._sample

    def spy(requests, logits_BV):
        captured.append(([(r.prompt + r.output) for r in requests], logits_BV.clone()))
        return original(requests, logits_BV)

    engine._sample = spy
    engine.generate(prompts, SamplingParams(max_new_tokens=4))
    for contexts, logits_BV in captured:
        for ctx, row in zip(contexts, logits_BV, strict=True):
            with torch.no_grad():
                ref = model(torch.tensor([ctx])).logits[0, -1]
            torch.testing.assert_close(row, ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_equals_one_by_one_with_row_reuse(tiny_models, family):
    """5 prompts through 2 cache rows (rows reused) give what each prompt gives alone."""
    model = tiny_models[family]
    prompts = random_prompts([3, 12, 7, 1, 9], seed=1)
    params = SamplingParams(max_new_tokens=8)
    batched = Engine(model, max_batch=2, max_len=64).generate(prompts, params)
    alone = [Engine(model, max_batch=1, max_len=64).generate([p], params)[0] for p in prompts]
    assert [r.output for r in batched] == [r.output for r in alone]


def test_seeded_sampling_is_reproducible_and_batch_invariant(tiny_models):
    model = tiny_models["dots1"]
    prompts = random_prompts([5, 8, 2], seed=2)
    params = SamplingParams(
        max_new_tokens=12, temperature=1.3, top_k=50, top_p=0.95, repetition_penalty=1.2, seed=7
    )
    first = Engine(model, max_batch=3, max_len=64).generate(prompts, params)
    again = Engine(model, max_batch=3, max_len=64).generate(prompts, params)
    alone = Engine(model, max_batch=1, max_len=64).generate(prompts[1:2], params)
    assert [r.output for r in first] == [r.output for r in again]
    assert first[1].output == alone[0].output
    other = Engine(model, max_batch=1, max_len=64).generate(
        prompts[1:2], SamplingParams(max_new_tokens=12, temperature=1.3, seed=8)
    )
    assert other[0].output != first[1].output
    greedy = Engine(model, max_batch=1, max_len=64).generate(
        prompts[1:2], SamplingParams(max_new_tokens=12)
    )
    assert greedy[0].output != first[1].output  # temperature 1.3 actually samples


def test_stop_token_ends_the_request_and_is_kept(tiny_models):
    model = tiny_models["olmoe"]
    prompt = random_prompts([6], seed=4)[0]
    free = Engine(model, max_batch=1).generate([prompt], SamplingParams(max_new_tokens=8))[0]
    stop_at = free.output[3]
    first = free.output.index(stop_at)
    req = Engine(model, max_batch=1).generate(
        [prompt], SamplingParams(max_new_tokens=8, stop_token_ids=[stop_at])
    )[0]
    assert req.output == free.output[: first + 1] and req.finish_reason == "stop"


def test_stop_callback_ends_one_request_without_touching_others(tiny_models):
    model = tiny_models["dots1"]
    prompts = random_prompts([4, 4], seed=5)
    params = SamplingParams(max_new_tokens=9)
    stops = [lambda out: len(out) >= 3, None]
    a, b = Engine(model, max_batch=2).generate(prompts, params, stops)
    (ref_b,) = Engine(model, max_batch=1).generate(prompts[1:], params)
    assert len(a.output) == 3 and a.finish_reason == "stop"
    assert b.output == ref_b.output and b.finish_reason == "length"


def test_stream_yields_what_generate_returns_and_cancels_on_close(tiny_models):
    model = tiny_models["dots1"]
    prompt = random_prompts([5], seed=6)[0]
    params = SamplingParams(max_new_tokens=7)
    engine = Engine(model, max_batch=1)
    assert list(engine.stream(prompt, params)) == engine.generate([prompt], params)[0].output
    stream = engine.stream(prompt, params)
    next(stream)
    stream.close()
    assert not engine.has_work and engine.free_rows == [0]


def test_full_cache_ends_with_length(tiny_models):
    model = tiny_models["olmoe"]
    (req,) = Engine(model, max_batch=1, max_len=8).generate(
        [[1, 2, 3, 4, 5]], SamplingParams(max_new_tokens=50)
    )
    assert req.finish_reason == "length" and len(req.prompt) + len(req.output) == 9


@pytest.mark.parametrize(
    ("prompt", "message"),
    [([], "empty"), (list(range(16)), "at most 15"), ([5, 99999], "outside the vocabulary")],
)
def test_bad_prompts_are_refused(tiny_models, prompt, message):
    engine = Engine(tiny_models["dots1"], max_batch=1, max_len=16)
    with pytest.raises(ValueError, match=message):
        engine.submit(prompt, SamplingParams())


def test_bf16_model_gets_a_bf16_cache_and_decodes(tiny_models):
    model = copy.deepcopy(tiny_models["dots1"]).to(torch.bfloat16)
    engine = Engine(model, max_batch=2, max_len=32)
    assert engine.cache.k_LBKSd.dtype == torch.bfloat16
    a, b = engine.generate(random_prompts([3, 7], seed=9), SamplingParams(max_new_tokens=5))
    assert len(a.output) == len(b.output) == 5
    full = torch.tensor([b.prompt + b.output[:-1]])
    with torch.no_grad():
        ref = model(full).logits[0, len(b.prompt) - 1 :].float().argmax(-1).tolist()
    agree = sum(x == y for x, y in zip(ref, b.output, strict=True))
    assert agree >= 4  # bf16 rounding may flip a near tie, not the whole sequence


def test_penalised_greedy_and_logprobs_match_a_manual_loop(tiny_models):
    """Greedy under OpenAI penalties equals argmax(full-forward logits - penalties), token by
    token; each token's reported logprob is the raw log-softmax at its position."""
    model = tiny_models["olmoe"]
    prompt = random_prompts([5], seed=11)[0]
    params = SamplingParams(
        max_new_tokens=8, frequency_penalty=1.5, presence_penalty=0.5, logprobs=3
    )
    (req,) = Engine(model, max_batch=2, max_len=32).generate([prompt], params)
    ctx, out = list(prompt), []
    for _ in range(8):
        with torch.no_grad():
            logits = model(torch.tensor([ctx])).logits[0, -1]
        counts = torch.bincount(torch.tensor(out, dtype=torch.long), minlength=logits.shape[0])
        penalised = logits - 1.5 * counts - 0.5 * (counts > 0).float()
        token = int(penalised.argmax())
        lp = req.logprobs[len(out)]
        raw = logits.log_softmax(-1)
        assert lp.token == token
        assert lp.logprob == pytest.approx(float(raw[token]), abs=1e-4)
        assert [t for t, _ in lp.top] == raw.topk(3).indices.tolist()
        out.append(token)
        ctx.append(token)
    assert req.output == out
    plain = Engine(model, max_batch=1, max_len=32).generate(
        [prompt], SamplingParams(max_new_tokens=8)
    )
    assert plain[0].output != out and plain[0].logprobs == []  # the penalties changed something


@pytest.mark.parametrize("fast", [True, False])
def test_prompt_logprobs_equal_the_full_forward_log_softmax(tiny_models, fast):
    """Ragged prompts, only some asking: each asked prompt token's logprob (and top-2) is the
    full forward's log-softmax one position earlier; the first token's is None; the others
    get none, and the generated tokens are what they are without prompt logprobs."""
    model = tiny_models["dots1"]
    prompts = random_prompts([5, 9, 1], seed=4)
    asked = SamplingParams(max_new_tokens=3, prompt_logprobs=2)
    params = [asked, SamplingParams(max_new_tokens=3), asked]
    engine = Engine(model, max_batch=3, max_len=32, fast=fast)
    reqs = engine.generate(prompts, params)
    plain = Engine(model, max_batch=3, max_len=32).generate(
        prompts, SamplingParams(max_new_tokens=3)
    )
    assert [r.output for r in reqs] == [r.output for r in plain]
    assert reqs[1].prompt_logprobs == [] and reqs[2].prompt_logprobs == [None]
    r = reqs[0]
    with torch.no_grad():
        ref = model(torch.tensor([r.prompt])).logits[0].log_softmax(-1)
    assert len(r.prompt_logprobs) == 5 and r.prompt_logprobs[0] is None
    for i, lp in enumerate(r.prompt_logprobs[1:], start=1):
        assert lp.token == r.prompt[i]
        assert lp.logprob == pytest.approx(float(ref[i - 1, r.prompt[i]]), abs=1e-5)
        assert [t for t, _ in lp.top] == ref[i - 1].topk(2).indices.tolist()
