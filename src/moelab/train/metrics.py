"""Where training metrics go: JSONL always, TensorBoard when installed, a progress line on a TTY.

MFU uses ``moelab.model.transformer.model_flops_per_token``: 6·N_active (non-embedding, lm_head
included) + 6·L·T·H·d for causal attention, per trained token, divided by the device peak.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

PEAK_BF16_TFLOPS = {"H100": 989.0, "H800": 989.0, "H200": 989.0, "A100": 312.0, "B200": 2250.0}


def detect_peak_tflops(device: torch.device) -> float | None:
    """Dense bf16 peak of a known accelerator; None on CPUs and unknown devices."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


class MetricsLogger:
    """Writes one JSON object per step to ``metrics.jsonl``; mirrors scalars to TensorBoard."""

    def __init__(
        self, out_dir: Path, total_steps: int, resume_step: int = 0, progress: bool | None = None
    ):
        self.path = out_dir / "metrics.jsonl"
        self.total_steps = total_steps
        self._truncate_after(resume_step)
        self.file = open(self.path, "a", encoding="utf-8")
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.start_time = time.time()
        self.start_step = resume_step
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tensorboard"), purge_step=resume_step + 1)
        except ImportError:
            pass

    def _truncate_after(self, step: int) -> None:
        """Drop records of steps past ``step`` (written before a crash, re-run after resume)."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a line torn by the crash
        self.path.write_text("".join(line + "\n" for line in kept))

    def log(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        step = record["step"]
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, int | float) and key != "step":
                    self.tb.add_scalar(key, value, step)
        if self.progress:
            self._print_progress(record)

    def _print_progress(self, r: dict[str, Any]) -> None:
        step = r["step"]
        done = step - self.start_step
        elapsed = time.time() - self.start_time
        eta = elapsed / max(done, 1) * (self.total_steps - step)
        width = 24
        filled = int(width * step / self.total_steps)
        bar = "█" * filled + "·" * (width - filled)
        sys.stderr.write(
            f"\r{bar} {step}/{self.total_steps} loss {r['loss']:.4f} lr {r['lr']:.2e} "
            f"{r['tokens_per_s']:.0f} tok/s ETA {eta:5.0f}s"
        )
        if step == self.total_steps:
            sys.stderr.write("\n")
        sys.stderr.flush()

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()
