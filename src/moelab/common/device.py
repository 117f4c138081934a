"""Which machine a number was measured on: every benchmark JSON names its device."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def device_name(device=None) -> str:
    """'NVIDIA H100 80GB HBM3' for a CUDA device, else the CPU model and torch's thread count."""
    import torch

    if device is not None and torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({torch.get_num_threads()} threads)"


def measured_matmul_gflops(device, dtype, n: int = 1024, seconds: float = 2.0) -> float:
    """Best GFLOP/s of an n×n×n matmul: what this device's BLAS reaches on these threads.

    A CPU's peak is in no table; benchmarks measure this one on the threads they use and quote
    their own rates as a share of it (a roofline: smaller, thinner matmuls do no better).
    """
    import time

    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best, start = 0.0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best
