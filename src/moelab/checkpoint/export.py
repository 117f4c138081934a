"""Export a model as a Hugging Face directory that transformers and vLLM load (``dots1``/``olmoe``).

``export_hf`` writes, into one directory made next to its destination and renamed into place:

* ``config.json`` and safetensors (per-expert keys, sharded with an index past a size) via
  ``hf.save_pretrained``, in the chosen dtype with the dots correction bias kept in fp32;
* ``tokenizer.json`` copied as it is, and a ``tokenizer_config.json`` that transformers reads
  (``PreTrainedTokenizerFast``, the special tokens, the chat template the caller passes);
* ``generation_config.json`` with the family's stop ids (the EOS, plus ``<|endofresponse|>``
  for dots when the tokenizer has it; no BOS for either family).

Before anything is written the config is checked against what the target family's
transformers class can express (``hf_incompatibilities``); afterwards the written key set is
checked against the layout vLLM's ``dots1`` / ``olmoe`` loaders read (``expected_hf_keys``).
A model that cannot be exported faithfully is refused with the reason, never exported wrong.

What this module does not know: chat template contents (the caller passes the Jinja source),
tokenization (tokenizer files are copied and their special tokens looked up as JSON).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from moelab.checkpoint.hf import (
    INDEX_FILE,
    SINGLE_FILE,
    CheckpointError,
    read_hf_config,
    save_pretrained,
)
from moelab.checkpoint.hf_config import UnsupportedConfigError, hf_incompatibilities
from moelab.checkpoint.layout import MODEL_CONFIG, load_model, resolve_model_path
from moelab.model.config import ModelConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DOTS_END_OF_RESPONSE = "<|endofresponse|>"


def read_config(src: str | Path) -> ModelConfig:
    """The ModelConfig of an HF directory, moelab checkpoint or run directory, without weights."""
    kind, resolved = resolve_model_path(src)
    return (
        read_hf_config(resolved) if kind == "hf" else ModelConfig.from_yaml(resolved / MODEL_CONFIG)
    )


def expected_hf_keys(cfg: ModelConfig) -> set[str]:
    """Every tensor name vLLM's ``dots1`` / ``olmoe`` weight loaders read for this config."""
    keys = {"model.embed_tokens.weight", "model.norm.weight"}
    if not cfg.tie_word_embeddings:
        keys.add("lm_head.weight")
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        keys |= {p + "input_layernorm.weight", p + "post_attention_layernorm.weight"}
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            keys.add(f"{p}self_attn.{proj}.weight")
            if cfg.attention.bias:
                keys.add(f"{p}self_attn.{proj}.bias")
        if cfg.attention.qk_norm != "none":
            keys |= {p + "self_attn.q_norm.weight", p + "self_attn.k_norm.weight"}
        keys |= _mlp_keys(cfg, i, p + "mlp.")
    return keys


def _mlp_keys(cfg: ModelConfig, layer: int, p: str) -> set[str]:
    swiglu = ("gate_proj", "up_proj", "down_proj")
    if not cfg.is_moe_layer(layer):
        return {f"{p}{w}.weight" for w in swiglu}
    keys = {p + "gate.weight"}
    if cfg.moe.expert_bias:
        keys.add(p + "gate.e_score_correction_bias")
    keys |= {f"{p}experts.{e}.{w}.weight" for e in range(cfg.moe.num_experts) for w in swiglu}
    if cfg.moe.num_shared_experts:
        keys |= {f"{p}shared_experts.{w}.weight" for w in swiglu}
    return keys


