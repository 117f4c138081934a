"""Load and save Hugging Face model directories (``dots1`` / ``olmoe``) as moelab models.

On disk (and in the public checkpoints) experts are stored per expert
(``model.layers.{i}.mlp.experts.{e}.gate_proj.weight``...); moelab keeps them stacked
(``layers.{i}.mlp.experts.gate_up_proj`` of shape (E, 2F, D), gate rows first, and
``down_proj`` (E, D, F)). Loading also accepts transformers 5.x's fused keys.

Loading is all-or-nothing: the full key set and every shape are checked before any weight
is used, and missing keys, unexpected keys, wrong shapes and unreadable (for example
truncated) safetensors files are all reported together in one ``CheckpointError``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from moelab.checkpoint.hf_config import from_hf_config, to_hf_config
from moelab.model.config import ModelConfig
from moelab.model.router import fp32_state_names
from moelab.model.transformer import MoETransformer

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3


class CheckpointError(ValueError):
    """A checkpoint directory is incomplete, inconsistent with its config, or unreadable."""


# -- key mapping ---------------------------------------------------------------------------

_EXPERT_KEY = re.compile(
    r"^model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$"
)
_FUSED_KEY = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)$")


def _moelab_to_hf_name(name: str) -> str:
    if name == "lm_head.weight":
        return name
    name = name.replace(".mlp.gate.expert_bias", ".mlp.gate.e_score_correction_bias")
    return "model." + name


def _hf_to_moelab_name(name: str) -> str:
    if name == "lm_head.weight":
        return name
    if not name.startswith("model."):
        return name  # reported as unexpected by the caller
    name = name[len("model.") :]
    return name.replace(".mlp.gate.e_score_correction_bias", ".mlp.gate.expert_bias")


def to_hf_state_dict(model: MoETransformer) -> dict[str, torch.Tensor]:
    """The model's weights under Hugging Face on-disk names, experts split per expert."""
    out: dict[str, torch.Tensor] = {}
    tied = model.config.tie_word_embeddings
    for name, tensor in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        tensor = tensor.detach()
        if name.endswith(".mlp.experts.gate_up_proj"):
            prefix = "model." + name[: -len("gate_up_proj")]
            gate, up = tensor.chunk(2, dim=1)
            for e in range(tensor.shape[0]):
                out[f"{prefix}{e}.gate_proj.weight"] = gate[e].contiguous()
                out[f"{prefix}{e}.up_proj.weight"] = up[e].contiguous()
        elif name.endswith(".mlp.experts.down_proj"):
            prefix = "model." + name[: -len("down_proj")]
            for e in range(tensor.shape[0]):
                out[f"{prefix}{e}.down_proj.weight"] = tensor[e].contiguous()
        else:
            out[_moelab_to_hf_name(name)] = tensor.contiguous()
    return out


