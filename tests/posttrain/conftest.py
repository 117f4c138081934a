"""Tiny chat tokenizer, tiny models, starting checkpoints and toy chat data (made here, offline)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from moelab.checkpoint.layout import save_checkpoint
from moelab.model import build_model
from moelab.model.config import ModelConfig
from moelab.posttrain.config import DPOConfig, SFTConfig, from_dict

CHAT_TAGS = [
    "<|endoftext|>",
    "<|system|>",
    "<|endofsystem|>",
    "<|userprompt|>",
    "<|endofuserprompt|>",
    "<|response|>",
    "<|endofresponse|>",
    "<|user|>",
    "<|assistant|>",
]
COLORS = "red green blue yellow black white pink gray".split()
FRUITS = "apple pear plum lime kiwi fig date melon".split()
ANSWER = dict(zip(COLORS, FRUITS, strict=True))
WORDS = COLORS + FRUITS + "color fruit say the is a yes no be brief please".split()
VOCAB = 448
PRESETS = {"dots1": "tiny-dots", "olmoe": "tiny-olmoe"}


@pytest.fixture(scope="session")
def chat_tokenizer():
    """A byte-level BPE where every toy word is one token and both families' chat tags exist."""
    from moelab.tokens.tokenizer import train_bpe

    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(400)]
    return train_bpe(texts, vocab_size=420, special_tokens=CHAT_TAGS)


def model_dict(family: str) -> dict:
    return {
        "preset": PRESETS[family],
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "num_layers": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 256,
        "attention": {"num_heads": 2, "num_kv_heads": 2, "head_dim": 16},
        "moe": {"num_experts": 8, "top_k": 2, "expert_intermediate_size": 16},
    }


def base_checkpoint(root: Path, family: str, tokenizer) -> Path:
    """A moelab run directory with a random tiny model and the chat tokenizer (init_from)."""
    cfg = ModelConfig.from_dict(model_dict(family))
    save_checkpoint(root, step=0, tokens=0, model=build_model(cfg, seed=3))
    tokenizer.save(root)
    return root


def write_jsonl(path: Path, records: list) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n")
    return path


def sft_records(n: int, seed: int = 0) -> list[dict]:
    """Ask the fruit of a color (one or two rounds, sometimes a system prompt); answers follow ANSWER."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        messages = [{"role": "system", "content": "be brief"}] if rng.random() < 0.5 else []
        for _ in range(rng.choice([1, 2])):
            color = rng.choice(COLORS)
            messages.append({"role": "user", "content": f"the fruit of {color} please"})
            messages.append({"role": "assistant", "content": f"{ANSWER[color]}"})
        out.append({"messages": messages})
    return out


def dpo_records(n: int, seed: int = 0) -> list[dict]:
    """Preferred answers end with "yes", dispreferred ones with "no"; the rest is random words."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        body = " ".join(rng.choice(FRUITS) for _ in range(rng.randint(1, 3)))
        prompt = " ".join(rng.choice(COLORS) for _ in range(2))
        out.append({"prompt": prompt, "chosen": f"{body} yes", "rejected": f"{body} no"})
    return out


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
