"""Keep freed heap memory in the process (glibc), so a forward's large temporaries reuse warm pages.

PyTorch's CPU tensors come from ``malloc``. glibc serves blocks above a moving threshold with
``mmap`` (fresh, zero-filled pages on every allocation) and gives a heap top larger than the
trim threshold back to the OS, so a forward whose temporaries are a few MB (an MoE layer's
sorted tokens and expert activations at prefill) can pay page faults on every call, depending
on what the process allocated before. Measured with benchmarks/generate.py: tiny-olmoe
batch-8 prefill ran at 9.7k tok/s after the tiny-dots runs and 13.8k with freed memory kept.
PyTorch's CPU performance guide swaps in jemalloc or tcmalloc for the same reason; this uses
glibc's own ``mallopt`` instead: a fixed mmap threshold of 32 MB (glibc's maximum; larger
blocks are still mapped) and a 1 GB trim threshold. The cost: the process keeps its peak heap.

The setting is process-wide and applied once (``Engine`` calls it); it does nothing outside
glibc. What this module does not know: torch, models, requests.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20
"""Blocks below this come from the heap (glibc caps the setting at 32 MB on 64-bit)."""
TRIM_THRESHOLD = 1 << 30
"""Free memory at the heap top kept up to this much instead of being returned to the OS."""

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Apply the mallopt settings once per process; True if they are in force."""
    global _applied
    if _applied is None:
        _applied = False
        if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _applied = bool(
                libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
            )
    return _applied
