"""SFTConfig and DPOConfig: a TrainConfig whose data are chat JSONL files, plus DPO's settings.

``init_from`` names the starting weights (moelab checkpoint, run directory or HF directory).
When it is set, ``model`` comes from that checkpoint and the YAML's ``model:`` keys (and
``model.*`` overrides) only change fields on top of it (``model.moe.dispatch=loop``), so a
post-training config never restates an architecture it could get wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

import yaml

from moelab.config import Config, ConfigError, apply_overrides, deep_merge
from moelab.train.config import TrainConfig


@dataclass
class ChatDataConfig(Config):
    path: str = ""
    """JSONL file: SFT ``{"messages": [...]}``; DPO ``{"prompt", "chosen", "rejected"}``. Required."""
    tokenizer: str = ""
    """tokenizer.json or its directory; empty = the one beside ``init_from``."""
    on_error: Literal["raise", "skip"] = "raise"
    """A malformed record (bad roles, empty assistant turn, longer than batch.seq_len + 1):
    raise with its line number, or skip it and report every skipped line."""
    seed: int = 0
    """Shuffling (and, for SFT, packing) seed; the order is a function of (seed, epoch)."""

    def validate(self, path: str) -> None:
        if not self.path:
            raise ConfigError(f"{path}.path", "is required: a JSONL file of records")


@dataclass
class SFTConfig(TrainConfig):
    """Rows of ``batch.seq_len`` tokens, each packing whole conversations; batch sizes in rows."""

    data: ChatDataConfig = field(default_factory=ChatDataConfig)
    out_dir: str = "runs/sft"


@dataclass
class DPOParams(Config):
    beta: float = 0.1
    """β of the DPO loss −log σ(β·((π_c − ref_c) − (π_r − ref_r))) (Tülu 2 / OLMoE used 0.1)."""
    reference: Literal["model", "precomputed"] = "model"
    """model: a frozen copy of the initial weights runs beside the policy; precomputed: its
    log-probabilities are computed once, stored in out_dir, and the copy is freed."""

    def validate(self, path: str) -> None:
        if self.beta <= 0:
            raise ConfigError(f"{path}.beta", f"must be > 0, got {self.beta}")


@dataclass
class DPOConfig(TrainConfig):
    """Batch sizes count preference pairs; batch.seq_len bounds prompt + response tokens."""

    data: ChatDataConfig = field(default_factory=ChatDataConfig)
    dpo: DPOParams = field(default_factory=DPOParams)
    out_dir: str = "runs/dpo"


C = TypeVar("C", bound=TrainConfig)


def load_config(cls: type[C], path: str | Path | None, overrides: list[str] | None = None) -> C:
    """Read a post-training YAML (or only overrides when ``path`` is None); model from init_from."""
    data: dict = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError("", f"config file not found: {path}") from None
        except yaml.YAMLError as err:
            raise ConfigError("", f"{path} is not valid YAML: {err}") from None
    return from_dict(cls, data, overrides)


def from_dict(cls: type[C], data: dict, overrides: list[str] | None = None) -> C:
    if not isinstance(data, dict):
        raise ConfigError("", f"expected a mapping at the top level, got {type(data).__name__}")
    data = apply_overrides(data, overrides or [])
    init_from = data.get("init_from")
    if init_from:
        from moelab.checkpoint.export import read_config

        try:
            base = read_config(init_from).to_dict()
        except (OSError, ValueError) as err:
            raise ConfigError("init_from", str(err)) from None
        data["model"] = deep_merge(base, data.get("model") or {})
    return cls.from_dict(data)
