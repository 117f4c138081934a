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
    """Best GFLOP/s of an n×n×n matmul: what this device's best BLAS reaches on these threads.

    A CPU's peak is in no table; benchmarks measure this one on the threads they use and quote
    their own rates as a share of it (a roofline: smaller, thinner matmuls do no better). On CPU
    both BLAS torch ships are tried, ``@`` (MKL) and oneDNN's matmul, and the faster one counts:
    on AMD CPUs MKL runs its AVX2 code, about half of what oneDNN's AVX-512 code reaches.
    """
    import time

    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    matmuls = [lambda: a @ b]
    if torch.device(device).type == "cpu" and torch.backends.mkldnn.is_available():
        bt = b.t().contiguous()
        matmuls.append(lambda: torch.ops.mkldnn._linear_pointwise(a, bt, None, "none", [], ""))
    best = 0.0
    for matmul in matmuls:
        try:
            with torch.inference_mode():
                matmul()
        except (AttributeError, RuntimeError):  # no oneDNN op in this torch build
            continue
        start = time.perf_counter()
        while time.perf_counter() - start < seconds / len(matmuls):
            if torch.device(device).type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.inference_mode():
                matmul()
            if torch.device(device).type == "cuda":
                torch.cuda.synchronize()
            best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best
