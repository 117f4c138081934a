"""ServeConfig: what `moelab serve` binds to and the bounds on what one request may ask.

Defaults are safe for a laptop: 127.0.0.1 only, no API key (set one with ``api_key`` or the
``MOELAB_API_KEY`` environment variable, which keeps it out of YAML files), and limits small
enough that no single request can hold the server for long.

What this module does not know: FastAPI, models or tokenizers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from moelab.config import Config, ConfigError


@dataclass
class ServeLimits(Config):
    max_tokens: int = 1024
    """Largest max_tokens a request may ask for."""
    max_prompt_tokens: int = 2048
    """Longest prompt (after the chat template) in tokens; longer ones get a 400."""
    max_n: int = 8
    """Most choices per request."""
    max_prompts: int = 16
    """Most prompts in one /v1/completions request (a list prompt)."""
    max_body_bytes: int = 1_000_000
    """Largest request body; larger ones get a 413 before being parsed."""
    max_logprobs: int = 20
    """Most top tokens a request may ask logprobs for (OpenAI's chat limit)."""

    def validate(self, path: str) -> None:
        if self.max_logprobs < 0:
            raise ConfigError(f"{path}.max_logprobs", f"must be >= 0, got {self.max_logprobs}")
        for name in ("max_tokens", "max_prompt_tokens", "max_n", "max_prompts", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{path}.{name}", f"must be >= 1, got {getattr(self, name)}")


@dataclass
class ServeConfig(Config):
    host: str = "127.0.0.1"
    """Interface to bind; 127.0.0.1 keeps the server local (0.0.0.0 exposes it)."""
    port: int = 8000
    model_name: str | None = None
    """The id served in /v1/models and required in requests; null uses the model directory's name."""
    api_key: str | None = None
    """Bearer key every /v1 request must present; null reads MOELAB_API_KEY, unset means none."""
    max_batch: int = 16
    """KV-cache rows: requests decoded together in one step."""
    max_len: int | None = None
    """KV-cache length per row; null means limits.max_prompt_tokens + limits.max_tokens, capped
    at the model's max_position_embeddings."""
    default_max_tokens: int = 16
    """max_tokens when a request gives none (the OpenAI default for completions)."""
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    """Weights dtype; null keeps what the checkpoint stores."""
    tokenizer: str | None = None
    """tokenizer.json or its directory; null looks beside the checkpoint."""
    limits: ServeLimits = field(default_factory=ServeLimits)

    def validate(self, path: str) -> None:
        if not 0 <= self.port < 65536:
            raise ConfigError(
                f"{path}.port" if path else "port", f"must be 0..65535, got {self.port}"
            )
        if self.max_batch < 1:
            raise ConfigError(
                f"{path}.max_batch" if path else "max_batch", f"must be >= 1, got {self.max_batch}"
            )
        if not 1 <= self.default_max_tokens <= self.limits.max_tokens:
            raise ConfigError(
                f"{path}.default_max_tokens" if path else "default_max_tokens",
                f"must be between 1 and limits.max_tokens ({self.limits.max_tokens})",
            )

    def cache_len(self) -> int:
        """KV-cache slots per row to ask for (the loader caps it at the model's context)."""
        return self.max_len or self.limits.max_prompt_tokens + self.limits.max_tokens
