"""An OpenAI-compatible HTTP server (FastAPI): /v1/models, /v1/completions, /v1/chat/completions.

Every generation goes through one ``BatchingLoop``, so concurrent clients are decoded together
in the same engine steps. ``stream: true`` answers with server-sent events ending in
``data: [DONE]``; ``stream_options.include_usage`` adds a final usage chunk. Each request is
checked before anything is queued: body size (413), JSON, field types and ranges, prompt
length against ``limits.max_prompt_tokens``, prompt + max_tokens against the KV cache (400;
a request that gave no max_tokens is shortened to fit instead), the model name (404), the API
key (401). Errors use the OpenAI body shape, and one bad request never affects another.
A client that disconnects, streaming or not, has its requests cancelled at once (their cache
rows are freed for the others).

What this module does not know: how tokens are sampled or how the model is built.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from moelab.infer.batcher import BatchingLoop, Handle, Update
from moelab.infer.config import ServeConfig
from moelab.infer.protocol import (
    APIError,
    GenerationRequest,
    parse_chat,
    parse_completion,
    parse_json,
)
from moelab.infer.sampling import SamplingParams, TokenLogprob
from moelab.infer.text import TextGenerator

try:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response, StreamingResponse
except ImportError as _err:  # pragma: no cover - depends on the environment
    raise ImportError("moelab serve needs FastAPI: pip install 'moelab[serve]'") from _err


class Server:
    """State shared by the routes: the generator, its batching loop, config and model id."""

    def __init__(self, generator: TextGenerator, config: ServeConfig, model_name: str):
        self.gen, self.config, self.model_name = generator, config, model_name
        self.loop = BatchingLoop(generator.engine)
        self.created = int(time.time())

    # -- checks ----------------------------------------------------------------------------

    def check_auth(self, request: Request) -> None:
        key = self.config.api_key
        if not key:
            return
        given = request.headers.get("authorization", "")
        if not secrets.compare_digest(given.encode(), f"Bearer {key}".encode()):
            raise APIError(401, "invalid or missing API key", code="invalid_api_key")

    async def read_body(self, request: Request) -> dict[str, Any]:
        limit = self.config.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise APIError(413, f"request body over {limit} bytes", code="body_too_large")
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > limit:
                raise APIError(413, f"request body over {limit} bytes", code="body_too_large")
        return parse_json(bytes(raw), self.config.limits)

    def check_model(self, name: str) -> None:
        if name != self.model_name:
            raise APIError(
                404,
                f"model {name!r} does not exist; this server has {self.model_name!r}",
                param="model",
                code="model_not_found",
            )

    def check_prompt(self, ids: list[int]) -> None:
        limit, cache = self.config.limits.max_prompt_tokens, self.gen.engine.max_len
        if not ids:
            raise APIError(400, "the prompt is empty", param="prompt")
        if len(ids) > limit or len(ids) >= cache:
            raise APIError(
                400,
                f"the prompt has {len(ids)} tokens; the limit is {min(limit, cache - 1)}",
                param="prompt",
                code="context_length_exceeded",
            )
        vocab = self.gen.engine.config.vocab_size
        if any(not 0 <= t < vocab for t in ids):
            raise APIError(400, f"token ids must be in 0..{vocab - 1}", param="prompt")

    # -- generation ------------------------------------------------------------------------

    def prompt_ids(self, req: GenerationRequest) -> list[list[int]]:
        if req.messages is not None:
            try:
                prompts = [self.gen.chat_ids(req.messages)]
            except ValueError as err:
                raise APIError(400, str(err), param="messages") from None
        else:
            prompts = [p if isinstance(p, list) else self.gen.prompt_ids(p) for p in req.prompts]
        for ids in prompts:
            self.check_prompt(ids)
            if req.max_tokens_given:
                self.check_room(ids, req.params[0].max_new_tokens)
        return prompts

    def check_room(self, ids: list[int], max_tokens: int) -> None:
        """Prompt + max_tokens must fit the KV cache row, or nothing is generated."""
        context = self.gen.engine.max_len
        if len(ids) + max_tokens > context:
            raise APIError(
                400,
                f"this server's context is {context} tokens; the prompt has {len(ids)} and "
                f"max_tokens asks for {max_tokens} more ({len(ids) + max_tokens} in all). "
                "Shorten the prompt or lower max_tokens.",
                param="max_tokens",
                code="context_length_exceeded",
            )

    def fit(self, params: SamplingParams, ids: list[int], given: bool) -> SamplingParams:
        """A default max_tokens is cut to what the cache row holds after the prompt."""
        room = self.gen.engine.max_len - len(ids)
        if given or params.max_new_tokens <= room:
            return params
        return dataclasses.replace(params, max_new_tokens=room)

    def submit(self, req: GenerationRequest, prompts: list[list[int]]) -> list[Handle]:
        """One handle per (prompt, choice), in OpenAI's choice order."""
        chat = req.messages is not None
        handles = []
        for ids in prompts:
            for params in req.params:
                params = self.gen.params(self.fit(params, ids, req.max_tokens_given), chat)
                session = self.gen.session(params, req.stop)
                handles.append(self.loop.submit(ids, params, session))
        return handles

    def echoes(self, req: GenerationRequest, prompts: list[list[int]]) -> list[str]:
        """Per prompt, the text ``echo`` puts before the completion ("" without echo)."""
        if not req.echo:
            return [""] * len(prompts)
        return [
            p if isinstance(p, str) else self.gen.tokenizer.decode(ids)
            for p, ids in zip(req.prompts, prompts, strict=True)
        ]

    def logprobs_body(self, chat: bool, lps: list[TokenLogprob], offsets: list[int], base: int):
        """OpenAI's logprobs object: chat's ``content`` list, or completions' four lists."""
        text = self.gen.token_text
        if chat:
            return {
                "content": [
                    {
                        **_entry(text(lp.token), lp.logprob),
                        "top_logprobs": [_entry(text(t), v) for t, v in lp.top],
                    }
                    for lp in lps
                ]
            }
        return {
            "tokens": [text(lp.token) for lp in lps],
            "token_logprobs": [lp.logprob for lp in lps],
            "top_logprobs": [_top_dict(text, lp.top) for lp in lps],
            "text_offset": [base + o for o in offsets],
        }

    def echo_logprobs(self, ids: list[int], lps: list[TokenLogprob | None] | None) -> dict:
        """Completions' four logprobs lists for the echoed prompt (the first token's null).

        Text offsets are the lengths of the decoded prompt prefixes (one batched decode).
        """
        tok = self.gen.tokenizer
        prefixes = tok.hf.decode_batch(
            [ids[:i] for i in range(len(ids))], skip_special_tokens=False
        )
        lps = lps or [None] * len(ids)
        text = self.gen.token_text
        return {
            "tokens": [text(t) for t in ids],
            "token_logprobs": [None if lp is None else lp.logprob for lp in lps],
            "top_logprobs": [None if lp is None else _top_dict(text, lp.top) for lp in lps],
            "text_offset": [len(p) for p in prefixes],
        }


