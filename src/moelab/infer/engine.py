"""Batched generation on token ids: prefill and decode over a preallocated KV cache.

The engine holds a fixed number of cache rows (``max_batch``). A submitted request waits until
a row is free; each ``step()`` first prefills every newly admitted request in one right-padded
forward (prompts of different lengths, each at positions 0..P-1) and samples its first token,
then runs one decode forward over all requests that were already running, each at its own
position. A finished request frees its row for the next one at once (continuous batching), so
``generate()`` for a list of prompts and the server's background loop share this one path.

The forwards run ``FastForward`` (fused QKV, one cache write per layer, a mask only when rows
sit at different positions, the cheapest expert kernel for the step's token count; the same
logits as the model, tested) where it supports the model, else the model itself. A request
that asks for ``prompt_logprobs`` gets every prompt token's logprob from its prefill.

A request ends when it emits one of its stop token ids, when its ``stop`` callback (given the
ids generated so far) returns True — this is how a text layer implements stop strings without
the engine decoding anything — when it has ``max_new_tokens`` tokens, or when the cache is full.

What this module does not know: tokenization, chat templates, text stop strings or HTTP.
The engine knows nothing about tokenization.

Shapes: B batch rows, T tokens, V vocabulary.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from moelab.infer.fast_forward import FastForward
from moelab.infer.kv_cache import KVCache
from moelab.infer.memory import keep_freed_memory
from moelab.infer.sampling import SamplingParams, TokenLogprob, sample_batch, token_logprobs
from moelab.model.transformer import MoETransformer

StopFn = Callable[[list[int]], bool]
_ids = itertools.count()


@dataclass(eq=False)
class Request:
    """One prompt being completed; the engine fills ``output`` and ``finish_reason``."""

    prompt: list[int]
    params: SamplingParams
    stop: StopFn | None = None
    id: int = field(default_factory=lambda: next(_ids))
    output: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    """None while running; then "stop" (stop token or callback), "length" or "cancelled"."""
    row: int = -1
    generator: torch.Generator | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    """One per output token when ``params.logprobs`` is set."""
    prompt_logprobs: list[TokenLogprob | None] = field(default_factory=list)
    """With ``params.prompt_logprobs``: one per prompt token, filled at prefill; None for the
    first (nothing precedes it)."""

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def next_position(self) -> int:
        """Position of the last emitted token, which the next decode step feeds back in."""
        return len(self.prompt) + len(self.output) - 1


@dataclass
class TokenEvent:
    """``request`` emitted ``token`` this step (``request.done`` says whether it was its last)."""

    request: Request
    token: int
    logprob: TokenLogprob | None = None


class Engine:
    """Continuous-batching generation over a fixed set of KV-cache rows."""

    def __init__(
        self,
        model: MoETransformer,
        *,
        max_batch: int = 8,
        max_len: int | None = None,
        fast: bool = True,
        tune_malloc: bool = True,
    ):
        """``fast``: run ``FastForward`` (fused inference ops, same logits) where it supports
        the model; False runs the model's own forward (the reference). ``tune_malloc``: on a
        CPU, tell glibc to keep freed heap memory (process-wide, see ``infer/memory.py``);
        False leaves the host process's allocator alone."""
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        param = next(model.parameters())
        self.model = model.eval()
        self.config = model.config
        self.device = param.device
        self.max_len = max_len or self.config.max_position_embeddings
        self.max_batch = max_batch
        self.cache = KVCache.for_model(
            self.config, max_batch, self.max_len, dtype=param.dtype, device=self.device
        )
        self.fast = (
            FastForward(model, self.max_len) if fast and FastForward.supports(model) else None
        )
        if tune_malloc and self.device.type == "cpu":
            keep_freed_memory()  # process-wide: temporaries reuse warm heap pages (memory.py)
        self.free_rows: list[int] = list(range(max_batch))
        self.running: dict[int, Request] = {}
        self.waiting: deque[Request] = deque()

    # -- queue -----------------------------------------------------------------------------

    def submit(
        self, prompt: Sequence[int], params: SamplingParams, stop: StopFn | None = None
    ) -> Request:
        """Queue a prompt; raises ValueError for an empty, over-long or out-of-vocabulary one."""
        prompt = [int(t) for t in prompt]
        if not prompt:
            raise ValueError("the prompt is empty (the model needs at least one token)")
        if len(prompt) >= self.max_len:
            raise ValueError(
                f"the prompt has {len(prompt)} tokens; this engine holds at most "
                f"{self.max_len - 1} prompt tokens"
            )
        bad = [t for t in prompt if not 0 <= t < self.config.vocab_size]
        if bad:
            raise ValueError(
                f"token ids {bad[:5]} are outside the vocabulary (0..{self.config.vocab_size - 1})"
            )
        request = Request(prompt, params, stop)
        request.generator = params.make_generator(self.device)
        self.waiting.append(request)
        return request

    def cancel(self, request: Request) -> None:
        """Stop a request now (its row is freed); a finished request is left as it is."""
        if request.done:
            return
        if request in self.waiting:
            self.waiting.remove(request)
        self._finish(request, "cancelled")

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # -- stepping --------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> list[TokenEvent]:
        """Admit waiting requests (prefill) and decode one token for every running one."""
        decoding = list(self.running.values())
        admitted = []
        while self.waiting and self.free_rows:
            request = self.waiting.popleft()
            request.row = self.free_rows.pop(0)
            self.running[request.row] = request
            admitted.append(request)
        events = self._prefill(admitted) if admitted else []
        if decoding:
            events += self._decode(decoding)
        return events

    def _prefill(self, requests: list[Request]) -> list[TokenEvent]:
        """One right-padded forward over the new prompts; logits at every position only when
        some request asked for prompt logprobs (lm_head over B·T rows instead of B)."""
        lengths = [len(r.prompt) for r in requests]
        T = max(lengths)
        ids = torch.tensor([r.prompt + [0] * (T - len(r.prompt)) for r in requests])
        ids = ids.to(self.device)
        want = [b for b, r in enumerate(requests) if r.params.prompt_logprobs is not None]
        self.cache.bind([r.row for r in requests], end=T)
        last = torch.tensor(lengths, device=self.device) - 1
        if self.fast is not None:
            logits = self.fast.prefill(ids, lengths, self.cache, all_logits=bool(want))
        else:
            positions = torch.arange(T, device=self.device).expand(len(requests), T)
            logits = self.model(
                ids, positions=positions, kv_cache=self.cache, logits_at=None if want else last
            ).logits
            logits = logits if want else logits[:, 0]
        if want:
            self._prompt_logprobs([requests[b] for b in want], logits[want])
            logits = logits[torch.arange(len(requests), device=self.device), last]
        return self._sample(requests, logits)

    @staticmethod
    def _prompt_logprobs(requests: list[Request], logits_BTV: torch.Tensor) -> None:
        """Each prompt token's logprob from the logits one position earlier, for all the
        requests in one batched log-softmax."""
        rows = torch.cat([logits_BTV[b, : len(r.prompt) - 1] for b, r in enumerate(requests)])
        tokens = [t for r in requests for t in r.prompt[1:]]
        top_n = [r.params.prompt_logprobs for r in requests for _ in r.prompt[1:]]
        found = iter(token_logprobs(rows, tokens, top_n) if tokens else [])
        for r in requests:
            r.prompt_logprobs = [None] + [next(found) for _ in r.prompt[1:]]

    def _decode(self, requests: list[Request]) -> list[TokenEvent]:
        requests = sorted(requests, key=lambda r: r.row)  # contiguous rows bind as a view
        positions = [r.next_position for r in requests]
        ids = torch.tensor([[r.output[-1]] for r in requests], device=self.device)
        self.cache.bind([r.row for r in requests], end=max(positions) + 1)
        if self.fast is not None:
            return self._sample(requests, self.fast.decode(ids[:, 0], positions, self.cache))
        pos = torch.tensor(positions, device=self.device)[:, None]
        logits_BV = self.model(ids, positions=pos, kv_cache=self.cache).logits[:, -1]
        return self._sample(requests, logits_BV)

    def _sample(self, requests: list[Request], logits_BV: torch.Tensor) -> list[TokenEvent]:
        if all(r.params.plain_argmax for r in requests):
            tokens = logits_BV.argmax(-1).tolist()  # one device sync for the whole batch
        else:
            tokens = sample_batch(
                logits_BV,
                [r.params for r in requests],
                [r.generator for r in requests],
                [r.prompt + r.output for r in requests],
                [r.output for r in requests],
            )
        logprobs = self._logprobs(requests, logits_BV, tokens)
        events = []
        for request, token, logprob in zip(requests, tokens, logprobs, strict=True):
            request.output.append(token)
            if logprob is not None:
                request.logprobs.append(logprob)
            events.append(TokenEvent(request, token, logprob))
            reason = self._finish_reason(request, token)
            if reason is not None:
                self._finish(request, reason)
        return events

    @staticmethod
    def _logprobs(
        requests: list[Request], logits_BV: torch.Tensor, tokens: list[int]
    ) -> list[TokenLogprob | None]:
        """Logprobs for the rows that asked (one batched log-softmax), None for the others."""
        want = [b for b, r in enumerate(requests) if r.params.logprobs is not None]
        out: list[TokenLogprob | None] = [None] * len(requests)
        if want:
            rows = logits_BV[torch.tensor(want, device=logits_BV.device)]
            top_n = [requests[b].params.logprobs or 0 for b in want]
            found = token_logprobs(rows, [tokens[b] for b in want], top_n)
            for b, lp in zip(want, found, strict=True):
                out[b] = lp
        return out

    def _finish_reason(self, request: Request, token: int) -> str | None:
        if token in request.params.stop_token_ids:
            return "stop"
        if request.stop is not None and request.stop(request.output):
            return "stop"
        if len(request.output) >= request.params.max_new_tokens:
            return "length"
        if request.next_position >= self.max_len:
            return "length"  # the last token would not fit the cache to be fed back
        return None

    def _finish(self, request: Request, reason: str) -> None:
        request.finish_reason = reason
        if request.row >= 0 and self.running.get(request.row) is request:
            del self.running[request.row]
            self.free_rows.append(request.row)
            self.free_rows.sort()

    # -- convenience -----------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams | Sequence[SamplingParams],
        stops: Sequence[StopFn | None] | None = None,
    ) -> list[Request]:
        """Complete every prompt (batched up to ``max_batch`` at a time); returns them in order."""
        if isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        stops = stops or [None] * len(prompts)
        requests = [self.submit(p, sp, s) for p, sp, s in zip(prompts, params, stops, strict=True)]
        while not all(r.done for r in requests):
            self.step()
        return requests

    def stream(
        self, prompt: Sequence[int], params: SamplingParams, stop: StopFn | None = None
    ) -> Iterator[int]:
        """Yield one prompt's token ids as they are generated; closing the iterator cancels it."""
        request = self.submit(prompt, params, stop)
        try:
            while not request.done:
                for event in self.step():
                    if event.request is request:
                        yield event.token
        finally:
            self.cancel(request)
