"""The local dispatcher: a hand-computed permutation, counts, and an exact inverse."""

from __future__ import annotations

import torch

from moelab.model.dispatch import LocalDispatcher


def test_hand_computed_permutation():
    x = torch.arange(3, dtype=torch.float32)[:, None] * torch.ones(3, 2)  # token t = [t, t]
    ids = torch.tensor([[2, 0], [0, 1], [2, 1]])
    xs, counts, state = LocalDispatcher(4).dispatch(x, ids, torch.ones(3, 2))
    # expert 0: tokens 0, 1; expert 1: tokens 1, 2; expert 2: tokens 0, 2; expert 3: none
    assert counts.tolist() == [2, 2, 2, 0]
    assert xs[:, 0].tolist() == [0, 1, 1, 2, 0, 2]
    assert state.order_S.tolist() == [1, 2, 3, 5, 0, 4]


def test_combine_weights_and_sums_slots():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, generator=gen)
    ids = torch.randint(0, 4, (5, 2), generator=gen)
    w = torch.rand(5, 2, generator=gen)
    d = LocalDispatcher(4)
    xs, _, state = d.dispatch(x, ids, w)
    y = d.combine(xs * 2.0, state)  # "expert" doubles its input
    torch.testing.assert_close(y, 2.0 * x * w.sum(dim=1, keepdim=True))


def test_dropless_every_assignment_is_kept():
    ids = torch.zeros(100, 4, dtype=torch.long)  # all tokens pick expert 0 four times
    _, counts, _ = LocalDispatcher(8).dispatch(torch.randn(100, 16), ids, torch.ones(100, 4))
    assert counts[0] == 400 and counts[1:].sum() == 0
