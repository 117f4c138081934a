"""Expert parallelism: experts split over the ``ep`` ranks, tokens exchanged by all-to-all.

``AllToAllDispatcher`` has the interface of ``moelab.model.dispatch.LocalDispatcher``:

* dispatch: sort this rank's (token, slot) assignments by global expert, exchange the per-expert
  counts (one all-to-all of E integers), then the tokens (one variable-split all-to-all), and
  regroup what arrived from every source rank into local-expert order;
* combine: the exact reverse (regroup back, all-to-all back), then the same weighted sum over
  the k slots as the local dispatcher, so results equal the single-device model's;
* run (what ``MoELayer`` calls): dispatch → experts → combine; with ``chunks`` > 1
  (``parallel.ep_overlap_chunks``) pipelined over pieces of the tokens, in both passes.

The pipeline (``_pipelined``). Every all-to-all is two autograd nodes: a start node (forward:
start the async transfer; backward: wait for the reverse one) and a wait node (forward: wait;
backward: start the reverse transfer of the gradient and return at once). Forward: all pieces'
tokens leave at once, piece c's experts run while later pieces are in flight, and its outputs
travel back while piece c+1 computes. Backward: autograd runs ready nodes latest-created first,
so the wait nodes of the combine transfers (created last) start every piece's output gradient
at once; then the pieces run in reverse order, each waiting only for its own gradient, running
its expert backward, and sending its input gradient back unawaited; the dispatch start nodes
(created first) wait for those at the very end. While one piece's experts run (forward or
backward) the other pieces' transfers are in flight (``tests/parallel/test_ep_overlap.py``).

Why two plain nodes rather than one custom Function that owns the pipeline and runs each piece's
expert backward itself (``torch.autograd.backward`` on a kept sub-graph): the experts stay in
the ordinary graph, so their weights accumulate gradients as any parameter's (FSDP hooks,
``autograd.grad`` and split-backward pipeline schedules (ZBV, DualPipeV), whose weight pass
restarts from the expert GEMMs, see nothing new), and activation checkpointing works: a
nested backward is a separate graph task, and non-reentrant checkpointing recomputes per graph
task, so it tried to recompute the block a second time inside it and failed.

Collectives go on ``EPGroups.current()``: the EP group, or, inside an autograd backward, a
second group over the same ranks when one is given (``parallel.pp_overlap_f_b`` runs one micro
batch's forward and another's backward at the same time, ``parallel.overlap_f_b``).

The sliced expert weights stay plain local tensors (the grouped GEMM sees them unchanged);
each is tagged with ``common.sharding.LOCAL_SHARD_ATTR`` = the ep mesh, so gradient reduction,
clipping and DCP (which presents them as DTensors ``Shard(0)`` over the ``ep`` mesh) find them.

Dropless: split sizes are whatever the routing gives (a host sync reads them). The router still
scores all experts on every rank, so routing, losses and the bias update are unchanged; expert
counts for the bias update are reduced over the data-parallel group by the trainer.

Shapes: T tokens, K top_k, S = T*K assignments, R received rows, D hidden, E experts,
El = E / ep local experts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as fc
from torch import nn

from moelab.common.sharding import LOCAL_SHARD_ATTR
from moelab.model.dispatch import inverse_permutation, sort_by_expert, weighted_sum
from moelab.model.moe import MoELayer


@dataclass
class A2AState:
    inverse_S: torch.Tensor
    regroup_back_R: torch.Tensor
    weights_TK: torch.Tensor
    send_splits: list[int]
    recv_splits: list[int]
    num_tokens: int
    top_k: int
    out_dtype: torch.dtype


def _a2a_async(x: torch.Tensor, out_splits: list[int], in_splits: list[int], group):
    """Start a differentiable all-to-all; the result waits for the transfer on first use."""
    return fc.all_to_all_single_autograd(x.contiguous(), out_splits, in_splits, group)


def _a2a(x: torch.Tensor, out_splits: list[int], in_splits: list[int], groups) -> torch.Tensor:
    """A blocking differentiable all-to-all whose backward runs on ``groups.current()``."""
    return _wait(_start(x, out_splits, in_splits, groups))


@dataclass(frozen=True)
class EPGroups:
    """The expert-parallel group, and optionally a second one (same ranks) for the backward.

    With ``parallel.pp_overlap_f_b`` one micro batch's forward and another's backward run at the
    same time in two threads (``overlap_f_b``); every collective of the backward then goes on
    ``backward`` so the two threads never issue collectives on one group in an order that could
    differ between ranks. Each group still sees its collectives in schedule order on every rank:
    forwards (and backwards) never run concurrently with each other.
    """

    forward: dist.ProcessGroup
    backward: dist.ProcessGroup | None = None

    def current(self) -> dist.ProcessGroup:
        """``backward`` inside an autograd backward (also for a checkpointed block's recompute,
        which runs inside it), else ``forward``. The graph-task id is set on whichever thread
        runs the backward's nodes, so this also holds on GPU's autograd device threads."""
        if self.backward is not None and torch._C._current_graph_task_id() != -1:
            return self.backward
        return self.forward


def _sort_by_expert(x_TD: torch.Tensor, expert_ids_TK: torch.Tensor, num_experts: int):
    """(x_SD sorted by global expert, inverse permutation, tokens per expert E)."""
    order, inverse, counts_E = sort_by_expert(expert_ids_TK, num_experts)
    return x_TD.index_select(0, order // expert_ids_TK.shape[1]), inverse, counts_E


def _combine_local(y_SD: torch.Tensor, inverse_S, weights_TK, out_dtype) -> torch.Tensor:
    """Undo the sort and sum each token's K weighted expert outputs (as LocalDispatcher)."""
    T, K = weights_TK.shape
    return weighted_sum(y_SD.index_select(0, inverse_S).view(T, K, -1), weights_TK, out_dtype)


