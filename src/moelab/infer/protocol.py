"""OpenAI request bodies → typed requests, and OpenAI-style errors.

Bodies are checked by hand rather than by pydantic so every refusal carries the OpenAI error
shape (``{"error": {"message", "type", "param", "code"}}``) and names the offending field.
Implemented OpenAI fields: ``max_tokens``/``max_completion_tokens``, ``n``, ``temperature``,
``top_p``, ``seed``, ``stop``, ``stream``/``stream_options.include_usage``,
``presence_penalty``/``frequency_penalty``, ``logprobs`` (completions: an integer, top-N;
chat: a boolean with ``top_logprobs``) and ``echo`` (completions; with ``logprobs`` the prompt
tokens' logprobs come first, the first token's null, as OpenAI and vLLM do). ``top_k`` and ``repetition_penalty`` are
accepted as vLLM does. Fields nobody reads (``user``, ``logit_bias``...) are ignored, as
other OpenAI-compatible servers do.

What this module does not know: the model, the tokenizer or the network.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from moelab.infer.chat import check_messages
from moelab.infer.config import ServeLimits
from moelab.infer.sampling import SamplingParams


class APIError(Exception):
    """An error the client caused (4xx) or the server hit (5xx), in the OpenAI shape."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = (
            status,
            message,
            param,
            code,
            kind,
        )

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


@dataclass
class GenerationRequest:
    """What a completions or chat request asks for, checked."""

    model: str
    params: list[SamplingParams]
    """One per choice (n of them): the same except for the seed."""
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    max_tokens_given: bool = True
    """False when the body had no max_tokens: the server may shorten it to fit the context."""
    echo: bool = False
    """Completions: the prompt text comes back before the completion."""
    prompts: list[str | list[int]] = field(default_factory=list)
    """Completions: text prompts or token-id prompts."""
    messages: list[dict[str, str]] | None = None
    """Chat: the conversation."""


def parse_json(raw: bytes, limits: ServeLimits) -> dict[str, Any]:
    if len(raw) > limits.max_body_bytes:
        raise APIError(
            413, f"request body over {limits.max_body_bytes} bytes", code="body_too_large"
        )
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise APIError(400, f"request body is not valid JSON: {err}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "request body must be a JSON object")
    return body


def _get(body: dict, name: str, types: type | tuple[type, ...], default: Any, what: str) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in _tuple(types))
    if not ok:
        raise APIError(400, f"'{name}' must be {what}, got {json.dumps(value)[:60]}", param=name)
    return value


def _tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _sampling(
    body: dict, limits: ServeLimits, default_max_tokens: int, logprobs: int | None
) -> list[SamplingParams]:
    max_tokens = _get(body, "max_tokens", int, None, "an integer")
    max_tokens = _get(body, "max_completion_tokens", int, max_tokens, "an integer")
    max_tokens = default_max_tokens if max_tokens is None else max_tokens
    if not 1 <= max_tokens <= limits.max_tokens:
        raise APIError(
            400, f"'max_tokens' must be between 1 and {limits.max_tokens}", param="max_tokens"
        )
    n = _get(body, "n", int, 1, "an integer")
    if not 1 <= n <= limits.max_n:
        raise APIError(400, f"'n' must be between 1 and {limits.max_n}", param="n")
    seed = _get(body, "seed", int, None, "an integer")
    penalties = {}
    for name in ("presence_penalty", "frequency_penalty"):
        penalties[name] = float(_get(body, name, (int, float), 0.0, "a number"))
        if not -2 <= penalties[name] <= 2:
            raise APIError(400, f"'{name}' must be between -2 and 2", param=name)
    kwargs = dict(
        **penalties,
        logprobs=logprobs,
        max_new_tokens=max_tokens,
        temperature=float(_get(body, "temperature", (int, float), 1.0, "a number")),
        top_p=float(_get(body, "top_p", (int, float), 1.0, "a number")),
        top_k=_get(body, "top_k", int, 0, "an integer"),
        repetition_penalty=float(_get(body, "repetition_penalty", (int, float), 1.0, "a number")),
    )
    if not 0 <= kwargs["temperature"] <= 2:
        raise APIError(400, "'temperature' must be between 0 and 2", param="temperature")
    try:
        return [SamplingParams(**kwargs, seed=None if seed is None else seed + i) for i in range(n)]
    except ValueError as err:
        raise APIError(400, str(err), param=str(err).split(" ")[0]) from None


