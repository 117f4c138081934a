"""Build a ``TextGenerator`` from a model path: weights, tokenizer and chat template.

The model comes from ``moelab.checkpoint.layout.load_model`` (an HF directory, a moelab
checkpoint, or a run directory's latest). The tokenizer is ``--tokenizer`` when given, else a
``tokenizer.json`` in the resolved checkpoint directory or the directory named on the command
line (a run directory). The chat template is that directory's ``tokenizer_config.json``
``chat_template`` when present, else the model family's built-in one.

What this module does not know: HTTP or command-line parsing.
"""

from __future__ import annotations

from pathlib import Path

import torch

from moelab.checkpoint.export import find_tokenizer
from moelab.checkpoint.layout import load_model, resolve_model_path
from moelab.infer.chat import load_chat_template
from moelab.infer.engine import Engine
from moelab.infer.text import TextGenerator
from moelab.tokens.tokenizer import Tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def find_tokenizer_dir(model_path: str | Path, tokenizer: str | Path | None = None) -> Path:
    """The directory holding tokenizer.json; raises FileNotFoundError saying where it looked."""
    found = find_tokenizer(model_path, tokenizer)
    if found is None:
        _, resolved = resolve_model_path(model_path)
        places = dict.fromkeys(map(str, (resolved, Path(model_path))))
        raise FileNotFoundError(
            f"no tokenizer.json in {' or '.join(places)}; pass --tokenizer PATH"
        )
    return found


def load_generator(
    model_path: str | Path,
    *,
    tokenizer: str | Path | None = None,
    device: str = "cpu",
    dtype: str | None = None,
    max_batch: int = 8,
    max_len: int | None = None,
) -> TextGenerator:
    """Model + tokenizer + chat template + engine (``max_len`` is capped at the model's context)."""
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    tok_path = find_tokenizer_dir(model_path, tokenizer)
    model = load_model(model_path, dtype=DTYPES.get(dtype or ""), device=device)
    tok = Tokenizer.from_file(tok_path)
    template = load_chat_template(tok_path, model.config.family)
    context = model.config.max_position_embeddings
    engine = Engine(model, max_batch=max_batch, max_len=min(max_len or context, context))
    return TextGenerator(engine, tok, template)
