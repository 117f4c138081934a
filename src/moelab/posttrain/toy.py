"""A toy post-training set-up, offline in seconds: chat tokenizer, tiny base model, SFT and DPO data.

``python -m moelab.posttrain.toy OUT [--family dots1|olmoe]`` writes

* ``OUT/base/``: a tiny random model of the family (a moelab run directory) with a byte-level
  BPE that has both families' chat tags as special tokens and every toy word as one token;
* ``OUT/sft.jsonl``: conversations asking "the fruit of COLOR please" (one or two rounds, half
  with a system prompt); the answer is a fixed fruit per colour, so it can be learned;
* ``OUT/dpo.jsonl``: preference pairs whose chosen reply ends in "yes" and rejected in "no";
* ``OUT/dpo_held_out.jsonl``: more pairs of the same rule, for checking generalisation.

then ``moelab sft configs/posttrain/toy_sft.yaml`` and ``moelab dpo configs/posttrain/toy_dpo.yaml``
train on them. The tests build the same things.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

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


def toy_tokenizer():
    """A byte-level BPE where every toy word is one token and both families' chat tags exist."""
    from moelab.tokens.tokenizer import train_bpe

    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(400)]
    return train_bpe(texts, vocab_size=420, special_tokens=CHAT_TAGS)


def model_dict(family: str) -> dict:
    """A 2-layer model of the family's tiny preset, narrow enough for a test."""
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


def base_checkpoint(root: Path, family: str, tokenizer, seed: int = 3) -> Path:
    """A moelab run directory with a random tiny model and ``tokenizer`` (an ``init_from``)."""
    from moelab.checkpoint.layout import save_checkpoint
    from moelab.model import build_model
    from moelab.model.config import ModelConfig

    cfg = ModelConfig.from_dict(model_dict(family))
    save_checkpoint(root, step=0, tokens=0, model=build_model(cfg, seed=seed))
    tokenizer.save(root)
    return root


def sft_records(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        messages = [{"role": "system", "content": "be brief"}] if rng.random() < 0.5 else []
        for _ in range(rng.choice([1, 2])):
            color = rng.choice(COLORS)
            messages.append({"role": "user", "content": f"the fruit of {color} please"})
            messages.append({"role": "assistant", "content": ANSWER[color]})
        out.append({"messages": messages})
    return out


def dpo_records(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        body = " ".join(rng.choice(FRUITS) for _ in range(rng.randint(1, 3)))
        prompt = " ".join(rng.choice(COLORS) for _ in range(2))
        out.append({"prompt": prompt, "chosen": f"{body} yes", "rejected": f"{body} no"})
    return out


def write_jsonl(path: Path, records: list) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moelab.posttrain.toy", description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--family", default="dots1", choices=sorted(PRESETS))
    parser.add_argument("--sft", type=int, default=400, help="SFT conversations")
    parser.add_argument("--dpo", type=int, default=400, help="preference pairs")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    base_checkpoint(args.out / "base", args.family, toy_tokenizer())
    write_jsonl(args.out / "sft.jsonl", sft_records(args.sft))
    write_jsonl(args.out / "dpo.jsonl", dpo_records(args.dpo))
    write_jsonl(args.out / "dpo_held_out.jsonl", dpo_records(100, seed=1))
    print(f"wrote {args.out}/base, sft.jsonl, dpo.jsonl, dpo_held_out.jsonl ({args.family})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