class AllToAllDispatcher:
    """All-to-all dispatch over an expert-parallel group; ``chunks`` > 1 pipelines ``run``.

    With ``chunks`` = c, ``run`` splits the T tokens into c contiguous pieces, exchanges all
    their expert counts in one all-to-all, starts every piece's token all-to-all at once, and
    then computes the experts piece by piece: piece i's transfer runs while piece i-1's experts
    compute, and piece i's combine all-to-all while piece i+1's do. The backward mirrors it
    (module docstring). ``overlap_backward=False`` pipelines only the forward, on funcol's
    autograd all-to-all, whose backward blocks piece by piece: the benchmark's baseline.
    """

    def __init__(
        self,
        num_experts: int,
        group: dist.ProcessGroup,
        chunks: int = 1,
        overlap_backward: bool = True,
        backward_group: dist.ProcessGroup | None = None,
    ):
        self.group = group
        self.groups = EPGroups(group, backward_group)
        self.ep = dist.get_world_size(group)
        if num_experts % self.ep:
            raise ValueError(
                f"{num_experts} experts do not split over {self.ep} expert-parallel ranks"
            )
        if chunks < 1:
            raise ValueError(f"ep_overlap_chunks must be >= 1, got {chunks}")
        self.num_experts, self.local_experts = num_experts, num_experts // self.ep
        self.chunks = chunks
        self.overlap_backward = overlap_backward

    def _exchange_counts(self, counts_CE: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One all-to-all of every chunk's counts: (sent, received), each (C, ep, El)."""
        C = counts_CE.shape[0]
        send = counts_CE.view(C, self.ep, self.local_experts).transpose(0, 1).contiguous()
        recv = torch.empty_like(send)  # block r of send (C·El counts) goes to rank r
        dist.all_to_all_single(recv, send, group=self.groups.current())
        return send.transpose(0, 1), recv.transpose(0, 1)

    def dispatch(self, x_TD: torch.Tensor, expert_ids_TK: torch.Tensor, weights_TK: torch.Tensor):
        T, K = expert_ids_TK.shape
        x_sorted, inverse, counts_E = _sort_by_expert(x_TD, expert_ids_TK, self.num_experts)
        send_mat, recv_mat = (m[0] for m in self._exchange_counts(counts_E.unsqueeze(0)))
        send_splits = send_mat.sum(1).tolist()
        recv_splits = recv_mat.sum(1).tolist()
        x_recv = _a2a(x_sorted, recv_splits, send_splits, self.groups)
        regroup = _source_to_expert_order(recv_mat).to(x_recv.device)
        x_local = x_recv.index_select(0, regroup)
        state = A2AState(
            inverse,
            inverse_permutation(regroup),
            weights_TK,
            send_splits,
            recv_splits,
            T,
            K,
            x_TD.dtype,
        )
        return x_local, recv_mat.sum(0), state

    def combine(self, y_RD: torch.Tensor, state: A2AState) -> torch.Tensor:
        y_recv = y_RD.index_select(0, state.regroup_back_R.to(y_RD.device))
        y_sorted = _a2a(y_recv, state.send_splits, state.recv_splits, self.groups)
        return _combine_local(y_sorted, state.inverse_S, state.weights_TK, state.out_dtype)

    def run(
        self,
        x_TD: torch.Tensor,
        expert_ids_TK: torch.Tensor,
        weights_TK: torch.Tensor,
        experts: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """dispatch → experts → combine, pipelined over ``chunks`` pieces of the tokens."""
        C = max(1, min(self.chunks, x_TD.shape[0]))
        if C == 1:
            x_local, counts, state = self.dispatch(x_TD, expert_ids_TK, weights_TK)
            return self.combine(experts(x_local, counts), state)
        pieces = list(
            zip(
                x_TD.tensor_split(C),
                expert_ids_TK.tensor_split(C),
                weights_TK.tensor_split(C),
                strict=True,
            )
        )
        sorts = [_sort_by_expert(x, ids, self.num_experts) for x, ids, _ in pieces]
        plan = self._plan(torch.stack([s[2] for s in sorts]), x_TD.device)
        xs = [s[0] for s in sorts]
        if self.overlap_backward:
            ys = _pipelined(plan, experts, xs)
        elif self.groups.backward is not None:
            raise ValueError("overlap_backward=False (funcol's all-to-all) has no backward group")
        else:
            ys = _forward_pipelined(plan, experts, xs)
        out = [
            _combine_local(y, s[1], w, x_TD.dtype)
            for y, s, (_, _, w) in zip(ys, sorts, pieces, strict=True)
        ]
        return torch.cat(out)

    def _plan(self, counts_CE: torch.Tensor, device: torch.device) -> _Plan:
        """Every piece's split sizes and row permutations, from one count exchange."""
        send, recv = self._exchange_counts(counts_CE)
        send_splits, recv_splits = send.sum(-1).tolist(), recv.sum(-1).tolist()  # one host sync
        regroup = [_source_to_expert_order(r).to(device) for r in recv]
        return _Plan(
            self.groups,
            send_splits,
            recv_splits,
            regroup,
            [inverse_permutation(g) for g in regroup],
            [r.sum(0) for r in recv],
        )


@dataclass
class _Plan:
    """What every piece's transfers and expert call need; fixed by the routing up front."""

    groups: EPGroups
    send_splits: list[list[int]]
    """Rows piece c sends to each EP rank (and receives back in the combine)."""
    recv_splits: list[list[int]]
    """Rows piece c receives from each EP rank."""
    regroup: list[torch.Tensor]
    """Received (source rank, local expert) blocks → local-expert order, per piece."""
    regroup_back: list[torch.Tensor]
    """The inverse of ``regroup``."""
    counts: list[torch.Tensor]
    """Tokens per local expert, per piece."""

    def __len__(self) -> int:
        return len(self.regroup)


def _forward_pipelined(plan: _Plan, experts, xs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Forward-only pipeline on autograd all-to-alls (no grad needed, or ``overlap_backward``
    off): the backward, if any, runs each piece's reverse all-to-all blocking, in turn."""
    arriving = [  # every piece's transfer starts now; each is awaited where it is used
        _a2a_async(x, plan.recv_splits[c], plan.send_splits[c], plan.groups.forward)
        for c, x in enumerate(xs)
    ]
    returning = []
    for c in range(len(plan)):
        y_RD = experts(arriving[c].index_select(0, plan.regroup[c]), plan.counts[c])
        y_back = y_RD.index_select(0, plan.regroup_back[c])
        returning.append(
            _a2a_async(y_back, plan.send_splits[c], plan.recv_splits[c], plan.groups.forward)
        )
    return returning


class _InFlight:
    """One all-to-all in flight: started by one autograd node, awaited by another."""

    def __init__(self, groups: EPGroups, out_splits: list[int], in_splits: list[int]):
        self.groups, self.out_splits, self.in_splits = groups, out_splits, in_splits
        self.recv: torch.Tensor | None = None
        self.work = None
        self.send: torch.Tensor | None = None

    def start(self, x: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        """Start sending ``x`` (rows split by ``in_splits``; ``reverse``: the way back)."""
        out_splits, in_splits = self.out_splits, self.in_splits
        if reverse:
            out_splits, in_splits = in_splits, out_splits
        self.send = x.contiguous()  # kept alive until the transfer is done
        self.recv = x.new_empty((sum(out_splits), *x.shape[1:]))
        self.work = dist.all_to_all_single(
            self.recv, self.send, out_splits, in_splits, group=self.groups.current(), async_op=True
        )
        return self.recv

    def finish(self) -> torch.Tensor:
        self.work.wait()
        recv, self.recv, self.send, self.work = self.recv, None, None, None
        return recv


class _StartAllToAll(torch.autograd.Function):
    """Forward: start the transfer, return the (not yet filled) receive buffer.
    Backward: wait for the reverse transfer that ``_WaitAllToAll``'s backward started; the
    incoming gradient is only the edge that orders the two."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, flight: _InFlight) -> torch.Tensor:
        ctx.flight = flight
        return flight.start(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return ctx.flight.finish(), None


class _WaitAllToAll(torch.autograd.Function):
    """Forward: wait for the transfer. Backward: start the reverse transfer of the gradient
    and return at once; ``_StartAllToAll``'s backward waits for it."""

    @staticmethod
    def forward(ctx, recv: torch.Tensor, flight: _InFlight) -> torch.Tensor:
        ctx.flight = flight
        return flight.finish()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        ctx.flight.start(grad, reverse=True)
        # Autograd wants a gradient shaped like the receive buffer; the start node ignores it
        # and returns the reverse transfer's result (shaped like what was sent) instead.
        return grad, None


def _start(x: torch.Tensor, out_splits: list[int], in_splits: list[int], groups: EPGroups):
    flight = _InFlight(groups, out_splits, in_splits)
    return _StartAllToAll.apply(x, flight), flight


def _wait(pending: tuple[torch.Tensor, _InFlight]) -> torch.Tensor:
    return _WaitAllToAll.apply(*pending)


def _pipelined(plan: _Plan, experts, xs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Both passes pipelined: each all-to-all is a start node and a wait node (module docstring).

    Autograd runs ready nodes latest-created first, so the backward visits the pieces in
    reverse: every piece's output gradient leaves at once (the wait nodes' backward, created
    last), then piece c waits for its own, runs its expert backward and sends its input
    gradient back without waiting; the start nodes, created first, wait for those at the end.
    """
    arriving = [
        _start(x, plan.recv_splits[c], plan.send_splits[c], plan.groups) for c, x in enumerate(xs)
    ]
    returning = []
    for c in range(len(plan)):
        y_RD = experts(_wait(arriving[c]).index_select(0, plan.regroup[c]), plan.counts[c])
        y_back = y_RD.index_select(0, plan.regroup_back[c])
        returning.append(_start(y_back, plan.send_splits[c], plan.recv_splits[c], plan.groups))
    return [_wait(r) for r in returning]


def _source_to_expert_order(recv_mat: torch.Tensor) -> torch.Tensor:
    """Row permutation from (source rank, local expert) blocks to (local expert, source rank)."""
    counts = recv_mat.cpu()
    ep, el = counts.shape
    starts = torch.cumsum(counts.reshape(-1), 0) - counts.reshape(-1)
    starts = starts.view(ep, el)
    pieces = [
        torch.arange(int(starts[s, e]), int(starts[s, e] + counts[s, e]))
        for e in range(el)
        for s in range(ep)
    ]
    return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long)


EP_GROUP_ATTR = LOCAL_SHARD_ATTR


def expert_params(model: nn.Module) -> list[nn.Parameter]:
    """The expert-parallel (sliced, plain) parameters of ``model``."""
    return [p for p in model.parameters() if hasattr(p, EP_GROUP_ATTR)]


def apply_expert_parallel(
    model: nn.Module,
    group: dist.ProcessGroup | None = None,
    mesh=None,
    overlap_chunks: int = 1,
    backward_group: dist.ProcessGroup | None = None,
) -> None:
    """Keep this rank's slice of every MoE layer's experts and swap in the all-to-all dispatcher.

    Pass either a process ``group`` or a 1-D ``mesh`` (the ``ep`` DeviceMesh); with a mesh the
    parameters remember it, which DCP checkpoints need. ``overlap_chunks`` > 1 pipelines each
    layer's all-to-all with its expert compute (``AllToAllDispatcher``). ``backward_group`` (the
    same ranks as ``group``, a separate communicator) carries the backward's all-to-alls, for
    ``parallel.pp_overlap_f_b`` (``EPGroups``).
    """
    if mesh is not None:
        group = mesh.get_group()
    if group is None:
        raise ValueError("apply_expert_parallel needs a process group or an ep mesh")
    ep_rank = dist.get_rank(group)
    for module in model.modules():
        if not isinstance(module, MoELayer):
            continue
        experts = module.experts
        dispatcher = AllToAllDispatcher(
            experts.num_experts, group, overlap_chunks, backward_group=backward_group
        )
        lo = ep_rank * dispatcher.local_experts
        hi = lo + dispatcher.local_experts
        with torch.no_grad():
            experts.gate_up_proj = nn.Parameter(experts.gate_up_proj[lo:hi].clone())
            experts.down_proj = nn.Parameter(experts.down_proj[lo:hi].clone())
        for p in (experts.gate_up_proj, experts.down_proj):
            setattr(p, EP_GROUP_ATTR, mesh)
        experts.num_experts = dispatcher.local_experts
        experts.expert_offset = lo
        module.dispatcher = dispatcher