def check_layout(path: Path, cfg: ModelConfig) -> None:
    """Raise CheckpointError unless ``path`` holds exactly the vLLM key set, bias in fp32."""
    from safetensors import safe_open

    index = path / INDEX_FILE
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = [SINGLE_FILE]
    dtypes: dict[str, str] = {}
    for name in files:
        with safe_open(str(path / name), framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118 (safe_open is not a mapping)
                dtypes[key] = str(fh.get_slice(key).get_dtype())
    expected = expected_hf_keys(cfg)
    problems = [f"missing {k}" for k in sorted(expected - set(dtypes))]
    problems += [f"unexpected {k}" for k in sorted(set(dtypes) - expected)]
    problems += [
        f"{k} is {d}, not F32"
        for k, d in sorted(dtypes.items())
        if k.endswith("correction_bias") and d != "F32"
    ]
    if problems:
        raise CheckpointError(
            f"{path}: not the vLLM {cfg.family} layout:\n  - " + "\n  - ".join(problems[:20])
        )


def find_tokenizer(src: str | Path, tokenizer: str | Path | None) -> Path | None:
    """The directory holding tokenizer.json: ``tokenizer`` if given, else beside the checkpoint."""
    if tokenizer is not None:
        path = Path(tokenizer)
        path = path.parent if path.is_file() else path
        if not (path / "tokenizer.json").is_file():
            raise FileNotFoundError(f"no tokenizer.json at {tokenizer}")
        return path
    _, resolved = resolve_model_path(src)
    for directory in (resolved, Path(src)):
        if (directory / "tokenizer.json").is_file():
            return directory
    return None


def _token_id(tokenizer_json: dict, token: str | None) -> int | None:
    if token is None:
        return None
    for added in tokenizer_json.get("added_tokens", []):
        if added.get("content") == token:
            return int(added["id"])
    vocab = (tokenizer_json.get("model") or {}).get("vocab")
    return vocab.get(token) if isinstance(vocab, dict) else None


def _content(value: Any) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def write_tokenizer_files(
    out: Path, tok_dir: Path, cfg: ModelConfig, chat_template: str | None
) -> list[int]:
    """Copy tokenizer.json, write an HF tokenizer_config.json; return the stop ids found."""
    shutil.copyfile(tok_dir / "tokenizer.json", out / "tokenizer.json")
    old = tok_dir / "tokenizer_config.json"
    config: dict[str, Any] = json.loads(old.read_text()) if old.is_file() else {}
    config = {k: v for k, v in config.items() if not k.startswith("moelab_")}
    config.setdefault("eos_token", "<|endoftext|>")
    config.setdefault("bos_token", None)
    config.update(
        tokenizer_class="PreTrainedTokenizerFast",
        model_max_length=cfg.max_position_embeddings,
        clean_up_tokenization_spaces=False,
    )
    if chat_template and "chat_template" not in config:
        config["chat_template"] = chat_template
    (out / "tokenizer_config.json").write_text(
        json.dumps(config, indent=2, ensure_ascii=False) + "\n"
    )
    raw = json.loads((tok_dir / "tokenizer.json").read_text())
    stops = [_token_id(raw, _content(config.get("eos_token")))]
    if cfg.family == "dots1":
        stops.append(_token_id(raw, DOTS_END_OF_RESPONSE))
    return [t for t in stops if t is not None]


def generation_config(cfg: ModelConfig, stop_ids: list[int]) -> dict[str, Any]:
    eos = list(dict.fromkeys([t for t in [cfg.eos_token_id, *stop_ids] if t is not None]))
    return {
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": eos[0] if len(eos) == 1 else (eos or None),
        "pad_token_id": cfg.pad_token_id,
        "do_sample": False,
    }


def export_hf(
    src: str | Path,
    out: str | Path,
    *,
    dtype: str = "bfloat16",
    max_shard_bytes: int = 5 * 1024**3,
    tokenizer: str | Path | None = None,
    chat_template: str | None = None,
) -> Path:
    """Write ``out`` as a transformers/vLLM directory; raises UnsupportedConfigError with reasons."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    cfg = read_config(src)
    problems = hf_incompatibilities(cfg)
    if problems:
        raise UnsupportedConfigError(
            f"cannot export as transformers {cfg.family!r}: " + "; ".join(problems)
        )
    tok_dir = find_tokenizer(src, tokenizer)
    model = load_model(src, dtype=DTYPES[dtype])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        staged = save_pretrained(model, tmp / "hf", max_shard_bytes=max_shard_bytes)
        stop_ids = write_tokenizer_files(staged, tok_dir, cfg, chat_template) if tok_dir else []
        gen = generation_config(cfg, stop_ids)
        (staged / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        check_layout(staged, cfg)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staged, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
