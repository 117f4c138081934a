"""Fixtures for the inference tests: tiny random models of both families (built, never downloaded)."""

from __future__ import annotations

import pytest
import torch

from moelab.model import build_model, get_preset


@pytest.fixture(scope="session")
def tiny_models() -> dict:
    """``{"dots1": model, "olmoe": model}``: 2-layer tiny presets in eval mode, fp32, seeded."""
    out = {}
    for family, preset in (("dots1", "tiny-dots"), ("olmoe", "tiny-olmoe")):
        cfg = get_preset(preset)
        cfg.num_layers = 2
        out[family] = build_model(cfg, seed=0).eval()
    return out


def random_prompts(lengths: list[int], vocab: int = 4096, seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in lengths]


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
WORDS = "the of and mixture experts router token shard model data layer hello world café 数据 😀".split()


def corpus(n: int = 300, seed: int = 0) -> list[str]:
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(WORDS), (n, 12), generator=gen).tolist()
    return [" ".join(WORDS[i] for i in row) for row in idx]


@pytest.fixture(scope="session")
def chat_tokenizer():
    """A tiny byte-level BPE whose special tokens include both families' chat tags."""
    from moelab.tokens.tokenizer import train_bpe

    return train_bpe(corpus(), vocab_size=400, special_tokens=CHAT_TAGS)


@pytest.fixture(scope="session")
def text_models(chat_tokenizer) -> dict:
    """Tiny 2-layer models of both families whose vocabulary is the chat tokenizer's."""
    out = {}
    for family, preset in (("dots1", "tiny-dots"), ("olmoe", "tiny-olmoe")):
        cfg = get_preset(preset)
        cfg.num_layers = 2
        cfg.vocab_size = chat_tokenizer.vocab_size
        out[family] = build_model(cfg, seed=1).eval()
    return out
