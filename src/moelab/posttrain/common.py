"""What SFT and DPO share: the tokenizer and chat template of a run, found and checked once.

The tokenizer is ``data.tokenizer`` or the one beside ``init_from``; the template is that
directory's ``tokenizer_config.json`` ``chat_template`` when present, else the model family's
built-in one (the same choice ``moelab generate``/``serve`` make, so training and serving
render alike). Its files are copied into the run directory, so ``moelab export RUN`` and
``moelab generate RUN`` find them with the checkpoints.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from moelab.checkpoint.export import find_tokenizer
from moelab.infer.chat import ChatTemplate, load_chat_template
from moelab.posttrain.data import Loaded, load_jsonl
from moelab.tokens.tokenizer import Tokenizer
from moelab.train.config import TrainConfig

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def chat_setup(cfg: TrainConfig, write: bool = True) -> tuple[Tokenizer, ChatTemplate]:
    """Load and check the run's tokenizer and template; copy the files into out_dir if ``write``."""
    wanted = cfg.data.tokenizer or None
    tok_dir = find_tokenizer(cfg.init_from, wanted) if cfg.init_from else None
    if tok_dir is None and wanted:
        tok_dir = find_tokenizer(wanted, wanted)
    if tok_dir is None:
        raise FileNotFoundError(
            f"no tokenizer: set data.tokenizer (none beside init_from {cfg.init_from or '(unset)'})"
        )
    tokenizer = Tokenizer.from_file(tok_dir)
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise ValueError(
            f"tokenizer at {tok_dir} has {tokenizer.vocab_size} ids but the model only "
            f"{cfg.model.vocab_size} embeddings"
        )
    template = load_chat_template(tok_dir, cfg.model.family)
    missing = [t for t in template.stop_tokens if tokenizer.hf.token_to_id(t) is None]
    if missing:
        raise ValueError(
            f"the {template.name} chat template ends turns with {missing}, which the tokenizer "
            f"at {tok_dir} does not have as tokens"
        )
    out = Path(cfg.out_dir)
    if write and out.resolve() != Path(tok_dir).resolve():
        out.mkdir(parents=True, exist_ok=True)
        for name in TOKENIZER_FILES:
            if (Path(tok_dir) / name).is_file():
                shutil.copyfile(Path(tok_dir) / name, out / name)
    return tokenizer, template


def pad_id(tokenizer: Tokenizer) -> int:
    """Any valid id for padding (it is never attended to by real tokens, nor trained)."""
    for candidate in (tokenizer.pad_id, tokenizer.eos_id):
        if candidate is not None:
            return candidate
    return 0


def load_records(cfg: TrainConfig, trainer, parse: Callable[[Any], Any]) -> Loaded:
    """``data.path`` parsed record by record; rank 0 lists the skipped lines in the run dir."""
    loaded = load_jsonl(cfg.data.path, parse, cfg.data.on_error, log=trainer.log)
    if loaded.problems and trainer.dist.is_rank0:
        (trainer.out_dir / "data_problems.txt").write_text("\n".join(loaded.problems) + "\n")
    return loaded
