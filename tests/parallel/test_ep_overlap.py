"""EP all-to-all pipelined over pieces of the tokens (``ep_overlap_chunks``), forward and backward.

Equivalence: with 2, 3 and 4 pieces (2 also under activation checkpointing) the loss and every
gradient (expert slices, routers, attention, embeddings) equal the unchunked EP path and the
single-process model within 1e-6, and so do 3 trainer steps. Overlap: while each piece's experts
run, forward or backward, the other pieces' all-to-alls are in flight; a blocking all-to-all in
either pass would leave none (checked by making the backward's wait immediate: the probe saw 0).
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from moelab.model import build_model
from moelab.model.losses import cross_entropy, load_balancing_loss

from .distributed import run_distributed
from .test_ep_fsdp import _cfg, _data

pytestmark = pytest.mark.distributed


def _step(model, x):
    """Loss with an LB term, so router gradients come from the combine and the aux loss."""
    out = model(x[:, :-1])
    loss = cross_entropy(out.logits, x[:, 1:]) + 0.01 * load_balancing_loss(out.router, 8, 2)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


def _ep_model(chunks, checkpointed=False):
    from moelab.parallel.activation import apply_activation_checkpointing
    from moelab.parallel.expert import apply_expert_parallel

    model = build_model(_cfg(), seed=1)
    apply_expert_parallel(model, dist.group.WORLD, overlap_chunks=chunks)
    if checkpointed:
        apply_activation_checkpointing(model, "full")
    return model


def _equivalence_worker(rank, world):
    x = _data()
    local = x[2 * rank : 2 * rank + 2]  # 64 tokens per rank: pieces of 32, 22/21/21, 16
    ref = build_model(_cfg(), seed=1)  # the whole batch in one process (each half's loss summed)
    ref_loss = sum(_step(ref, x[2 * r : 2 * r + 2])[0] for r in range(world))
    ref_grads = {n: _slice(n, p.grad, rank, world) for n, p in ref.named_parameters()}
    runs = {(c, False): _step(_ep_model(c), local) for c in (1, 2, 3, 4)}
    runs[(2, True)] = _step(_ep_model(2, checkpointed=True), local)  # forward recomputed
    summed = {
        key: (_sum(loss), {n: _sum(g, n) for n, g in grads.items()})
        for key, (loss, grads) in runs.items()
    }
    worst = {"one process": 0.0, "chunks=1": 0.0}
    for key, (loss, grads) in summed.items():
        for against, (want_loss, want_grads) in (
            ("one process", (ref_loss, ref_grads)),
            ("chunks=1", summed[(1, False)]),
        ):
            torch.testing.assert_close(loss, want_loss, atol=1e-6, rtol=0)
            worst[against] = max(worst[against], (loss - want_loss).abs().item())
            for name, g in grads.items():
                torch.testing.assert_close(
                    g, want_grads[name], atol=1e-6, rtol=0, msg=f"{key} {name}"
                )
                worst[against] = max(worst[against], (g - want_grads[name]).abs().max().item())
    if rank == 0:
        print(f"max |diff| of losses and gradients: {worst}")


_EXPERT_WEIGHTS = (".experts.gate_up_proj", ".experts.down_proj")


def _slice(name, grad, rank, world):
    """This rank's experts' rows of a single-process expert gradient; others whole."""
    if not name.endswith(_EXPERT_WEIGHTS):
        return grad
    el = grad.shape[0] // world
    return grad[rank * el : (rank + 1) * el]


def _sum(t, name=""):
    """A replicated weight's gradient (or the loss) summed over the ranks' halves of the batch;
    expert slices are already whole (the all-to-all backward brought every rank's share)."""
    if name.endswith(_EXPERT_WEIGHTS):
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t


def test_pipelined_backward_equals_unchunked_and_single_process():
    run_distributed(_equivalence_worker, world_size=2)


class _Probe:
    """Counts this rank's async all-to-alls in flight (started, not yet waited for)."""

    def __init__(self):
        self.in_flight, self.started = 0, 0
        self._all_to_all = dist.all_to_all_single

    def __call__(self, *args, async_op=False, **kwargs):
        work = self._all_to_all(*args, async_op=async_op, **kwargs)
        if not async_op:
            return work
        self.in_flight += 1
        self.started += 1
        return _Work(work, self)


class _Work:
    def __init__(self, work, probe):
        self.work, self.probe, self.done = work, probe, False

    def wait(self):
        self.work.wait()
        if not self.done:
            self.done = True
            self.probe.in_flight -= 1
        return True


def _overlap_worker(rank, world, chunks):
    probe = _Probe()
    dist.all_to_all_single = probe  # the dispatcher calls it through torch.distributed
    model = _ep_model(chunks)
    experts = model.layers["1"].mlp.experts  # block 0 is dense in tiny-dots
    seen = {"forward": [], "backward": []}
    experts.register_forward_pre_hook(lambda *_: seen["forward"].append(probe.in_flight))
    experts.register_full_backward_pre_hook(lambda *_: seen["backward"].append(probe.in_flight))
    out = model(_data()[2 * rank : 2 * rank + 2, :-1])
    started_in_forward = probe.started
    out.logits.square().mean().backward()
    assert probe.in_flight == 0  # everything started was waited for
    # 2 all-to-alls per piece and layer (2 MoE layers) in each pass, all of them async.
    assert started_in_forward == probe.started - started_in_forward == 2 * 2 * chunks
    # While each piece's experts run (forward) and their backward runs, the other pieces'
    # transfers are in flight: its successors' dispatch and predecessors' combine (forward);
    # the remaining output gradients and the finished pieces' input gradients (backward).
    # A blocking all-to-all in either pass would leave 0 in flight here.
    assert seen == {"forward": [chunks - 1] * chunks, "backward": [chunks - 1] * chunks}, seen


@pytest.mark.parametrize("chunks", [3])
def test_backward_overlaps_each_pieces_expert_backward_with_the_other_transfers(chunks):
    run_distributed(_overlap_worker, world_size=2, args=(chunks,))


def _train_worker(rank, world, cfg_path):
    from moelab.train.config import TrainConfig
    from moelab.train.trainer import train

    train(TrainConfig.from_yaml(cfg_path), log=lambda *_: None)


def test_trainer_with_pipelined_all_to_all_matches_single_process(tmp_path):
    """EP=2 with 3 pieces per layer: 3 optimizer steps give the single-process losses, gradient
    norms, expert loads and weights (consolidated from the DCP checkpoint) within 1e-6."""
    from moelab.train.trainer import train

    from ..train.conftest import make_shards, tiny_config
    from .test_train_ep_pp import COMMON, _assert_same_run, _assert_same_weights, _records

    shards = make_shards(tmp_path / "shards")
    over = {**COMMON, "checkpoint.every_tokens": 384}  # 3 steps of 8 x 16 tokens
    single = tiny_config(tmp_path / "single", shards, max_steps=3, **over)
    train(single, log=lambda *_: None)
    cfg = tiny_config(
        tmp_path / "ep",
        shards,
        max_steps=3,
        **over,
        **{"parallel.ep": 2, "parallel.ep_overlap_chunks": 3},
    )
    cfg.to_yaml(tmp_path / "ep.yaml")
    run_distributed(_train_worker, world_size=2, args=(str(tmp_path / "ep.yaml"),))
    ep_run, single_run = tmp_path / "ep" / "run", tmp_path / "single" / "run"
    _assert_same_run(_records(ep_run), _records(single_run))
    _assert_same_weights(
        ep_run / "step_00000003", single_run / "step_00000003", tmp_path / "c", 1e-6
    )
