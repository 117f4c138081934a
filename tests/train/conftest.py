"""Tiny learnable token shards and a tiny train config, made in the test (nothing downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moelab.tokens.shards import ShardWriter, write_meta
from moelab.train.config import TrainConfig

VOCAB = 64


def make_shards(directory: Path, docs: int = 200, seed: int = 0) -> Path:
    """Documents from a noisy deterministic walk (next = 5·prev + 3 mod V, 10% random): learnable."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(docs):
        tok, doc = int(rng.integers(VOCAB)), []
        for _ in range(int(rng.integers(20, 60))):
            doc.append(tok)
            tok = (5 * tok + 3) % VOCAB if rng.random() > 0.1 else int(rng.integers(VOCAB))
        out.append(doc)
    with ShardWriter(directory, 0) as writer:
        writer.write(out)
        info = writer.close()
    write_meta(directory, [info], {"hash": "test-walk", "vocab_size": VOCAB})
    return directory


def tiny_config(tmp: Path, shards: Path, **over) -> TrainConfig:
    overrides = [f"{k}={v}" for k, v in over.items()]
    return TrainConfig.from_dict(
        {
            "model": {
                "preset": "tiny-dots",
                "vocab_size": VOCAB,
                "hidden_size": 32,
                "num_layers": 2,
                "intermediate_size": 64,
                "attention": {"num_heads": 2, "num_kv_heads": 2, "head_dim": 16},
                "moe": {"num_experts": 8, "top_k": 2, "expert_intermediate_size": 16},
            },
            "data": {"shards": str(shards)},
            "optim": {"lr": 1e-2},
            "schedule": {"kind": "wsd", "warmup_steps": 2, "decay_steps": 4},
            "batch": {"seq_len": 16, "micro_batch_size": 4, "global_batch_size": 8},
            "balance": {"bias_update_rate": 1e-3},
            "checkpoint": {"latest_every_steps": 5},
            "out_dir": str(tmp / "run"),
            "max_steps": 20,
            "threads": 1,
        },
        overrides,
    )


@pytest.fixture()
def shards(tmp_path) -> Path:
    return make_shards(tmp_path / "shards")
