"""Text in, text out around the engine: prompts and chats to ids, ids back to text, stop strings.

``TextSession`` follows one request's output. It is the engine's stop callback: every new
token is decoded incrementally, and the request stops as soon as a stop string appears. It
keeps back text that may still change (an incomplete UTF-8 sequence, or a tail that could be
the start of a stop string), so streamed deltas never have to be taken back, and the final
text is cut before the stop string (as the OpenAI API does). Stop *token* ids end a request in
the engine itself and are never rendered.

``TextGenerator`` joins an engine, a tokenizer and a chat template: the family's stop tokens
(dots: ``<|endofresponse|>`` for chats; both: the EOS) are resolved to ids here. A BOS is
prepended only if the tokenizer has one (neither dots nor OLMoE does).

What this module does not know: HTTP, or how the engine schedules requests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from moelab.infer.chat import ChatTemplate
from moelab.infer.engine import Engine, Request
from moelab.infer.sampling import SamplingParams
from moelab.tokens.tokenizer import Tokenizer


class TextSession:
    """Incremental detokenization of one request, with stop strings."""

    def __init__(
        self, tokenizer: Tokenizer, stop: Sequence[str] = (), stop_ids: Sequence[int] = ()
    ):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.stop_ids = set(stop_ids)
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0
        self.stopped = False
        self.offsets: list[int] = []
        """Per output token: where the text stood before it (OpenAI's ``text_offset``)."""

    def __call__(self, output: list[int]) -> bool:
        """Engine stop callback: take the newest token; True once a stop string appeared."""
        token = output[-1]
        self.offsets.append(len(self.text))
        if self.stopped or token in self.stop_ids:
            return self.stopped
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        cuts = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if cuts:
            text, self.stopped = text[: min(cuts)], True
        self.text = text
        return self.stopped

    def _safe_end(self) -> int:
        """How much of the text can no longer change."""
        if self.stopped:
            return len(self.text)
        end = len(self.text)
        while end > self.sent and self.text[end - 1] == "\ufffd":
            end -= 1  # an incomplete UTF-8 sequence
        for s in self.stop:
            for k in range(min(len(s) - 1, end), 0, -1):
                if self.text[:end].endswith(s[:k]):
                    end -= k
                    break
        return max(end, self.sent)

    def take(self, final: bool = False) -> str:
        """Text not handed out yet (all of it when ``final``)."""
        end = len(self.text) if final else self._safe_end()
        delta, self.sent = self.text[self.sent : end], max(self.sent, end)
        return delta


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int


class TextGenerator:
    """Tokenizer + chat template + engine: the text API used by the CLI and the server."""

    def __init__(self, engine: Engine, tokenizer: Tokenizer, chat_template: ChatTemplate):
        self.engine = engine
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        eos = [engine.config.eos_token_id, tokenizer.eos_id]
        self.base_stop_ids = sorted({t for t in eos if t is not None})
        chat = [tokenizer.hf.token_to_id(s) for s in chat_template.stop_tokens]
        self.chat_stop_ids = sorted(set(self.base_stop_ids) | {t for t in chat if t is not None})

    def prompt_ids(self, prompt: str) -> list[int]:
        bos = [self.tokenizer.bos_id] if self.tokenizer.bos_id is not None else []
        return bos + self.tokenizer.encode(prompt)

    def chat_ids(self, messages: list[dict]) -> list[int]:
        """The rendered chat, with the template's special-token strings mapped to their ids."""
        return self.tokenizer.encode(self.chat_template.render(messages), parse_special=True)

    def params(self, params: SamplingParams, chat: bool) -> SamplingParams:
        """``params`` with the family's stop ids added."""
        stop = self.chat_stop_ids if chat else self.base_stop_ids
        extra = tuple(t for t in stop if t not in params.stop_token_ids)
        return dataclasses.replace(params, stop_token_ids=(*params.stop_token_ids, *extra))

    def token_text(self, token: int) -> str:
        """One token as text, special tokens included (what a logprobs entry shows)."""
        return self.tokenizer.decode([token], skip_special_tokens=False)

    def session(self, params: SamplingParams, stop: Sequence[str] = ()) -> TextSession:
        return TextSession(self.tokenizer, stop, params.stop_token_ids)

    def complete(
        self,
        prompts: Sequence[list[int]],
        params: SamplingParams,
        stop: Sequence[str] = (),
        chat: bool = False,
    ) -> list[Completion]:
        """Complete tokenized prompts together (batched by the engine)."""
        params = self.params(params, chat)
        sessions = [self.session(params, stop) for _ in prompts]
        requests = self.engine.generate(prompts, params, sessions)
        return [_completion(r, s) for r, s in zip(requests, sessions, strict=True)]

    def stream(
        self,
        prompt: list[int],
        params: SamplingParams,
        stop: Sequence[str] = (),
        chat: bool = False,
    ) -> Iterator[str]:
        """Yield text deltas of one completion as tokens arrive."""
        params = self.params(params, chat)
        session = self.session(params, stop)
        for _ in self.engine.stream(prompt, params, session):
            if delta := session.take():
                yield delta
        if delta := session.take(final=True):
            yield delta


def _completion(request: Request, session: TextSession) -> Completion:
    return Completion(
        text=session.text,
        token_ids=list(request.output),
        finish_reason=request.finish_reason or "stop",
        prompt_tokens=len(request.prompt),
    )
