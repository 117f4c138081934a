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
