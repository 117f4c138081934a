"""What a moelab checkpoint directory holds, how it is written atomically, and how it is checked.

A run directory holds checkpoints as ``step_{n:08d}/`` plus a ``latest`` file naming the newest
complete one. Each checkpoint directory holds:

* ``model.yaml``: the ModelConfig (enough to rebuild the model without the training config);
* ``model.safetensors``: the weights under moelab names (experts stacked);
* ``train_state.pt``: optimizer, scheduler, loader, RNG and balance states (training only);
* ``config.yaml``: the resolved config of the stage that wrote it (optional);
* ``meta.json``: step, tokens seen, time, code version, and a manifest of every other file
  with its size and sha256.

Writing goes to a temporary sibling directory, then ``os.replace`` renames it into place, and
only then is ``latest`` updated (also by rename), so a crash at any point leaves either the old
or the new checkpoint, never a half-written one under a final name. Reading checks the manifest
and reports a truncated or corrupted file by name.

This module knows nothing about optimizers or training loops: it stores what it is given.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from moelab import __version__
from moelab.checkpoint.hf import CheckpointError, aligned
from moelab.model.config import ModelConfig
from moelab.model.router import fp32_state_names
from moelab.model.transformer import MoETransformer

MODEL_FILE = "model.safetensors"
MODEL_CONFIG = "model.yaml"
TRAIN_STATE = "train_state.pt"
META = "meta.json"
LATEST = "latest"


@dataclass
class CheckpointInfo:
    path: Path
    step: int
    tokens: int
    meta: dict[str, Any]


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    run_dir: str | Path,
    *,
    step: int,
    tokens: int,
    model: MoETransformer,
    train_state: dict[str, Any] | None = None,
    config_yaml: str | None = None,
    extra_meta: dict[str, Any] | None = None,
    update_latest: bool = True,
) -> Path:
    """Write ``run_dir/step_{step}`` atomically and (by default) point ``latest`` at it."""
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / step_dir_name(step)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=run_dir))
    try:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        if model.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        save_file(state, str(tmp / MODEL_FILE), metadata={"format": "pt", "moelab": __version__})
        model.config.to_yaml(tmp / MODEL_CONFIG)
        if config_yaml is not None:
            (tmp / "config.yaml").write_text(config_yaml)
        if train_state is not None:
            torch.save(train_state, tmp / TRAIN_STATE)
        files = {
            p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir())
        }
        meta = {
            "step": step,
            "tokens": tokens,
            "time": time.time(),
            "moelab_version": __version__,
            "torch_version": torch.__version__,
            "files": files,
            **(extra_meta or {}),
        }
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")
        for p in tmp.iterdir():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if update_latest:
        _write_latest(run_dir, final.name)
    return final


def _write_latest(run_dir: Path, name: str) -> None:
    tmp = run_dir / f".{LATEST}.tmp"
    tmp.write_text(name + "\n")
    os.replace(tmp, run_dir / LATEST)


def validate_checkpoint(path: str | Path, *, check_hashes: bool = True) -> CheckpointInfo:
    """Check a checkpoint directory against its manifest; raise CheckpointError naming the problem."""
    path = Path(path)
    meta_file = path / META
    if not meta_file.exists():
        raise CheckpointError(f"{path}: no {META} (incomplete or not a moelab checkpoint)")
    try:
        meta = json.loads(meta_file.read_text())
        files = meta["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{meta_file} is corrupt: {err}") from None
    for name, entry in files.items():
        file = path / name
        if not file.exists():
            raise CheckpointError(f"{path}: {name} is missing")
        size = file.stat().st_size
        if size != entry["bytes"]:
            raise CheckpointError(
                f"{file}: {size} bytes, manifest says {entry['bytes']} (truncated?)"
            )
        if check_hashes and _sha256(file) != entry["sha256"]:
            raise CheckpointError(f"{file}: checksum does not match the manifest (corrupted)")
    if MODEL_FILE not in files or MODEL_CONFIG not in files:
        raise CheckpointError(f"{path}: manifest lists no {MODEL_FILE} / {MODEL_CONFIG}")
    return CheckpointInfo(path, int(meta["step"]), int(meta["tokens"]), meta)


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoint directories of a run, oldest first (temporary directories excluded)."""
    run_dir = Path(run_dir)
    return sorted(p for p in run_dir.glob("step_*") if p.is_dir())


def latest_valid_checkpoint(run_dir: str | Path, *, warn=print) -> CheckpointInfo | None:
    """The newest checkpoint that validates, warning about each newer one that does not."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return validate_checkpoint(path)
        except CheckpointError as err:
            warn(f"warning: skipping bad checkpoint {path.name}: {err}")
    return None


def load_model_from_checkpoint(
    path: str | Path, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> MoETransformer:
    """Rebuild the model stored in a (validated) moelab checkpoint directory."""
    from safetensors.torch import load_file

    info = validate_checkpoint(path)
    cfg = ModelConfig.from_yaml(info.path / MODEL_CONFIG)
    state = load_file(str(info.path / MODEL_FILE), device=str(device))
    with torch.device("meta"):
        model = MoETransformer(cfg)
    expected = set(model.state_dict())
    if cfg.tie_word_embeddings:
        expected.discard("lm_head.weight")
        state["lm_head.weight"] = state.get("embed_tokens.weight")
    missing, unexpected = expected - set(state), set(state) - expected - {"lm_head.weight"}
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match model.yaml: missing {sorted(missing)}, unexpected {sorted(unexpected)}"
        )
    keep_fp32 = fp32_state_names(model)
    state = {
        k: v.float()
        if k in keep_fp32
        else (v.to(dtype) if dtype is not None and v.is_floating_point() else v)
        for k, v in state.items()
    }
    model.load_state_dict({k: aligned(v) for k, v in state.items()}, strict=True, assign=True)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    model.rotary.inv_freq = model.rotary._inv_freq(torch.device(device))
    return model


def resolve_model_path(path: str | Path) -> tuple[str, Path]:
    """Classify ``path``: ('hf', dir) | ('moelab', checkpoint dir); a run dir resolves to its latest."""
    path = Path(path)
    if (path / "config.json").exists():
        return "hf", path
    if (path / META).exists():
        return "moelab", path
    if (path / LATEST).exists():
        return "moelab", path / (path / LATEST).read_text().strip()
    if list_checkpoints(path):
        return "moelab", list_checkpoints(path)[-1]
    raise CheckpointError(
        f"{path}: not a model directory (no config.json, {META}, {LATEST} or step_* checkpoints)"
    )


def load_model(
    path: str | Path, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> MoETransformer:
    """Load a model from an HF directory, a moelab checkpoint, or a run directory (its latest)."""
    kind, resolved = resolve_model_path(path)
    if kind == "hf":
        from moelab.checkpoint.hf import load_pretrained

        return load_pretrained(resolved, dtype=dtype, device=device)
    return load_model_from_checkpoint(resolved, dtype=dtype, device=device)
