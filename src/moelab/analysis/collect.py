"""Run checkpoints over the fixed sample and store their routing decisions as ``.npz``.

A routing trace holds, for one checkpoint, ``expert_ids`` of shape (L, N, T, K): the experts
chosen for every (MoE layer, sequence, position, slot), plus ``layers`` (the model layer index of
each MoE layer), ``num_experts``, ``top_k``, ``step`` and ``tokens`` (-1 when unknown, e.g. an
HF directory), and the collection speed. One file per checkpoint,
``routing/{name}.npz``; a rerun skips files that exist for the same sample (their
``sample_sha`` matches), so an interrupted analysis resumes.

Checkpoints are a run directory's ``step_*`` folders (oldest first), or any list of moelab
checkpoint / HF directories in training order; the last one is the "final" checkpoint that
saturation is measured against.

What this module does not know: what the metrics are; it records decisions only.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from moelab.analysis.sample import Sample
from moelab.checkpoint.layout import META, list_checkpoints, load_model, resolve_model_path
from moelab.infer.loading import DTYPES


@dataclass
class Trace:
    """Routing decisions of one checkpoint on the sample."""

    name: str
    step: int
    tokens: int
    expert_ids: np.ndarray
    """(L, N, T, K) integer expert ids."""
    layers: list[int]
    num_experts: int
    top_k: int
    tokens_per_s: float = 0.0

    def save(self, path: Path, sample_sha: str) -> None:
        np.savez_compressed(
            path,
            expert_ids=self.expert_ids,
            layers=np.array(self.layers, dtype=np.int64),
            meta=np.array(json.dumps(self._meta() | {"sample_sha": sample_sha})),
        )

    def _meta(self) -> dict:
        return {
            "name": self.name,
            "step": self.step,
            "tokens": self.tokens,
            "num_experts": self.num_experts,
            "top_k": self.top_k,
            "tokens_per_s": self.tokens_per_s,
        }

    @classmethod
    def load(cls, path: Path) -> Trace:
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            meta.pop("sample_sha", None)
            return cls(expert_ids=z["expert_ids"], layers=z["layers"].tolist(), **meta)


def sample_sha(sample: Sample) -> str:
    return hashlib.sha256(np.ascontiguousarray(sample.token_ids).tobytes()).hexdigest()[:16]


def checkpoints_of(paths: list[str | Path]) -> list[Path]:
    """Expand run directories into their ``step_*`` checkpoints; keep other paths as given."""
    out: list[Path] = []
    for path in map(Path, paths):
        steps = list_checkpoints(path)
        out.extend(steps if steps and not (path / META).exists() else [path])
    if not out:
        raise ValueError("no checkpoints to analyse")
    return out


def _step_and_tokens(path: Path) -> tuple[int, int]:
    kind, resolved = resolve_model_path(path)
    if kind != "moelab":
        return -1, -1
    meta = json.loads((resolved / META).read_text())
    return int(meta.get("step", -1)), int(meta.get("tokens", -1))


def trace_name(path: Path) -> str:
    """A file-safe name: the step folder name, else the directory name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in path.name) or "model"


@torch.no_grad()
@torch.inference_mode()
def route(
    model: torch.nn.Module, token_ids: np.ndarray, batch_size: int
) -> tuple[np.ndarray, list[int]]:
    """Expert ids (L, N, T, K) the routers choose for ``token_ids`` (N, T), and the MoE layers."""
    device = next(model.parameters()).device
    chunks, layers = [], []
    for i in range(0, len(token_ids), batch_size):
        batch = torch.from_numpy(token_ids[i : i + batch_size]).to(device)
        out = model(batch)
        layers = list(out.moe_layers)
        B, T = batch.shape
        chunks.append(np.stack([r.expert_ids_TK.view(B, T, -1).cpu().numpy() for r in out.router]))
    if not chunks or chunks[0].shape[0] == 0:
        raise ValueError("the model has no MoE layers to analyse")
    ids = np.concatenate(chunks, axis=1)
    return ids.astype(np.int16 if ids.max(initial=0) < 2**15 else np.int32), layers


def collect_trace(
    path: Path, sample: Sample, batch_size: int, device: str = "cpu", dtype: str | None = None
) -> Trace:
    """Load one checkpoint (in ``dtype``, e.g. bfloat16 for a real model) and record its routing."""
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    model = load_model(path, device=device, dtype=DTYPES.get(dtype or "")).eval()
    cfg = model.config
    if int(sample.token_ids.max()) >= cfg.vocab_size:
        raise ValueError(f"{path}: sample token ids exceed the model's vocab ({cfg.vocab_size})")
    if sample.token_ids.shape[1] > cfg.max_position_embeddings:
        raise ValueError(
            f"{path}: sample rows of {sample.token_ids.shape[1]} tokens exceed the model's "
            f"context ({cfg.max_position_embeddings}); lower seq_len"
        )
    route(model, sample.token_ids[:1], 1)  # warm-up: the first forward pays one-off costs
    t0 = time.perf_counter()
    ids, layers = route(model, sample.token_ids, batch_size)
    seconds = time.perf_counter() - t0
    step, tokens = _step_and_tokens(path)
    return Trace(
        name=trace_name(path),
        step=step,
        tokens=tokens,
        expert_ids=ids,
        layers=layers,
        num_experts=model.config.moe.num_experts,
        top_k=model.config.moe.top_k,
        tokens_per_s=sample.token_ids.size / seconds if seconds > 0 else 0.0,
    )


def collect(
    paths: list[str | Path],
    sample: Sample,
    out_dir: str | Path,
    *,
    batch_size: int = 8,
    device: str = "cpu",
    dtype: str | None = None,
    log=print,
) -> list[Path]:
    """Write ``out_dir/{name}.npz`` for every checkpoint (skipping finished ones); return them."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sha = sample_sha(sample)
    files = []
    for path in checkpoints_of(paths):
        file = out_dir / f"{trace_name(path)}.npz"
        if file.exists() and _sha_of(file) == sha:
            log(f"{file.name}: already collected")
        else:
            trace = collect_trace(path, sample, batch_size, device, dtype)
            trace.save(file, sha)
            log(
                f"{file.name}: {trace.expert_ids.shape[0]} MoE layers, {trace.tokens_per_s:,.0f} tok/s"
            )
        files.append(file)
    return files


def _sha_of(file: Path) -> str | None:
    try:
        with np.load(file) as z:
            return json.loads(str(z["meta"])).get("sample_sha")
    except (OSError, ValueError, KeyError):
        return None
