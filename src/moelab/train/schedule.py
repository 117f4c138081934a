"""Learning-rate and batch-size schedules as pure functions of the step or tokens seen.

Being pure functions, they need no state in a checkpoint: resuming at step n gives the same LR.
"""

from __future__ import annotations

import math

from moelab.train.config import BatchConfig, ScheduleConfig


def lr_at(step: int, peak: float, cfg: ScheduleConfig, max_steps: int) -> float:
    """LR for optimizer step ``step`` (0-based)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    final = peak * cfg.final_lr_ratio
    if cfg.kind == "constant":
        return peak
    if cfg.kind == "cosine":
        span = max(1, max_steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return final + (peak - final) * 0.5 * (1 + math.cos(math.pi * progress))
    decay_start = max_steps - cfg.decay_steps
    if step < decay_start or cfg.decay_steps == 0:
        return peak
    progress = min(1.0, (step - decay_start + 1) / cfg.decay_steps)
    if cfg.decay_shape == "cosine":
        factor = 0.5 * (1 + math.cos(math.pi * progress))
    elif cfg.decay_shape == "sqrt":
        factor = 1 - math.sqrt(progress)
    else:
        factor = 1 - progress
    return final + (peak - final) * factor


def global_batch_at(tokens_seen: int, cfg: BatchConfig) -> int:
    """Sequences per optimizer step once ``tokens_seen`` tokens have been trained on."""
    size = cfg.global_batch_size
    for stage in cfg.ramp:
        if tokens_seen >= stage.after_tokens:
            size = stage.global_batch_size
    return size
