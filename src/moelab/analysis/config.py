"""``AnalysisConfig``: how the routing sample is drawn and what the metrics keep.

What this module does not know: models or files; it is settings and their validation.
"""

from __future__ import annotations

from dataclasses import dataclass

from moelab.config import Config, ConfigError


def _at(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


@dataclass
class AnalysisConfig(Config):
    """``moelab analyze``: one fixed token sample through every checkpoint of a run."""

    num_sequences: int = 32
    """Rows in the fixed sample (the same rows for every checkpoint)."""
    seq_len: int = 128
    """Tokens per row (capped at the model's context)."""
    seed: int = 1234
    """Which rows of the shard stream are drawn."""
    batch_size: int = 8
    """Rows per forward pass while collecting."""
    min_token_count: int = 8
    """A token id enters vocabulary specialization only if it occurs this often in the sample."""
    top_tokens: int = 8
    """Top tokens kept per expert (final checkpoint)."""
    max_domains: int = 8
    """Largest domains kept by token count; the rest are pooled as "other"."""
    domain_field: str | None = None
    """Document ``metadata`` key holding the domain label (null: the URL host, else the source)."""

    def validate(self, path: str) -> None:
        for name in ("num_sequences", "seq_len", "batch_size", "min_token_count", "top_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(_at(path, name), f"must be >= 1, got {getattr(self, name)}")
        if self.max_domains < 1:
            raise ConfigError(_at(path, "max_domains"), f"must be >= 1, got {self.max_domains}")
