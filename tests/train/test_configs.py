"""Every shipped train config loads, validates, and names a published recipe's numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from moelab.config import ConfigError
from moelab.train.config import TrainConfig

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "train").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_train_configs_load(path):
    cfg = TrainConfig.from_yaml(path)
    assert cfg.model.num_params() > 0 and cfg.max_steps > 0


def test_recipes_match_papers():
    dots = TrainConfig.from_yaml(CONFIGS[0].parent / "dots_llm1.yaml")
    assert dots.optim.lr == 3e-4 and dots.schedule.warmup_steps == 4000
    assert dots.batch.global_batch_size * dots.batch.seq_len == 64 * 1024**2
    assert dots.balance.bias_update_rate == 1e-3
    olmoe = TrainConfig.from_yaml(CONFIGS[0].parent / "olmoe_1b_7b.yaml")
    assert olmoe.batch.global_batch_size * olmoe.batch.seq_len == 4_194_304
    assert (olmoe.balance.lb_coef, olmoe.balance.z_coef) == (0.01, 0.001)


def test_override_errors_name_nested_fields():
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_yaml(CONFIGS[0].parent / "tiny_dots.yaml", ["model.moe.top_k=999"])
    assert err.value.path == "model.moe.top_k"
    with pytest.raises(ConfigError, match="seq_len"):
        TrainConfig.from_yaml(CONFIGS[0].parent / "tiny_dots.yaml", ["batch.seq_len=4096"])