def from_hf_state_dict(
    hf: dict[str, torch.Tensor], cfg: ModelConfig
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Convert HF names to moelab names, stacking per-expert tensors. Returns (state, problems)."""
    out: dict[str, torch.Tensor] = {}
    experts: dict[tuple[int, str], dict[int, torch.Tensor]] = {}
    problems: list[str] = []
    for name, tensor in hf.items():
        if m := _EXPERT_KEY.match(name):
            experts.setdefault((int(m[1]), m[3]), {})[int(m[2])] = tensor
        elif m := _FUSED_KEY.match(name):
            out[f"layers.{m[1]}.mlp.experts.{m[2]}"] = tensor
        else:
            out[_hf_to_moelab_name(name)] = tensor
    E = cfg.moe.num_experts
    for layer in sorted({layer for layer, _ in experts}):
        parts = {}
        for proj in ("gate_proj", "up_proj", "down_proj"):
            got = experts.get((layer, proj), {})
            missing = sorted(set(range(E)) - set(got))
            extra = sorted(set(got) - set(range(E)))
            if missing:
                problems.append(
                    f"missing model.layers.{layer}.mlp.experts.{{{_ranges(missing)}}}.{proj}.weight"
                )
            if extra:
                problems.append(
                    f"unexpected model.layers.{layer}.mlp.experts.{{{_ranges(extra)}}}.{proj}.weight"
                )
            if missing or extra:
                continue
            shapes = {tuple(t.shape) for t in got.values()}
            if len(shapes) != 1:
                problems.append(
                    f"layer {layer} {proj}: experts have different shapes {sorted(shapes)}"
                )
                continue
            parts[proj] = torch.stack([got[e] for e in range(E)])
        if len(parts) == 3:
            out[f"layers.{layer}.mlp.experts.gate_up_proj"] = torch.cat(
                [parts["gate_proj"], parts["up_proj"]], dim=1
            )
            out[f"layers.{layer}.mlp.experts.down_proj"] = parts["down_proj"]
    return out, problems


def _ranges(ids: list[int]) -> str:
    """Compact [0, 1, 2, 5] as '0-2,5' for error messages."""
    spans, start, prev = [], ids[0], ids[0]
    for cur in ids[1:]:
        if cur != prev + 1:
            spans.append(str(start) if start == prev else f"{start}-{prev}")
            start = cur
        prev = cur
    spans.append(str(start) if start == prev else f"{start}-{prev}")
    return ",".join(spans)


# -- reading -------------------------------------------------------------------------------


def _weight_files(path: Path) -> list[Path]:
    index = path / INDEX_FILE
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise CheckpointError(f"{index} is not a valid safetensors index: {err}") from None
        files = sorted({path / f for f in weight_map.values()})
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise CheckpointError(f"{path}: index lists shard files that do not exist: {missing}")
        return files
    if (path / SINGLE_FILE).exists():
        return [path / SINGLE_FILE]
    found = sorted(path.glob("*.safetensors"))
    if found:
        return found
    raise CheckpointError(f"{path}: no {SINGLE_FILE}, {INDEX_FILE} or *.safetensors found")


def _read_tensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import SafetensorError, safe_open

    for file in files:
        try:
            with safe_open(str(file), framework="pt") as fh:
                for key in fh.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    yield key, fh.get_tensor(key)
        except (SafetensorError, OSError, RuntimeError) as err:
            raise CheckpointError(
                f"{file}: cannot read safetensors file (truncated or corrupt?): {err}"
            ) from None


def read_hf_config(path: str | Path) -> ModelConfig:
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.exists():
        raise CheckpointError(f"{path}: no config.json")
    try:
        raw = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{config_file} is not valid JSON: {err}") from None
    return from_hf_config(raw)


def load_pretrained(
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    config_overrides: list[str] | None = None,
) -> MoETransformer:
    """Load a local Hugging Face ``dots1`` or ``olmoe`` directory as a moelab model.

    Args:
        path: directory with config.json and model.safetensors (or shards + index).
        dtype: cast floating weights to this dtype (the expert bias and an fp32 router's weight
            stay fp32, as transformers keeps them); default keeps the dtype stored in the files.
        device: where the weights go.
        config_overrides: dotted overrides applied to the mapped config (e.g. ``moe.dispatch=loop``).
    """
    path = Path(path)
    cfg = read_hf_config(path)
    if config_overrides:
        cfg = ModelConfig.from_dict(cfg.to_dict(), config_overrides)
    hf_tensors = dict(_read_tensors(_weight_files(path)))
    state, problems = from_hf_state_dict(hf_tensors, cfg)
    with torch.device("meta"):
        model = MoETransformer(cfg)
    expected = {k: v for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
        state.pop("lm_head.weight", None)  # some writers store the tied copy too
    problems += _compare(expected, state)
    if problems:
        raise CheckpointError(
            f"{path}: checkpoint does not match its config:\n  - " + "\n  - ".join(problems)
        )
    if cfg.tie_word_embeddings:
        state["lm_head.weight"] = state["embed_tokens.weight"]
    keep_fp32 = fp32_state_names(model)
    for name, tensor in state.items():
        if name in keep_fp32:
            tensor = tensor.float()
        elif dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        state[name] = aligned(tensor.to(device))
    model.load_state_dict(state, strict=True, assign=True)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    model.rotary.inv_freq = model.rotary._inv_freq(torch.device(device))
    return model


def aligned(tensor: torch.Tensor, alignment: int = 64) -> torch.Tensor:
    """``tensor``, copied if its storage is not ``alignment``-byte aligned.

    Tensors read from a safetensors file can sit at any offset of one buffer, and CPU GEMM
    kernels pick different code paths (and round differently) for unaligned operands; aligned
    copies make a reloaded model compute bit-identically to the one that was saved.
    """
    return tensor if tensor.data_ptr() % alignment == 0 else tensor.clone()


def _compare(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> list[str]:
    problems = [f"missing {_moelab_to_hf_name(k)}" for k in sorted(set(expected) - set(got))]
    problems += [f"unexpected {_moelab_to_hf_name(k)}" for k in sorted(set(got) - set(expected))]
    for key in sorted(set(expected) & set(got)):
        if tuple(expected[key].shape) != tuple(got[key].shape):
            problems.append(
                f"wrong shape for {_moelab_to_hf_name(key)}: file {tuple(got[key].shape)}, "
                f"config needs {tuple(expected[key].shape)}"
            )
    return problems


# -- writing -------------------------------------------------------------------------------


def save_pretrained(
    model: MoETransformer, path: str | Path, *, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES
) -> Path:
    """Write config.json and safetensors (sharded with an index past ``max_shard_bytes``).

    The directory is written next to its destination and renamed into place, so a crash
    never leaves a half-written checkpoint under ``path``.
    """
    from safetensors.torch import save_file

    path = Path(path)
    dtype_name = str(model.embed_tokens.weight.dtype).removeprefix("torch.")
    config = to_hf_config(model.config, dtype_name)  # refuses before anything is written
    tensors = {k: v.cpu() for k, v in to_hf_state_dict(model).items()}
    shards = _plan_shards(tensors, max_shard_bytes)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        if len(shards) == 1:
            save_file(shards[0], str(tmp / SINGLE_FILE), metadata={"format": "pt"})
        else:
            weight_map = {}
            for i, shard in enumerate(shards, 1):
                name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, str(tmp / name), metadata={"format": "pt"})
                weight_map.update(dict.fromkeys(shard, name))
            total = sum(t.numel() * t.element_size() for t in tensors.values())
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _plan_shards(tensors: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    return shards
