"""Schedules are pure functions of the step (LR) or tokens seen (batch size)."""

from __future__ import annotations

import pytest

from moelab.config import ConfigError
from moelab.train.config import BatchConfig, ScheduleConfig
from moelab.train.schedule import global_batch_at, lr_at


def test_wsd_warmup_stable_decay():
    cfg = ScheduleConfig(kind="wsd", warmup_steps=4, decay_steps=10, final_lr_ratio=0.1)
    lrs = [lr_at(s, 1.0, cfg, 100) for s in range(100)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(lr == 1.0 for lr in lrs[4:90])
    assert lrs[90] < 1.0 and lrs[99] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[90:], lrs[91:], strict=False))


def test_cosine_reaches_final_ratio():
    cfg = ScheduleConfig(kind="cosine", warmup_steps=10, final_lr_ratio=0.1)
    assert lr_at(9, 4e-4, cfg, 1000) == pytest.approx(4e-4)
    assert lr_at(505, 4e-4, cfg, 1000) == pytest.approx(4e-4 * 0.55, rel=1e-2)
    assert lr_at(1000, 4e-4, cfg, 1000) == pytest.approx(4e-5)


def test_batch_ramp_by_tokens():
    cfg = BatchConfig.from_dict(
        {
            "micro_batch_size": 2,
            "global_batch_size": 4,
            "ramp": [
                {"after_tokens": 1000, "global_batch_size": 6},
                {"after_tokens": 5000, "global_batch_size": 8},
            ],
        }
    )
    assert [global_batch_at(t, cfg) for t in (0, 999, 1000, 4999, 5000, 10**9)] == [
        4,
        4,
        6,
        6,
        8,
        8,
    ]


def test_ramp_must_be_multiple_of_micro_batch():
    with pytest.raises(ConfigError, match=r"ramp\[0\].global_batch_size"):
        BatchConfig.from_dict(
            {"micro_batch_size": 4, "ramp": [{"after_tokens": 10, "global_batch_size": 6}]}
        )