def _stop(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > 4:
        raise APIError(400, "'stop' must be a string or a list of up to 4 strings", param="stop")
    return [s for s in stop if s]


def _completion_logprobs(body: dict, limits: ServeLimits) -> int | None:
    """Completions: ``logprobs`` is null or how many top tokens to list per position."""
    n = _get(body, "logprobs", int, None, "an integer or null")
    if n is not None and not 0 <= n <= limits.max_logprobs:
        raise APIError(
            400, f"'logprobs' must be between 0 and {limits.max_logprobs}", param="logprobs"
        )
    return n


def _chat_logprobs(body: dict, limits: ServeLimits) -> int | None:
    """Chat: ``logprobs: true`` turns them on, ``top_logprobs`` says how many top tokens."""
    on = _get(body, "logprobs", bool, False, "a boolean")
    top = _get(body, "top_logprobs", int, None, "an integer")
    if top is not None and not 0 <= top <= limits.max_logprobs:
        raise APIError(
            400, f"'top_logprobs' must be between 0 and {limits.max_logprobs}", "top_logprobs"
        )
    if top is not None and not on:
        raise APIError(400, "'top_logprobs' needs 'logprobs' set to true", param="top_logprobs")
    return (top or 0) if on else None


def _common(
    body: dict, limits: ServeLimits, default_max_tokens: int, logprobs: int | None
) -> GenerationRequest:
    model = body.get("model")
    if model is None:
        raise APIError(400, "missing required field 'model'", param="model")
    if not isinstance(model, str):
        raise APIError(400, "'model' must be a string", param="model")
    stream = _get(body, "stream", bool, False, "a boolean")
    options = _get(body, "stream_options", dict, {}, "an object")
    return GenerationRequest(
        model=model,
        params=_sampling(body, limits, default_max_tokens, logprobs),
        stop=_stop(body),
        stream=stream,
        include_usage=bool(options.get("include_usage", False)),
        max_tokens_given=any(
            body.get(k) is not None for k in ("max_tokens", "max_completion_tokens")
        ),
    )


def _prompts(value: Any, limits: ServeLimits) -> list[str | list[int]]:
    """A string, a list of strings, a list of token ids, or a list of lists of token ids."""
    if isinstance(value, str):
        prompts: list = [value]
    elif isinstance(value, list) and value and all(isinstance(t, int) for t in value):
        prompts = [value]
    elif isinstance(value, list) and value and all(isinstance(p, str | list) for p in value):
        prompts = value
    else:
        raise APIError(
            400, "'prompt' must be a string, a list of strings or a list of token ids", "prompt"
        )
    for p in prompts:
        if isinstance(p, list) and not all(
            isinstance(t, int) and not isinstance(t, bool) for t in p
        ):
            raise APIError(400, "token-id prompts must be lists of integers", param="prompt")
    if len(prompts) > limits.max_prompts:
        raise APIError(400, f"at most {limits.max_prompts} prompts per request", param="prompt")
    return prompts


def parse_completion(body: dict, limits: ServeLimits, default_max_tokens: int) -> GenerationRequest:
    if "prompt" not in body:
        raise APIError(400, "missing required field 'prompt'", param="prompt")
    logprobs = _completion_logprobs(body, limits)
    request = _common(body, limits, default_max_tokens, logprobs)
    request.echo = _get(body, "echo", bool, False, "a boolean")
    if request.echo and logprobs is not None:  # prompt logprobs, with the same top-N
        request.params = [dataclasses.replace(p, prompt_logprobs=logprobs) for p in request.params]
    request.prompts = _prompts(body["prompt"], limits)
    if len(request.prompts) * len(request.params) > limits.max_prompts * limits.max_n:
        raise APIError(400, "too many prompts × n in one request", param="n")
    return request


def parse_chat(body: dict, limits: ServeLimits, default_max_tokens: int) -> GenerationRequest:
    if "messages" not in body:
        raise APIError(400, "missing required field 'messages'", param="messages")
    request = _common(body, limits, default_max_tokens, _chat_logprobs(body, limits))
    messages = body["messages"]
    if isinstance(messages, list):  # content given as a list of text parts
        messages = [_flatten_content(m) for m in messages]
    try:
        request.messages = check_messages(messages)
    except ValueError as err:
        raise APIError(400, str(err), param="messages") from None
    return request


def _flatten_content(message: Any) -> Any:
    if not isinstance(message, dict) or not isinstance(message.get("content"), list):
        return message
    parts = message["content"]
    if not all(isinstance(p, dict) and p.get("type") == "text" for p in parts):
        return message  # refused by check_messages: only text is supported
    return {**message, "content": "".join(str(p.get("text", "")) for p in parts)}
