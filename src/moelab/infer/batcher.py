"""The server's background batching loop: one thread owns the engine, requests come and go.

HTTP handlers run on the asyncio event loop; the model runs on this loop's thread, so a long
decode never blocks the server from accepting or refusing other requests. Handlers ``submit``
a prompt and get a ``Handle`` whose asyncio queue receives one ``Update`` per generated token
(with the text that became final, decoded in the engine thread by the request's
``TextSession``). Every engine step decodes all running requests together, whichever client
sent them, and admits newly arrived ones between steps (continuous batching).

Commands cross from the event loop to the thread through a ``queue.Queue``; updates cross back
through ``loop.call_soon_threadsafe``. Only the thread touches the engine.

What this module does not know: HTTP, JSON or the OpenAI API.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass, field

from moelab.infer.engine import Engine, Request
from moelab.infer.sampling import SamplingParams, TokenLogprob
from moelab.infer.text import TextSession

log = logging.getLogger(__name__)


@dataclass
class Update:
    text: str
    """Text that became final with this token (may be empty)."""
    done: bool = False
    finish_reason: str | None = None
    completion_tokens: int = 0
    error: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    """The logprobs of the tokens this update covers (when the request asked for them)."""
    offsets: list[int] = field(default_factory=list)
    """Their text offsets in the completion, one per entry of ``logprobs``."""
    prompt_logprobs: list[TokenLogprob | None] | None = None
    """On a request's first update, when it asked: one per prompt token (None for the first)."""


@dataclass(eq=False)
class Handle:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    prompt: list[int]
    params: SamplingParams
    session: TextSession
    request: Request | None = None
    cancelled: bool = False
    text: list[str] = field(default_factory=list)

    def post(self, update: Update) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, update)
        except RuntimeError:  # the event loop is gone (server shutting down)
            pass


@dataclass
class LoopStats:
    steps: int = 0
    tokens: int = 0
    max_running: int = 0
    """Most requests decoded together in one step since start."""
    cancelled: int = 0
    """Requests stopped before their end (a client hung up)."""


class BatchingLoop:
    def __init__(self, engine: Engine):
        self.engine = engine
        self.stats = LoopStats()
        self._inbox: queue.Queue = queue.Queue()
        self._handles: dict[int, Handle] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="moelab-batching", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._inbox.put(None)
        self._thread.join(timeout)

    def submit(self, prompt: list[int], params: SamplingParams, session: TextSession) -> Handle:
        """Queue a request (call from the event loop); read updates from ``handle.queue``."""
        handle = Handle(asyncio.get_running_loop(), asyncio.Queue(), prompt, params, session)
        self._inbox.put(("submit", handle))
        return handle

    def cancel(self, handle: Handle) -> None:
        self._inbox.put(("cancel", handle))

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._drain(block=not self.engine.has_work)
            if self.engine.has_work:
                try:
                    self._step()
                except Exception as err:  # noqa: BLE001 - report to every client, keep serving
                    log.exception("engine step failed")
                    self._fail_all(f"internal error during generation: {err}")

    def _drain(self, block: bool) -> None:
        try:
            item = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while item is not None:
            self._handle_command(*item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _handle_command(self, kind: str, handle: Handle) -> None:
        if kind == "cancel":
            handle.cancelled = True
            if handle.request is not None and not handle.request.done:
                self.stats.cancelled += 1
                self.engine.cancel(handle.request)
                self._handles.pop(handle.request.id, None)
            return
        if handle.cancelled:
            return
        try:
            handle.request = self.engine.submit(handle.prompt, handle.params, handle.session)
        except ValueError as err:
            handle.post(Update("", done=True, error=str(err)))
            return
        self._handles[handle.request.id] = handle

    def _step(self) -> None:
        events = self.engine.step()
        self.stats.steps += 1
        self.stats.tokens += len(events)
        self.stats.max_running = max(self.stats.max_running, len(events))
        for event in events:
            handle = self._handles.get(event.request.id)
            if handle is None:
                continue
            request = event.request
            update = Update(
                handle.session.take(final=request.done),
                done=request.done,
                finish_reason=request.finish_reason,
                completion_tokens=len(request.output),
            )
            if event.logprob is not None:
                update.logprobs = [event.logprob]
                update.offsets = handle.session.offsets[-1:]
            if request.params.prompt_logprobs is not None and len(request.output) == 1:
                update.prompt_logprobs = request.prompt_logprobs
            if request.done:
                del self._handles[request.id]
            handle.post(update)

    def _fail_all(self, message: str) -> None:
        for handle in list(self._handles.values()):
            if handle.request is not None:
                self.engine.cancel(handle.request)
            handle.post(Update("", done=True, error=message))
        self._handles.clear()
