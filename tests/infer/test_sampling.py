"""Sampling: each filter removes what it must, penalties follow the CTRL rule, seeds reproduce."""

from __future__ import annotations

import pytest
import torch

from moelab.infer.sampling import (
    SamplingParams,
    apply_presence_frequency,
    apply_repetition_penalty,
    filter_top_k,
    filter_top_p,
    sample_batch,
    sample_next,
    token_logprobs,
)


def test_greedy_is_argmax_and_draws_nothing():
    logits = torch.tensor([0.1, 3.0, -1.0, 2.9])
    params = SamplingParams()
    assert params.make_generator() is None
    assert sample_next(logits, params, None) == 1


def test_top_k_keeps_exactly_k():
    logits = torch.tensor([1.0, 4.0, 3.0, 2.0, 0.0])
    kept = torch.isfinite(filter_top_k(logits, 2))
    assert kept.tolist() == [False, True, True, False, False]


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    kept = torch.isfinite(filter_top_p(probs.log(), 0.75))
    assert kept.tolist() == [True, True, False, False]  # 0.5 < 0.75 <= 0.8
    assert torch.isfinite(filter_top_p(probs.log(), 0.3)).tolist() == [True, False, False, False]


def test_repetition_penalty_divides_positive_and_multiplies_negative():
    logits = torch.tensor([2.0, -2.0, 1.0])
    out = apply_repetition_penalty(logits, torch.tensor([0, 1, 1]), 2.0)
    assert out.tolist() == [1.0, -4.0, 1.0]


def test_seeded_draws_reproduce_and_follow_the_distribution():
    logits = torch.tensor([0.0, 1.0, 2.0]).log_softmax(-1)
    params = SamplingParams(temperature=1.0, seed=3)
    draws = [sample_next(logits, params, g) for g in [params.make_generator()] for _ in range(2000)]
    again = [sample_next(logits, params, g) for g in [params.make_generator()] for _ in range(2000)]
    assert draws == again
    freq = torch.bincount(torch.tensor(draws), minlength=3) / len(draws)
    torch.testing.assert_close(freq, logits.softmax(-1), atol=0.04, rtol=0)


def test_top_k_one_samples_the_argmax():
    logits = torch.randn(100, generator=torch.Generator().manual_seed(0))
    params = SamplingParams(temperature=5.0, top_k=1, seed=0)
    gen = params.make_generator()
    assert {sample_next(logits, params, gen) for _ in range(20)} == {int(logits.argmax())}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -3.0}, "frequency_penalty"),
        ({"logprobs": -1}, "logprobs"),
    ],
)
def test_invalid_params_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


def test_presence_and_frequency_penalties_follow_openai():
    """logit[j] -= frequency * count[j] + presence * (count[j] > 0), over generated ids only."""
    logits = torch.tensor([1.0, 1.0, 1.0, 1.0])
    out = apply_presence_frequency(logits, torch.tensor([2, 2, 2, 0]), presence=0.5, frequency=0.25)
    assert out.tolist() == [1.0 - 0.25 - 0.5, 1.0, 1.0 - 0.75 - 0.5, 1.0]
    negative = apply_presence_frequency(logits, torch.tensor([3]), presence=-1.0, frequency=0.0)
    assert negative.tolist() == [1.0, 1.0, 1.0, 2.0]  # a negative penalty encourages repeats
    # Greedy decoding honours them: the repeated argmax loses to the runner-up.
    params = SamplingParams(frequency_penalty=1.0)
    peaked = torch.tensor([0.0, 2.5, 2.0])
    assert sample_next(peaked, params, None, output=torch.tensor([1])) == 2
    assert sample_next(peaked, params, None, output=torch.tensor([], dtype=torch.long)) == 1


def test_token_logprobs_are_raw_log_softmax_with_top_n_per_row():
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    ref = logits.log_softmax(-1)
    a, b = token_logprobs(logits, tokens=[2, 0], top_n=[2, 0])
    assert a.token == 2 and a.logprob == pytest.approx(float(ref[0, 2]))
    assert [t for t, _ in a.top] == [1, 2]
    assert [v for _, v in a.top] == pytest.approx(ref[0, [1, 2]].tolist())
    assert b.top == [] and b.logprob == pytest.approx(float(ref[1, 0]))


def _batch(logits_BV, params, gens):
    empty = [[] for _ in params]
    return sample_batch(logits_BV, params, gens, empty, empty)


def test_batched_sampling_follows_the_distribution_and_each_rows_filters():
    """Row 0 free (frequencies match the softmax), row 1 greedy, row 2 top-k 2, row 3 top-p."""
    base = torch.tensor([0.0, 1.0, 2.0, 0.5]).log_softmax(-1)
    logits = base.expand(4, 4).clone()
    params = [
        SamplingParams(temperature=1.0, seed=1),
        SamplingParams(),
        SamplingParams(temperature=1.0, top_k=2, seed=2),
        SamplingParams(temperature=1.0, top_p=0.6, seed=3),
    ]
    gens = [p.make_generator() for p in params]
    draws = torch.tensor([_batch(logits, params, gens) for _ in range(3000)])
    freq = torch.bincount(draws[:, 0], minlength=4) / len(draws)
    torch.testing.assert_close(freq, base.softmax(-1), atol=0.04, rtol=0)
    assert set(draws[:, 1].tolist()) == {2}
    assert set(draws[:, 2].tolist()) == {1, 2}  # the two most likely
    kept = torch.isfinite(filter_top_p(base, 0.6)).nonzero()[:, 0].tolist()
    assert set(draws[:, 3].tolist()) == set(kept) == {1, 2}


def test_batched_sampling_is_batch_invariant_per_seed():
    logits = torch.randn(5, 50, generator=torch.Generator().manual_seed(4))
    params = [SamplingParams(temperature=0.8, top_k=10, top_p=0.9, seed=s) for s in range(5)]
    gens = [p.make_generator() for p in params]
    together = [_batch(logits, params, gens) for _ in range(20)]
    for b in range(5):
        gen = params[b].make_generator()
        alone = [_batch(logits[b : b + 1], params[b : b + 1], [gen])[0] for _ in range(20)]
        assert alone == [row[b] for row in together]


def test_batched_penalties_leave_the_callers_logits_raw():
    logits = torch.tensor([[0.0, 2.5, 2.0]])
    params = [SamplingParams(frequency_penalty=1.0, repetition_penalty=2.0)]
    assert sample_batch(logits, params, [None], [[1]], [[1]]) == [2]
    assert logits.tolist() == [[0.0, 2.5, 2.0]]
