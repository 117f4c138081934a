"""The single-device training loop: micro batches → accumulate → clip → step → balance → log → save.

One optimizer step consumes ``global_batch / micro_batch`` micro batches (the count follows the
batch-size ramp). After the step, the aux-loss-free bias update sees the expert counts of the
whole global batch. Checkpoints are written only at step boundaries and hold everything the
next step depends on (weights and biases, optimizer, loader position, RNG states, step and
tokens), so a resumed run repeats the uninterrupted one bit for bit on CPU.

What is optimized is an ``Objective`` (moelab.train.objective): the batch source and the loss.
Pretraining on token shards is the default; SFT and DPO (moelab.posttrain) pass their own, so
every stage shares this loop. ``init_from`` starts from existing weights with a fresh optimizer.

What this module does not know: how parallelism and torch.compile are applied
(moelab.parallel wraps and compiles the model, and reduces counts), or what a checkpoint file looks like (moelab.checkpoint.layout).
"""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moelab.checkpoint.dcp import load_dcp, save_dcp
from moelab.checkpoint.hf import CheckpointError
from moelab.checkpoint.layout import (
    TRAIN_STATE,
    CheckpointInfo,
    latest_valid_checkpoint,
    list_checkpoints,
    save_checkpoint,
    validate_checkpoint,
)
from moelab.model.losses import (
    load_balancing_loss,
    router_z_loss,
    sequence_balance_loss,
)
from moelab.model.transformer import MoETransformer, build_model, model_flops_per_token
from moelab.tokens.loader import TokenLoader
from moelab.train.balance import load_metrics, update_expert_bias
from moelab.train.config import TrainConfig
from moelab.train.distributed import setup as setup_distributed
from moelab.train.distributed import shard_model, stage_losses
from moelab.train.metrics import MetricsLogger, detect_peak_tflops
from moelab.train.objective import Objective, PretrainObjective
from moelab.train.optim import build_optimizer
from moelab.train.schedule import global_batch_at, lr_at


@dataclass
class TrainState:
    step: int = 0
    tokens: int = 0


class Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        resume: str | None = None,
        log=print,
        objective: Callable[[Trainer], Objective] | None = None,
    ):
        """``objective(trainer)`` builds what is optimized (default: pretraining on cfg.data)."""
        self.cfg, self.log = cfg, log
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.dist = setup_distributed(cfg.parallel, cfg.device, cfg.model.moe.num_experts)
        self.device = self.dist.device
        self.out_dir = Path(cfg.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        _seed_everything(cfg.seed)
        self.model: MoETransformer = build_model(cfg.model, device=self.device, seed=cfg.seed)
        if cfg.init_from and not (resume and list_checkpoints(self.out_dir)):
            self._init_from(cfg.init_from)
        shard_model(
            self.model,
            self.dist,
            compile_mode=cfg.compile.mode,
            compile_backend=cfg.compile.backend,
            **stage_losses(cfg),
        )
        if self.dist.compiled and self.dist.is_rank0:
            self.log(f"torch.compile ({cfg.compile.backend}): {', '.join(self.dist.compiled)}")
        self.optimizer = build_optimizer(
            self.model, cfg.optim, fused=_resolve(cfg.fused_optimizer, not self.dist.enabled)
        )
        self.dist.adapt_optimizer(self.optimizer)
        if objective is not None and self.dist.pipeline is not None:
            raise ValueError(
                "parallel.pp > 1 runs pretraining only: SFT and DPO losses are not split over "
                "pipeline stages; use parallel.dp_shard / parallel.ep for them"
            )
        self.loader: Objective = objective(self) if objective else self._pretrain_objective()
        self.state = TrainState()
        if resume:
            self._resume(resume)
        if self.dist.is_rank0:
            (self.out_dir / "config.yaml").write_text(cfg.to_yaml())
        self.batches = iter(self.loader)
        self.flops_per_token = model_flops_per_token(cfg.model, cfg.batch.seq_len)
        self.peak_tflops = cfg.peak_tflops or detect_peak_tflops(self.device)
        self._last_intermediate = (
            self.state.tokens // cfg.checkpoint.every_tokens if cfg.checkpoint.every_tokens else 0
        )

    def _pretrain_objective(self) -> PretrainObjective:
        cfg = self.cfg
        if not cfg.data.shards:
            raise ValueError("data.shards is required: a folder made by `moelab tokens tokenize`")
        loader = TokenLoader(
            cfg.data.shards,
            seq_len=cfg.batch.seq_len,
            batch_size=cfg.batch.micro_batch_size,
            seed=cfg.data.seed,
            tokenizer_hash=cfg.data.tokenizer_hash,
            vocab_size=cfg.model.vocab_size,
            as_torch=True,
            rank=self.dist.dp_rank,
            world_size=self.dist.dp_size,
            packing=cfg.data.packing,
        )
        fused = _resolve(self.cfg.fused_loss, not self.dist.enabled)
        return PretrainObjective(loader, fused=fused)

    def _init_from(self, path: str) -> None:
        """Copy weights (and expert biases) from a checkpoint whose config matches cfg.model."""
        from moelab.checkpoint.layout import load_model

        source = load_model(path, dtype=torch.float32, device=self.device)
        ours, theirs = self.cfg.model.to_dict(), source.config.to_dict()
        differ = sorted(k for k in ours if ours[k] != theirs.get(k))
        try:
            self.model.load_state_dict(source.state_dict(), strict=True)
        except RuntimeError as err:
            raise CheckpointError(
                f"{path}: weights do not fit model (config differs in {differ}): {err}"
            ) from None
        note = f" (model config differs in {differ})" if differ else ""
        self.log(f"initialised from {path}{note}")

    # -- resume ------------------------------------------------------------------------------
    def _resume(self, resume: str) -> None:
        if self.dist.enabled or _is_dcp(self.out_dir, resume):
            return self._resume_dcp(resume)
        if resume == "auto":
            info = latest_valid_checkpoint(self.out_dir, warn=self.log)
            if info is None:
                if list_checkpoints(self.out_dir):
                    raise CheckpointError(
                        f"{self.out_dir}: no checkpoint validates; refusing to start over"
                    )
                self.log(f"no checkpoint in {self.out_dir}: starting from scratch")
                return
        else:
            info = validate_checkpoint(resume)
        self._load(info)
        self.log(f"resumed from {info.path} at step {info.step} ({info.tokens:,} tokens)")

    def _load(self, info: CheckpointInfo) -> None:
        from safetensors.torch import load_file

        if not (info.path / TRAIN_STATE).exists():
            raise CheckpointError(
                f"{info.path}: no {TRAIN_STATE}; it holds weights only and cannot resume training"
            )
        weights = load_file(str(info.path / "model.safetensors"), device=str(self.device))
        if self.cfg.model.tie_word_embeddings:
            weights["lm_head.weight"] = weights["embed_tokens.weight"]
        self.model.load_state_dict(weights, strict=True)
        state = torch.load(info.path / TRAIN_STATE, map_location=self.device, weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.loader.load_state_dict(state["loader"])
        _set_rng_state(state["rng"])
        self.state = TrainState(step=state["step"], tokens=state["tokens"])

    def _resume_dcp(self, resume: str) -> None:
        """Load a DCP checkpoint on any layout, one process included (DCP reshards by name)."""
        candidates = list_checkpoints(self.out_dir) if resume == "auto" else [Path(resume)]
        for path in reversed(candidates):
            try:
                meta = load_dcp(path, self.model, self.optimizer)
            except CheckpointError as err:
                if self.dist.is_rank0:
                    self.log(f"warning: skipping bad checkpoint {path.name}: {err}")
                continue
            self._load_dcp_extra(path, meta)
            self.state = TrainState(step=meta["step"], tokens=meta["tokens"])
            if self.dist.is_rank0:
                self.log(f"resumed from {path} at step {meta['step']} ({meta['tokens']:,} tokens)")
            return
        if candidates and resume != "auto":
            raise CheckpointError(f"{resume}: cannot resume from it")
        if self.dist.is_rank0:
            self.log(f"no usable checkpoint in {self.out_dir}: starting from scratch")

    def _load_dcp_extra(self, path: Path, meta: dict[str, Any]) -> None:
        """Loader position and RNG: this rank's own file on the same world size; otherwise rank
        0's (the loader position is global) and RNG reseeded from (seed, step)."""
        world = torch.distributed.get_world_size() if self.dist.enabled else 1
        saved_world = int(meta.get("world_size", world))
        same = saved_world == world
        extra = torch.load(
            path / f"extra_rank{self.dist.rank if same else 0:05d}.pt", weights_only=False
        )
        self.loader.load_state_dict(extra["loader"])
        if same:
            _set_rng_state(extra["rng"])
            return
        seed = int(np.random.SeedSequence([self.cfg.seed, meta["step"]]).generate_state(1)[0])
        _seed_everything(seed)
        if self.dist.is_rank0:
            self.log(
                f"warning: {path.name} was saved by {saved_world} ranks, resuming on {world}: "
                f"per-rank RNG states do not carry over, reseeded from (seed={self.cfg.seed}, "
                f"step={meta['step']}); the model uses no dropout, so training is unaffected"
            )

    # -- one optimizer step --------------------------------------------------------------------
    def forward(self, inputs: torch.Tensor, *, model=None, **model_kwargs):
        """The model (or ``model``) on this device under the run's autocast; tensors moved."""
        inputs = inputs.to(self.device, non_blocking=True)
        kwargs = {
            k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in model_kwargs.items()
        }
        with torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16"
        ):
            return (model or self.model)(inputs, **kwargs)

    def _micro_step(self, batch, accum: int) -> tuple[float, dict[str, float], torch.Tensor]:
        cfg = self.cfg
        result = self.loader.loss(self.forward, batch)
        ce, out = result.loss, result.output
        loss, parts = ce, {}
        moe, bal = cfg.model.moe, cfg.balance
        if out.router:
            if bal.lb_coef:
                parts["lb_loss"] = load_balancing_loss(out.router, moe.num_experts, moe.top_k)
                loss = loss + bal.lb_coef * parts["lb_loss"]
            if bal.z_coef:
                parts["z_loss"] = router_z_loss(out.router, divide_by_top_k=bal.z_divide_by_top_k)
                loss = loss + bal.z_coef * parts["z_loss"]
            if bal.seq_aux_coef:
                parts["seq_aux_loss"] = sequence_balance_loss(out.router, batch_size=out.batch_size)
                loss = loss + bal.seq_aux_coef * parts["seq_aux_loss"]
        (loss / accum).backward()
        counts = torch.stack([r.tokens_per_expert_E for r in out.router]) if out.router else None
        metrics = {**result.metrics, **{k: v.item() for k, v in parts.items()}}
        return ce.item(), metrics, counts

    def _step_batches(self, accum: int) -> list:
        batches = [next(self.batches) for _ in range(accum)]
        prepare = getattr(self.loader, "prepare_step", None)
        return prepare(batches) if prepare else batches

    def _mfu(self, tokens_per_s: float) -> float | None:
        """Model FLOPs utilisation per device: the job's tokens/s spread over all its devices."""
        if not self.peak_tflops:
            return None
        per_device = tokens_per_s / self.dist.num_devices
        return per_device * self.flops_per_token / (self.peak_tflops * 1e12)

    def train_step(self) -> dict[str, Any]:
        if self.dist.pipeline is not None:
            return self._pipeline_train_step()
        t0 = time.perf_counter()
        global_batch, accum, lr = self._begin_step()
        ce_sum, part_sums, counts = 0.0, {}, None
        for batch in self._step_batches(accum):
            ce, parts, c = self._micro_step(batch, accum)
            ce_sum += ce
            for k, v in parts.items():
                part_sums[k] = part_sums.get(k, 0.0) + v
            if c is not None:
                counts = c if counts is None else counts + c
        grad_norm = self._optimizer_step()
        if counts is not None:
            self.dist.sum_(counts)  # the whole global batch, reduced exactly once per step
            update_expert_bias(self.model, counts, self.cfg.balance.bias_update_rate)
        losses = {
            "loss": self.dist.mean(ce_sum / accum),
            **{k: self.dist.mean(v / accum) for k, v in part_sums.items()},
        }
        return self._end_step(t0, global_batch, lr, losses, grad_norm, counts)

    def _pipeline_train_step(self) -> dict[str, Any]:
        """Pipeline parallelism: the global batch as micro batches through the schedule."""
        t0 = time.perf_counter()
        global_batch, accum, lr = self._begin_step()
        batches = [next(self.batches) for _ in range(accum)]
        inputs = torch.cat([b.inputs for b in batches])
        targets = torch.cat([b.targets for b in batches])
        with torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16"
        ):
            ce, parts, counts, local_counts = self.dist.pipeline.step(inputs, targets, accum)
        grad_norm = self._optimizer_step()
        if local_counts is not None:
            update_expert_bias(self.model, local_counts, self.cfg.balance.bias_update_rate)
        return self._end_step(t0, global_batch, lr, {"loss": ce, **parts}, grad_norm, counts)

    def _begin_step(self) -> tuple[int, int, float]:
        """This step's global batch (the ramp), micro batches per rank, and learning rate (set)."""
        cfg = self.cfg
        global_batch = global_batch_at(self.state.tokens, cfg.batch)
        per_step = cfg.batch.micro_batch_size * self.dist.dp_size
        if global_batch % per_step:
            raise ValueError(
                f"global batch {global_batch} is not a multiple of micro_batch_size × data-parallel "
                f"ranks ({cfg.batch.micro_batch_size} × {self.dist.dp_size})"
            )
        lr = lr_at(self.state.step, cfg.optim.lr, cfg.schedule, cfg.max_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return global_batch, global_batch // per_step, lr

    def _optimizer_step(self) -> torch.Tensor:
        """Clip (the global norm across ranks), step, clear; returns the norm before clipping."""
        grad_norm = self.dist.clip_grads_(self.model, self.cfg.optim.grad_clip or float("inf"))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def _end_step(
        self,
        t0: float,
        global_batch: int,
        lr: float,
        losses: dict[str, float],
        grad_norm: torch.Tensor,
        counts: torch.Tensor | None,
    ) -> dict[str, Any]:
        """Advance step and tokens; the metrics record of the step."""
        st = self.state
        st.step += 1
        tokens = global_batch * self.cfg.batch.seq_len
        st.tokens += tokens
        seconds = time.perf_counter() - t0
        record = {
            "step": st.step,
            "tokens": st.tokens,
            **losses,
            "lr": lr,
            "grad_norm": grad_norm.item(),
            "global_batch": global_batch,
            "tokens_per_s": tokens / seconds,
            "mfu": self._mfu(tokens / seconds),
        }
        if counts is not None:
            record.update(load_metrics(counts))
        return record

    # -- checkpoints -------------------------------------------------------------------------
    def _train_state(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "loader": self.loader.state_dict(),
            "rng": _get_rng_state(),
            "step": self.state.step,
            "tokens": self.state.tokens,
        }

    def save(self, kind: str) -> Path:
        previous = [p for p in list_checkpoints(self.out_dir) if _kind(p) == "rolling"]
        if self.dist.enabled:
            extra = {"loader": self.loader.state_dict(), "rng": _get_rng_state()}
            path = save_dcp(
                self.out_dir,
                step=self.state.step,
                tokens=self.state.tokens,
                model=self.model,
                optimizer=self.optimizer,
                extra=extra,
            )
            if self.dist.is_rank0:
                _mark_kind(path, kind)
                for old in previous:
                    if old != path:
                        shutil.rmtree(old, ignore_errors=True)
            return path
        path = save_checkpoint(
            self.out_dir,
            step=self.state.step,
            tokens=self.state.tokens,
            model=self.model,
            train_state=self._train_state(),
            config_yaml=self.cfg.to_yaml(),
            extra_meta={"kind": kind},
        )
        for old in previous:  # keep one rolling checkpoint; intermediate ones stay forever
            if old != path:
                shutil.rmtree(old, ignore_errors=True)
        return path

    def _maybe_save(self) -> None:
        ck, st = self.cfg.checkpoint, self.state
        if ck.every_tokens and st.tokens // ck.every_tokens > self._last_intermediate:
            self._last_intermediate = st.tokens // ck.every_tokens
            self.save("intermediate")
        elif st.step == self.cfg.max_steps or (
            ck.latest_every_steps and st.step % ck.latest_every_steps == 0
        ):
            self.save("rolling")

    # -- the loop ----------------------------------------------------------------------------
    def run(self, stop_at_step: int | None = None) -> dict[str, Any]:
        """Train to max_steps, or stop early after ``stop_at_step`` with a checkpoint to resume."""
        cfg = self.cfg
        end = min(cfg.max_steps, stop_at_step or cfg.max_steps)
        logger = (
            MetricsLogger(self.out_dir, cfg.max_steps, resume_step=self.state.step)
            if self.dist.is_rank0
            else None
        )
        self.model.train()
        first = last = None
        try:
            while self.state.step < end:
                record = self.train_step()
                first = first or record
                last = record
                if logger and (record["step"] % cfg.log_every == 0 or record["step"] == end):
                    logger.log(record)
                self._maybe_save()
            if end < cfg.max_steps and _kind_of_step(self.out_dir, end) is None:
                self.save("rolling")
        finally:
            if logger:
                logger.close()
        return {"first": first, "last": last, "out_dir": str(self.out_dir)}


def _resolve(setting: bool | str, auto: bool) -> bool:
    """A true/false/auto switch: auto takes the caller's default for this layout."""
    return auto if setting == "auto" else bool(setting)


def _is_dcp(run_dir: Path, resume: str) -> bool:
    """Whether ``resume`` (or, for ``auto``, the newest checkpoint of ``run_dir``) is DCP."""
    import json

    paths = list_checkpoints(run_dir)[-1:] if resume == "auto" else [Path(resume)]
    try:
        return any(json.loads((p / "meta.json").read_text()).get("format") == "dcp" for p in paths)
    except (OSError, ValueError):
        return False


def _mark_kind(path: Path, kind: str) -> None:
    import json

    meta_file = path / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["kind"] = kind
    tmp = meta_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    tmp.replace(meta_file)


def _kind_of_step(run_dir: Path, step: int) -> str | None:
    path = run_dir / f"step_{step:08d}"
    return _kind(path) if path.exists() else None


def _kind(path: Path) -> str:
    import json

    try:
        return json.loads((path / "meta.json").read_text()).get("kind", "rolling")
    except (OSError, ValueError):
        return "rolling"


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _get_rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train(
    cfg: TrainConfig, resume: str | None = None, log=print, stop_at_step: int | None = None
) -> dict[str, Any]:
    """Build a trainer for ``cfg`` (optionally resuming) and run it to ``max_steps``."""
    return Trainer(cfg, resume=resume, log=log).run(stop_at_step=stop_at_step)
