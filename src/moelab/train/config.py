"""TrainConfig: everything a training run needs, one dataclass per component.

Units are explicit in the names (``_steps``, ``_tokens``). Published values are noted where a
field's default or a preset comes from a paper (model_spec.md §2.7–2.8, §3.5–3.6).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from moelab.config import Config, ConfigError
from moelab.model.config import ModelConfig
from moelab.parallel.dims import ParallelDims


@dataclass
class DataConfig(Config):
    shards: str = ""
    """Folder of token shards (``moelab tokens tokenize`` output); required."""
    seed: int = 0
    """Shuffling seed of the loader."""
    tokenizer_hash: str | None = None
    """When set, the shards must have been made with this tokenizer."""
    packing: Literal["concat", "bos_aligned"] = "concat"
    """Rows cut from the token stream, or rows that each start at a document start (the cut-off
    rest of a long document is skipped): no row opens mid-document, at the cost of some tokens."""


@dataclass
class OptimConfig(Config):
    lr: float = 3e-4
    """Peak learning rate (dots.llm1 3e-4, OLMoE 4e-4)."""
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    """Max global grad norm; 0 disables clipping."""
    decay_embeddings: bool = False
    """Also decay embeddings / lm_head (OLMoE did); by default only other matrices decay."""
    decay_norms: bool = False
    """Also decay norm weights and biases (OLMoE did)."""

    def validate(self, path: str) -> None:
        if self.lr <= 0:
            raise ConfigError(f"{path}.lr", f"must be > 0, got {self.lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"{path}.betas", f"must be two numbers in [0, 1), got {self.betas}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ConfigError(path, "weight_decay and grad_clip must be >= 0")


@dataclass
class ScheduleConfig(Config):
    kind: Literal["wsd", "cosine", "constant"] = "wsd"
    """wsd: warmup-stable-decay (dots.llm1); cosine: warmup then cosine (OLMoE)."""
    warmup_steps: int = 0
    decay_steps: int = 0
    """wsd: length of the final decay; cosine: ignored (decays until max_steps)."""
    final_lr_ratio: float = 0.1
    """LR at the end as a fraction of the peak (dots stage 1: 3e-5/3e-4; OLMoE 0.1)."""
    decay_shape: Literal["linear", "cosine", "sqrt"] = "linear"
    """Shape of the wsd decay."""

    def validate(self, path: str) -> None:
        if self.warmup_steps < 0 or self.decay_steps < 0:
            raise ConfigError(path, "warmup_steps and decay_steps must be >= 0")
        if not 0 <= self.final_lr_ratio <= 1:
            raise ConfigError(
                f"{path}.final_lr_ratio", f"must be in [0, 1], got {self.final_lr_ratio}"
            )


@dataclass
class RampStage(Config):
    after_tokens: int = 0
    """From this many tokens seen on, use global_batch_size."""
    global_batch_size: int = 1
    """Sequences per optimizer step (must be a multiple of micro_batch_size)."""


@dataclass
class BatchConfig(Config):
    seq_len: int = 256
    micro_batch_size: int = 8
    """Sequences per forward/backward."""
    global_batch_size: int = 8
    """Sequences per optimizer step at the start; micro batches accumulate to it."""
    ramp: list[RampStage] = field(default_factory=list)
    """dots.llm1's batch-size ramp: the global batch grows at token thresholds, LR unchanged."""

    def validate(self, path: str) -> None:
        sizes = [self.global_batch_size] + [s.global_batch_size for s in self.ramp]
        for i, size in enumerate(sizes):
            where = (
                f"{path}.global_batch_size" if i == 0 else f"{path}.ramp[{i - 1}].global_batch_size"
            )
            if size < 1 or size % self.micro_batch_size:
                raise ConfigError(
                    where,
                    f"({size}) must be a positive multiple of micro_batch_size ({self.micro_batch_size})",
                )
        thresholds = [s.after_tokens for s in self.ramp]
        if thresholds != sorted(thresholds) or any(t <= 0 for t in thresholds):
            raise ConfigError(f"{path}.ramp", "after_tokens must be positive and increasing")
        if self.seq_len < 1 or self.micro_batch_size < 1:
            raise ConfigError(path, "seq_len and micro_batch_size must be >= 1")


