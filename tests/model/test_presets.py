"""Published parameter counts, and the closed-form count against a model built on meta."""

from __future__ import annotations

import pytest

from moelab.model import PRESETS, build_model, get_preset

PUBLISHED = {
    "dots.llm1": (142_774_373_888, 14_016_581_120),
    "olmoe-1b-7b": (6_919_161_856, 1_282_017_280),
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_counts(name):
    cfg = get_preset(name)
    assert (cfg.num_params(), cfg.num_active_params()) == PUBLISHED[name]


@pytest.mark.parametrize("name", list(PRESETS))
def test_formula_matches_meta_model(name):
    cfg = get_preset(name)
    model = build_model(cfg, device="meta")
    assert model.num_params() == cfg.num_params()
    # Active = total with (E - k) experts' weights removed per MoE layer.
    expert = 3 * cfg.hidden_size * cfg.moe.expert_intermediate_size
    removed = cfg.num_moe_layers * (cfg.moe.num_experts - cfg.moe.top_k) * expert
    assert cfg.num_active_params() == model.num_params() - removed


def test_tied_embeddings_counted_once():
    cfg = get_preset("tiny-olmoe")
    cfg.tie_word_embeddings = True
    model = build_model(cfg)
    assert model.lm_head.weight is model.embed_tokens.weight
    assert model.num_params() == cfg.num_params()


def test_unknown_preset_lists_known_names():
    with pytest.raises(KeyError, match="tiny-dots"):
        get_preset("gpt-5")
