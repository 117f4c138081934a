"""Schedule-level overlap (``parallel.pp_overlap_f_b``): one micro batch's forward runs at the
same time as another's backward, so one's MoE all-to-alls hide under the other's compute.

DualPipeV (dots.llm1 / DeepSeek-V3's schedule) emits ``OVERLAP_F_B`` actions: a forward of one
stage and a full backward of the other stage this rank holds, on different micro batches. The
runtime's default runs the two one after the other; ``overlap_f_b`` (registered with
``register_custom_function``) runs the backward in a second thread while the calling thread runs
the forward. Whenever one thread waits in an all-to-all (the GIL is released there, and in every
torch kernel), the other computes.

Collectives: both threads talk to the same EP peers, and two threads issuing collectives on one
process group could order them differently on two ranks. So every backward all-to-all goes on a
second EP group over the same ranks (``expert.EPGroups``); each group then sees its collectives in
schedule order on every rank, because forwards never run concurrently with forwards, nor
backwards with backwards. Pipeline send/recv stay with the scheduler: this function only waits for
the receives it posted before, as the runtime does.

Why threads and not phases interleaved by hand (DeepSeek's DualPipe, torchtitan's barrier
hooks): the stage code stays the runtime's own ``forward_one_chunk`` / ``backward_one_chunk``,
so FSDP, ``ep_overlap_chunks``, the aux-loss attach and the loss bookkeeping need no second
code path; correctness needs only that the two threads share no collective group.

Run one after the other instead (as the default) when the backward is its stage's last (FSDP's
gradient reduce-scatter and reshard run then, on the data-parallel group the forward may use)
or the forward is its stage's first (lazy init, first all-gather). DualPipeV's steady state,
where the overlapped actions live, has neither except at its edges.

With activation checkpointing: a checkpointed block's recompute runs inside the backward, so
its forward all-to-alls go on the backward's group like the rest of the backward thread's
(``EPGroups.current``); the weight passes run outside the pairs (``pipeline.Stage``). Tested:
3 trainer steps equal the run without checkpointing exactly.

``sub_action_role`` says which sub-action the current thread runs ("F", "B" or None), for
probes (``tests/parallel/test_overlap_f_b.py``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.distributed.pipelining.schedules import (
    _Action,
    _PipelineContext,
    _wait_batch_p2p,
)

_ROLE = threading.local()


def sub_action_role() -> str | None:
    """The sub-action this thread runs: "F" (an OVERLAP_F_B's forward), "B" (its backward), None."""
    return getattr(_ROLE, "value", None)


@dataclass(frozen=True)
class _CallerState:
    """What is thread-local but must hold in both threads: autocast, grad mode, and on an
    accelerator the current device and stream (a new thread starts on device 0)."""

    device: torch.device
    autocast: tuple[bool, torch.dtype]
    grad: bool
    stream: object | None

    @classmethod
    def capture(cls, device: torch.device) -> _CallerState:
        t = device.type
        stream = torch.accelerator.current_stream(device) if t != "cpu" else None
        return cls(
            device,
            (torch.is_autocast_enabled(t), torch.get_autocast_dtype(t)),
            torch.is_grad_enabled(),
            stream,
        )


@contextmanager
def _as(role: str, state: _CallerState):
    """Run as ``role`` under the caller's thread-local state."""
    previous = sub_action_role()
    _ROLE.value = role
    if state.stream is not None:  # not exercised on CPU: written for GPU, untested there
        if state.device.index is not None:
            torch.accelerator.set_device_index(state.device.index)
        torch.accelerator.set_stream(state.stream)
    try:
        enabled, dtype = state.autocast
        with (
            torch.autocast(state.device.type, dtype=dtype, enabled=enabled),
            torch.set_grad_enabled(state.grad),
        ):
            yield
    finally:
        _ROLE.value = previous


def make_overlap_f_b(concurrent: bool = True) -> Callable[[_Action, _PipelineContext], None]:
    """The OVERLAP_F_B function; ``concurrent=False`` runs F then B (the same bookkeeping and
    roles, no thread): the probe test's control."""

    def overlap_f_b(action: _Action, ctx: _PipelineContext) -> None:
        _run(action, ctx, concurrent)

    return overlap_f_b


def runs_together(action: _Action, sched) -> bool:
    """Whether ``overlap_f_b`` runs this action's two sub-actions at the same time (before it
    ran): not when the backward is its stage's last or the forward its stage's first."""
    fwd, bwd = action.sub_actions
    last_backward = sched.backward_counter[bwd.stage_index] + 1 == sched._n_microbatches
    return fwd.stage_index != bwd.stage_index and fwd.microbatch_index > 0 and not last_backward


def _run(action: _Action, ctx: _PipelineContext, concurrent: bool) -> None:
    sched = ctx.schedule_ref
    together = concurrent and runs_together(action, sched)
    stages = {s.stage_index: s for s in sched._stages}
    fwd, bwd = action.sub_actions
    f_idx, f_mb, b_idx, b_mb = (
        fwd.stage_index,
        fwd.microbatch_index,
        bwd.stage_index,
        bwd.microbatch_index,
    )
    f_stage, b_stage = stages[f_idx], stages[b_idx]
    # The receives the scheduler posted for both (none between two stages on this rank).
    if not f_stage.is_first and f_idx - 1 not in stages:
        _wait_batch_p2p(sched.fwd_recv_ops.pop((f_idx, f_mb)))
    if not b_stage.is_last and b_idx + 1 not in stages:
        _wait_batch_p2p(sched.bwd_recv_ops.pop((b_idx, b_mb)))
    sched._assert_unsharded(f_stage)
    sched._assert_unsharded(b_stage)
    sched.backward_counter[b_idx] += 1
    last_backward = sched.backward_counter[b_idx] == sched._n_microbatches
    state = _CallerState.capture(f_stage.device)

    def forward() -> None:
        with _as("F", state):
            output = f_stage.forward_one_chunk(f_mb, ctx.arg_mbs[f_mb], ctx.kwarg_mbs[f_mb])
            sched._maybe_compute_loss(f_stage, output, ctx.target_mbs, f_mb)
        if f_idx + 1 in stages:  # the V's turn: the next stage is on this rank
            stages[f_idx + 1].set_local_fwd_input(output, f_mb)

    def backward() -> None:
        with _as("B", state):
            loss = sched._maybe_get_loss(b_stage, b_mb)
            b_stage.backward_one_chunk(
                b_mb, loss=loss, full_backward=True, last_backward=last_backward
            )
        if b_idx - 1 in stages:
            stages[b_idx - 1].set_local_bwd_input(b_stage.get_local_bwd_output(b_mb), b_mb)

    if together:
        _together(forward, backward)
    else:
        forward()
        backward()


def _together(forward: Callable[[], None], backward: Callable[[], None]) -> None:
    """``backward`` in a second thread while this one runs ``forward``; re-raise its error."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            backward()
        except BaseException as err:  # noqa: BLE001 - handed to the calling thread
            errors.append(err)

    thread = threading.Thread(target=target, name="moelab-overlap-f-b-backward", daemon=True)
    thread.start()
    try:
        forward()
    finally:
        thread.join()
    if errors:
        raise errors[0]