@dataclass
class BalanceConfig(Config):
    bias_update_rate: float = 0.0
    """γ of the aux-loss-free bias update b += γ·sign(mean − load) (DeepSeek-V3/dots 1e-3); 0 = off."""
    seq_aux_coef: float = 0.0
    """α of the DeepSeek-V3 sequence-wise balance loss (DeepSeek-V3 1e-4; dots did not publish)."""
    lb_coef: float = 0.0
    """Load-balancing loss weight, OLMoE training-code convention (OLMoE 0.01)."""
    z_coef: float = 0.0
    """Router z-loss weight (OLMoE 0.001)."""
    z_divide_by_top_k: bool = True
    """OLMoE's training code divides the z-loss by top_k as well (model_spec.md §3.5)."""

    def validate(self, path: str) -> None:
        for name in ("bias_update_rate", "seq_aux_coef", "lb_coef", "z_coef"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{path}.{name}", f"must be >= 0, got {getattr(self, name)}")


@dataclass
class CheckpointConfig(Config):
    every_tokens: int = 0
    """Keep an intermediate checkpoint each time this many more tokens are seen (0 = none)."""
    latest_every_steps: int = 100
    """Rolling checkpoint cadence; only the newest rolling one is kept (0 = only at the end)."""


@dataclass
class CompileConfig(Config):
    mode: Literal["none", "blocks", "model"] = "none"
    """torch.compile: none (eager); blocks (each transformer block's forward, one graph shared
    by identical blocks: fast to compile, the usual choice, torchtitan's); model (the whole
    forward with the LM head and loss; one process only)."""
    backend: str = "inductor"
    """A ``torch.compile`` backend: inductor (generates kernels; on CPU it needs a C++
    compiler), aot_eager / eager (trace only: for tests and debugging)."""

    def validate(self, path: str) -> None:
        if self.mode == "none":
            return
        import torch._dynamo

        backends = torch._dynamo.list_backends(exclude_tags=())
        if self.backend not in backends:
            raise ConfigError(
                f"{path}.backend",
                f"{self.backend!r} is not a torch.compile backend; choose one of "
                f"inductor, aot_eager, eager (all: {backends})",
            )


@dataclass
class TrainConfig(Config):
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    compile: CompileConfig = field(default_factory=CompileConfig)
    parallel: ParallelDims = field(default_factory=ParallelDims)
    """Used when started by torchrun (WORLD_SIZE > 1); ignored in a single process."""
    out_dir: str = "runs/train"
    init_from: str = ""
    """Start from these weights (moelab checkpoint, run directory or HF directory) with a fresh
    optimizer; empty = random init. Skipped when resuming from a checkpoint of this run."""
    max_steps: int = 100
    seed: int = 0
    precision: Literal["fp32", "bf16"] = "fp32"
    """bf16 = autocast with fp32 master weights."""
    fused_loss: bool | Literal["auto"] = "auto"
    """Pretraining's LM head and cross-entropy fused over token chunks (``model(x, labels=y)``,
    ``losses.linear_cross_entropy``): the same loss, gradients equal to fp32 rounding, no full
    logits tensor. auto = on in one process, off under torchrun. The rounding difference is
    real in training: in tests/parallel's 6-step tiny run (lr 1e-2) fused and unfused weights
    end 4.5e-5 apart in one process (2.3e-6 at lr 1e-3), above the 1e-5 those tests hold a
    distributed run to against one process; with both sides fused, EP + FSDP on 4 ranks ended
    9.2e-5 from one process (unfused: 2.3e-6), not yet explained, so distributed runs keep the
    unfused loss until it is. true / false force it (pipeline stages always return logits)."""
    fused_optimizer: bool | Literal["auto"] = "auto"
    """AdamW's single-kernel (``fused=True``) update instead of ``foreach``. auto = on in one
    process; distributed runs keep foreach (per-tensor with expert parallelism), whose
    DTensor/plain-tensor mix the fused kernel does not take."""
    device: str = "cpu"
    log_every: int = 1
    peak_tflops: float | None = None
    """Accelerator peak for MFU; null = detect (H100/H800 bf16 989) or leave MFU unreported."""
    threads: int | None = None
    """torch CPU threads (null = torch's default)."""

    def validate(self, path: str) -> None:
        if self.max_steps < 1:
            raise ConfigError("max_steps", f"must be >= 1, got {self.max_steps}")
        s = self.schedule
        if s.kind == "wsd" and s.warmup_steps + s.decay_steps > self.max_steps:
            raise ConfigError(
                "schedule.decay_steps",
                f"warmup + decay ({s.warmup_steps} + {s.decay_steps}) exceed max_steps ({self.max_steps})",
            )
        if self.batch.seq_len > self.model.max_position_embeddings:
            raise ConfigError(
                "batch.seq_len",
                f"({self.batch.seq_len}) exceeds model.max_position_embeddings ({self.model.max_position_embeddings})",
            )