def _join_logprobs(echoed: dict | None, generated: dict | None) -> dict | None:
    """The prompt's lists followed by the completion's (either may be missing)."""
    if echoed is None or generated is None:
        return echoed or generated
    return {key: echoed[key] + generated[key] for key in echoed}


def _top_dict(text, top: list[tuple[int, float]]) -> dict[str, float]:
    """Completions key top tokens by text; two ids with one text keep the likelier."""
    out: dict[str, float] = {}
    for token, logprob in top:
        out.setdefault(text(token), logprob)
    return out


def _entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


async def _collect(handle: Handle) -> Update:
    """Wait for a handle's last update; it comes back holding every update's text and logprobs."""
    parts, logprobs, offsets, prompt_logprobs = [], [], [], None
    while True:
        update: Update = await handle.queue.get()
        parts.append(update.text)
        logprobs += update.logprobs
        offsets += update.offsets
        prompt_logprobs = prompt_logprobs or update.prompt_logprobs
        if update.done:
            update.text, update.logprobs, update.offsets = "".join(parts), logprobs, offsets
            update.prompt_logprobs = prompt_logprobs
            return update


async def _disconnected(request: Request) -> None:
    """Return once the client has gone (the body was read, so only a disconnect can come)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _usage(prompts: list[list[int]], updates: list[Update]) -> dict[str, int]:
    """Usage as OpenAI and vLLM count it: each prompt once, however many choices (n)."""
    prompt_tokens = sum(len(p) for p in prompts)
    completion = sum(u.completion_tokens for u in updates)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    }


def _choice(
    server: Server, req: GenerationRequest, index: int, update: Update, echo: str, ids: list[int]
) -> dict[str, Any]:
    chat = req.messages is not None
    logprobs = None
    if req.params[0].logprobs is not None:
        logprobs = server.logprobs_body(chat, update.logprobs, update.offsets, len(echo))
        if req.echo:
            logprobs = _join_logprobs(server.echo_logprobs(ids, update.prompt_logprobs), logprobs)
    if chat:
        message = {"role": "assistant", "content": update.text}
        return {
            "index": index,
            "message": message,
            "logprobs": logprobs,
            "finish_reason": update.finish_reason,
        }
    return {
        "index": index,
        "text": echo + update.text,
        "logprobs": logprobs,
        "finish_reason": update.finish_reason,
    }


async def _complete(
    server: Server, req: GenerationRequest, prompts, handles, request: Request
) -> dict[str, Any] | Response:
    chat = req.messages is not None
    collect = asyncio.ensure_future(asyncio.gather(*(_collect(h) for h in handles)))
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({collect, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not collect.done():  # the client hung up: stop generating for it
            collect.cancel()
            return Response(status_code=499)
        updates = collect.result()
    finally:
        gone.cancel()
        for h in handles:
            server.loop.cancel(h)  # no-op for finished requests; frees rows of abandoned ones
    errors = [u.error for u in updates if u.error]
    if errors:
        raise APIError(500, errors[0], kind="server_error")
    echoes = server.echoes(req, prompts)
    return {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": server.model_name,
        "choices": [
            _choice(server, req, i, u, echoes[i // len(req.params)], prompts[i // len(req.params)])
            for i, u in enumerate(updates)
        ],
        "usage": _usage(prompts, updates),
    }


def _sse(data: Any) -> bytes:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def _stream(server: Server, req: GenerationRequest, prompts, handles) -> AsyncIterator[bytes]:
    chat = req.messages is not None
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    base = {
        "id": rid,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": server.model_name,
    }

    echoes = server.echoes(req, prompts)
    offset0 = [len(echoes[i // len(req.params)]) for i in range(len(handles))]
    want_logprobs = req.params[0].logprobs is not None

    echo_waits = req.echo and want_logprobs  # the echo chunk carries the prompt's logprobs

    def chunk(
        index: int, text: str | None, finish: str | None, first: bool = False, update=None
    ) -> bytes:
        logprobs = None
        if want_logprobs and update is not None and update.logprobs:
            logprobs = server.logprobs_body(chat, update.logprobs, update.offsets, offset0[index])
        if echo_waits and first:
            ids = prompts[index // len(req.params)]
            logprobs = server.echo_logprobs(ids, None if update is None else update.prompt_logprobs)
        if chat:
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            if text:
                delta["content"] = text
            choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        else:
            choice = {
                "index": index,
                "text": text or "",
                "logprobs": logprobs,
                "finish_reason": finish,
            }
        return _sse({**base, "choices": [choice]})

    merged: asyncio.Queue = asyncio.Queue()
    tasks = [asyncio.create_task(_forward(i, h, merged)) for i, h in enumerate(handles)]
    finals: dict[int, Update] = {}
    try:
        if chat:
            for i in range(len(handles)):
                yield chunk(i, None, None, first=True)
        elif req.echo and not echo_waits:
            for i in range(len(handles)):
                yield chunk(i, echoes[i // len(req.params)], None)
        while len(finals) < len(handles):
            index, update = await merged.get()
            if update.error:
                yield _sse(APIError(500, update.error, kind="server_error").body())
                return
            if echo_waits and update.prompt_logprobs is not None:  # after prefill: echo first
                yield chunk(index, echoes[index // len(req.params)], None, True, update)
            if update.done:
                finals[index] = update
            if update.text or (want_logprobs and update.logprobs):
                yield chunk(index, update.text, None, update=update)
            if update.done:
                yield chunk(index, None, update.finish_reason)
        if req.include_usage:
            usage = _usage(prompts, list(finals.values()))
            yield _sse({**base, "choices": [], "usage": usage})
        yield b"data: [DONE]\n\n"
    finally:
        for task in tasks:
            task.cancel()
        for h in handles:
            server.loop.cancel(h)


async def _forward(index: int, handle: Handle, merged: asyncio.Queue) -> None:
    while True:
        update = await handle.queue.get()
        await merged.put((index, update))
        if update.done:
            return


def create_app(generator: TextGenerator, config: ServeConfig, model_name: str) -> FastAPI:
    """The FastAPI app; the batching loop starts and stops with the app's lifespan."""
    server = Server(generator, config, model_name)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        server.loop.start()
        try:
            yield
        finally:
            server.loop.stop()

    app = FastAPI(title="moelab", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = server

    @app.exception_handler(APIError)
    async def api_error(_request: Request, err: APIError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        engine, stats = generator.engine, server.loop.stats
        return {
            "status": "ok",
            "running": len(engine.running),
            "waiting": len(engine.waiting),
            "free_rows": len(engine.free_rows),
            "max_batch": engine.max_batch,
            "steps": stats.steps,
            "tokens": stats.tokens,
            "max_running": stats.max_running,
            "cancelled": stats.cancelled,
        }

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        server.check_auth(request)
        card = {
            "id": model_name,
            "object": "model",
            "created": server.created,
            "owned_by": "moelab",
        }
        return {"object": "list", "data": [card]}

    async def generate(request: Request, parse) -> Any:
        server.check_auth(request)
        body = await server.read_body(request)
        req = parse(body, config.limits, config.default_max_tokens)
        server.check_model(req.model)
        prompts = server.prompt_ids(req)
        handles = server.submit(req, prompts)
        if req.stream:
            return StreamingResponse(
                _stream(server, req, prompts, handles), media_type="text/event-stream"
            )
        return await _complete(server, req, prompts, handles, request)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await generate(request, parse_completion)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await generate(request, parse_chat)

    return app
