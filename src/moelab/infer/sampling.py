"""Next-token selection: penalties, temperature, top-k, top-p, with an explicit generator.

``SamplingParams`` holds what one request asks for; ``sample_next`` turns one row of logits into
one token id, and ``sample_batch`` (what the engine runs) does a whole batch of rows with
different params in a few batched ops, drawing by inverse CDF from one uniform number per row. Temperature 0 means greedy (argmax, no randomness). Every random draw goes through
the ``torch.Generator`` the caller passes, one per request, so a seeded request gives the same
tokens whether it runs alone or batched with others.

Order of operations (as in transformers' logits processors and vLLM): repetition penalty on the
raw logits (every id in prompt + output), then OpenAI's presence and frequency penalties (ids
in the output only: ``logit -= frequency_penalty * count + presence_penalty * (count > 0)``),
then temperature, then top-k, then top-p, then a draw from the softmax in fp32.

``token_logprobs`` gives what an OpenAI ``logprobs`` answer reports: the log-probability of
the chosen token and of the most likely ones, from the model's raw distribution (log-softmax
of the unprocessed logits, as vLLM reports by default), for a batch of rows at once.

What this module does not know: tokenization, stop strings, batching or the model.

Shapes: V vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass
class SamplingParams:
    """What one request asks of the sampler and of the decode loop."""

    max_new_tokens: int = 64
    """Stop after this many generated tokens."""
    temperature: float = 0.0
    """0 is greedy; otherwise logits are divided by it before the softmax."""
    top_k: int = 0
    """Keep the k most likely tokens (0 keeps all)."""
    top_p: float = 1.0
    """Keep the smallest set of tokens whose probability reaches top_p (1.0 keeps all)."""
    repetition_penalty: float = 1.0
    """CTRL-style: a seen token's positive logit is divided by it, a negative one multiplied."""
    presence_penalty: float = 0.0
    """OpenAI: subtracted once from the logit of every id already generated."""
    frequency_penalty: float = 0.0
    """OpenAI: subtracted from an id's logit once per time it was generated."""
    logprobs: int | None = None
    """None: no logprobs; k >= 0: the chosen token's logprob and the k most likely tokens'."""
    prompt_logprobs: int | None = None
    """None: none; k >= 0: each prompt token's logprob given the tokens before it, and the k
    most likely tokens at that position (OpenAI's ``echo`` with ``logprobs``)."""
    seed: int | None = None
    """Seed of this request's generator; None draws a fresh seed from torch's global RNG."""
    stop_token_ids: Sequence[int] = field(default_factory=tuple)
    """Generation ends after emitting any of these (the id is included in the output)."""

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int):
            raise ValueError(f"max_new_tokens must be an integer, got {self.max_new_tokens!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise ValueError(f"{name} must be between -2 and 2, got {getattr(self, name)}")
        for name in ("logprobs", "prompt_logprobs"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        self.stop_token_ids = tuple(int(t) for t in self.stop_token_ids)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def plain_argmax(self) -> bool:
        """Greedy with no penalty: the token is the raw argmax (batchable, nothing to look up)."""
        return (
            self.greedy
            and self.repetition_penalty == 1.0
            and self.presence_penalty == 0.0
            and self.frequency_penalty == 0.0
        )

    def make_generator(self, device: str | torch.device = "cpu") -> torch.Generator | None:
        """This request's generator (None for greedy, which draws nothing)."""
        if self.greedy:
            return None
        seed = self.seed
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        return torch.Generator(device=device).manual_seed(seed)


def apply_repetition_penalty(
    logits_V: torch.Tensor, seen: torch.Tensor, penalty: float
) -> torch.Tensor:
    """Penalise every id in ``seen`` (1-D long tensor; duplicates are harmless)."""
    if penalty == 1.0 or seen.numel() == 0:
        return logits_V
    picked = logits_V.gather(0, seen)
    picked = torch.where(picked > 0, picked / penalty, picked * penalty)
    return logits_V.scatter(0, seen, picked)


def apply_presence_frequency(
    logits_V: torch.Tensor, output: torch.Tensor, presence: float, frequency: float
) -> torch.Tensor:
    """OpenAI's penalties over the ids generated so far (1-D long tensor ``output``)."""
    if (presence == 0.0 and frequency == 0.0) or output.numel() == 0:
        return logits_V
    counts = torch.bincount(output, minlength=logits_V.shape[-1]).to(logits_V.dtype)
    return logits_V - frequency * counts - presence * (counts > 0).to(logits_V.dtype)


def filter_top_k(logits_V: torch.Tensor, k: int) -> torch.Tensor:
    if k <= 0 or k >= logits_V.shape[-1]:
        return logits_V
    kth = torch.topk(logits_V, k).values[-1]
    return logits_V.masked_fill(logits_V < kth, float("-inf"))


def filter_top_p(logits_V: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: drop tokens outside the smallest set with cumulative mass >= p."""
    if p >= 1.0:
        return logits_V
    sorted_logits, order = torch.sort(logits_V, descending=True)
    cum = sorted_logits.softmax(-1).cumsum(-1)
    drop_sorted = cum - sorted_logits.softmax(-1) >= p  # mass before this token already >= p
    drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
    return logits_V.masked_fill(drop, float("-inf"))


def sample_next(
    logits_V: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator | None,
    seen: torch.Tensor | None = None,
    output: torch.Tensor | None = None,
) -> int:
    """One token id from one row of logits under ``params``.

    Args:
        logits_V: (V,) next-token logits in any float dtype.
        params: the request's sampling parameters.
        generator: the request's generator (unused when greedy).
        seen: ids already in the context (prompt and output), for the repetition penalty.
        output: ids generated so far, for the presence and frequency penalties.
    """
    logits = logits_V.float()
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    if output is not None:
        logits = apply_presence_frequency(
            logits, output, params.presence_penalty, params.frequency_penalty
        )
    if params.greedy:
        return int(logits.argmax())
    logits = logits / params.temperature
    logits = filter_top_p(filter_top_k(logits, params.top_k), params.top_p)
    probs = logits.softmax(-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def sample_batch(
    logits_BV: torch.Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
    contexts: Sequence[Sequence[int]],
    outputs: Sequence[Sequence[int]],
) -> list[int]:
    """One token per row, each row under its own params and generator, without a loop of
    per-row tensor pipelines: penalties are applied only to the rows that ask for them, greedy
    rows take one batched argmax, and sampled rows share one temperature / top-k / top-p /
    softmax pass; each then draws one uniform number from its own generator and picks its
    token by inverse CDF, so a seeded row gets the same token alone or batched.

    Args:
        contexts: each row's prompt + output ids (repetition penalty).
        outputs: each row's output ids (presence and frequency penalties).
    """
    logits = logits_BV.float()
    device = logits.device
    penalised = [
        b
        for b, p in enumerate(params)
        if p.repetition_penalty != 1.0 or p.presence_penalty != 0.0 or p.frequency_penalty != 0.0
    ]
    if penalised:
        logits = logits.clone()  # rows are rewritten in place; the caller's logits stay raw
    for b in penalised:
        p = params[b]
        seen = torch.tensor(list(contexts[b]), dtype=torch.long, device=device)
        logits[b] = apply_repetition_penalty(logits[b], seen, p.repetition_penalty)
        out = torch.tensor(list(outputs[b]), dtype=torch.long, device=device)
        logits[b] = apply_presence_frequency(
            logits[b], out, p.presence_penalty, p.frequency_penalty
        )
    tokens = [0] * len(params)
    greedy = [b for b, p in enumerate(params) if p.greedy]
    drawn = [b for b, p in enumerate(params) if not p.greedy]
    if greedy:
        for b, t in zip(greedy, _rows(logits, greedy).argmax(-1).tolist(), strict=True):
            tokens[b] = t
    if drawn:
        picked = _draw(
            _rows(logits, drawn), [params[b] for b in drawn], [generators[b] for b in drawn]
        )
        for b, t in zip(drawn, picked, strict=True):
            tokens[b] = t
    return tokens


def _rows(x_BV: torch.Tensor, rows: list[int]) -> torch.Tensor:
    if len(rows) == x_BV.shape[0]:
        return x_BV
    return x_BV[torch.tensor(rows, device=x_BV.device)]


def _draw(
    logits_RV: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
) -> list[int]:
    """Temperature, top-k (ties kept, as ``filter_top_k``), top-p and an inverse-CDF draw."""
    R, V = logits_RV.shape
    device = logits_RV.device
    temps = torch.tensor([p.temperature for p in params], device=device)[:, None]
    scaled = logits_RV / temps
    sorted_l, order = torch.sort(scaled, dim=-1, descending=True)
    ks = torch.tensor([p.top_k if 0 < p.top_k < V else V for p in params], device=device)
    kth = sorted_l.gather(1, (ks - 1)[:, None])
    sorted_l = sorted_l.masked_fill(sorted_l < kth, float("-inf"))
    top_p = torch.tensor([p.top_p for p in params], device=device)[:, None]
    probs = sorted_l.softmax(-1)
    drop = (probs.cumsum(-1) - probs >= top_p) & (top_p < 1.0)
    sorted_l = sorted_l.masked_fill(drop, float("-inf"))
    cdf = sorted_l.softmax(-1).cumsum(-1)
    u = torch.stack([torch.rand((), generator=g, device=device) for g in generators])
    where = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).clamp_(max=V - 1)
    return order.gather(1, where)[:, 0].tolist()


@dataclass
class TokenLogprob:
    """One generated token's logprob and the ``top`` most likely (id, logprob), best first."""

    token: int
    logprob: float
    top: list[tuple[int, float]]


def token_logprobs(
    logits_BV: torch.Tensor, tokens: Sequence[int], top_n: Sequence[int]
) -> list[TokenLogprob]:
    """Raw-distribution logprobs of each row's chosen token and its ``top_n[b]`` best tokens."""
    logprobs_BV = torch.log_softmax(logits_BV.float(), dim=-1)
    chosen = logprobs_BV.gather(1, torch.tensor(tokens, device=logits_BV.device)[:, None])
    k = min(max(top_n, default=0), logprobs_BV.shape[-1])
    values, ids = logprobs_BV.topk(k, dim=-1) if k else (logprobs_BV[:, :0], logprobs_BV[:, :0])
    chosen, values, ids = chosen[:, 0].tolist(), values.tolist(), ids.long().tolist()
    return [
        TokenLogprob(tok, lp, list(zip(ids[b][:n], values[b][:n], strict=True)))
        for b, (tok, lp, n) in enumerate(zip(tokens, chosen, top_n, strict=True))
    ]
