"""The toy post-training set-up (moelab.posttrain.toy) as fixtures, and tiny SFT/DPO configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moelab.posttrain.config import DPOConfig, SFTConfig, from_dict
from moelab.posttrain.toy import (  # noqa: F401 (re-exported to the tests)
    ANSWER,
    VOCAB,
    base_checkpoint,
    dpo_records,
    model_dict,
    sft_records,
    toy_tokenizer,
    write_jsonl,
)


@pytest.fixture(scope="session")
def chat_tokenizer():
    return toy_tokenizer()


def _common(tmp: Path, init_from: Path, data: Path, **over) -> tuple[dict, list[str]]:
    cfg = {
        "init_from": str(init_from),
        "data": {"path": str(data)},
        "optim": {"lr": 1e-2, "weight_decay": 0.0},
        "schedule": {"kind": "constant"},
        "batch": {"seq_len": 64, "micro_batch_size": 4, "global_batch_size": 8},
        "balance": {"lb_coef": 0.01},
        "checkpoint": {"latest_every_steps": 5},
        "out_dir": str(tmp / "run"),
        "max_steps": 10,
        "threads": 1,
    }
    return cfg, [f"{k}={v}" for k, v in over.items()]


def sft_config(tmp: Path, init_from: Path, data: Path, **over) -> SFTConfig:
    return from_dict(SFTConfig, *_common(tmp, init_from, data, **over))


def dpo_config(tmp: Path, init_from: Path, data: Path, **over) -> DPOConfig:
    return from_dict(DPOConfig, *_common(tmp, init_from, data, **over))


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
