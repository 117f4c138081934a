"""An OpenAI-compatible HTTP server (FastAPI): /v1/models, /v1/completions, /v1/chat/completions.

Every generation goes through one ``BatchingLoop``, so concurrent clients are decoded together
in the same engine steps. ``stream: true`` answers with server-sent events ending in
``data: [DONE]``; ``stream_options.include_usage`` adds a final usage chunk. Each request is
checked before anything is queued: body size (413), JSON, field types and ranges, prompt
length against ``limits.max_prompt_tokens`` and the KV cache (400), the model name (404), the
API key (401). Errors use the OpenAI body shape, and one bad request never affects another.
A client that disconnects mid-stream has its request cancelled (its cache row is freed).

What this module does not know: how tokens are sampled or how the model is built.
"""

from __future__ import annotations

import asyncio
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
from moelab.infer.text import TextGenerator

try:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse
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
        return prompts

    def submit(self, req: GenerationRequest, prompts: list[list[int]]) -> list[Handle]:
        """One handle per (prompt, choice), in OpenAI's choice order."""
        chat = req.messages is not None
        handles = []
        for ids in prompts:
            for params in req.params:
                params = self.gen.params(params, chat)
                session = self.gen.session(params, req.stop)
                handles.append(self.loop.submit(ids, params, session))
        return handles


async def _collect(handle: Handle) -> Update:
    """Wait for a handle's last update; its text is all the updates' text joined."""
    parts = []
    while True:
        update: Update = await handle.queue.get()
        parts.append(update.text)
        if update.done:
            update.text = "".join(parts)
            return update


def _usage(prompts: list[list[int]], updates: list[Update]) -> dict[str, int]:
    """Usage as OpenAI and vLLM count it: each prompt once, however many choices (n)."""
    prompt_tokens = sum(len(p) for p in prompts)
    completion = sum(u.completion_tokens for u in updates)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    }


def _choice(chat: bool, index: int, update: Update) -> dict[str, Any]:
    if chat:
        message = {"role": "assistant", "content": update.text}
        return {"index": index, "message": message, "finish_reason": update.finish_reason}
    return {
        "index": index,
        "text": update.text,
        "logprobs": None,
        "finish_reason": update.finish_reason,
    }


async def _complete(server: Server, req: GenerationRequest, prompts, handles) -> dict[str, Any]:
    chat = req.messages is not None
    try:
        updates = await asyncio.gather(*(_collect(h) for h in handles))
    finally:
        for h in handles:
            server.loop.cancel(h)  # no-op for finished requests; frees rows if we were cancelled
    errors = [u.error for u in updates if u.error]
    if errors:
        raise APIError(500, errors[0], kind="server_error")
    return {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": server.model_name,
        "choices": [_choice(chat, i, u) for i, u in enumerate(updates)],
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

    def chunk(index: int, text: str | None, finish: str | None, first: bool = False) -> bytes:
        if chat:
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            if text:
                delta["content"] = text
            choice = {"index": index, "delta": delta, "finish_reason": finish}
        else:
            choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
        return _sse({**base, "choices": [choice]})

    merged: asyncio.Queue = asyncio.Queue()
    tasks = [asyncio.create_task(_forward(i, h, merged)) for i, h in enumerate(handles)]
    finals: dict[int, Update] = {}
    try:
        if chat:
            for i in range(len(handles)):
                yield chunk(i, None, None, first=True)
        while len(finals) < len(handles):
            index, update = await merged.get()
            if update.error:
                yield _sse(APIError(500, update.error, kind="server_error").body())
                return
            if update.done:
                finals[index] = update
            if update.text:
                yield chunk(index, update.text, None)
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
        return await _complete(server, req, prompts, handles)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await generate(request, parse_completion)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await generate(request, parse_chat)

    return app
