"""keep_freed_memory: a freed block of a few MB is reused without new page faults.

Runs in fresh interpreters (no torch), one with the setting and one without, so the test does
not depend on what this process allocated before (glibc's thresholds move with history).
"""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

SCRIPT = """
import ctypes, resource, sys
from moelab.infer.memory import keep_freed_memory
if sys.argv[1] == "on":
    assert keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 24 << 20
block = libc.malloc(size); ctypes.memset(block, 1, size); libc.free(block)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = libc.malloc(size); ctypes.memset(block, 1, size); libc.free(block)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True
    )
    return int(out.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_a_freed_block_is_reused_without_page_faults():
    pages = (24 << 20) // 4096
    assert _faults("off") > pages // 2  # default glibc: the second 24 MB is faulted in again
    assert _faults("on") < pages // 20


ENGINE_SCRIPT = """
import sys
from moelab.infer import memory
from moelab.infer.engine import Engine
from moelab.model.presets import tiny_olmoe
from moelab.model.transformer import MoETransformer
model = MoETransformer(tiny_olmoe())
Engine(model, max_batch=1, max_len=16, tune_malloc=sys.argv[1] == "on")
print(memory._applied)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
@pytest.mark.parametrize(("mode", "applied"), [("on", "True"), ("off", "None")])
def test_engine_tunes_malloc_only_when_asked(mode: str, applied: str):
    out = subprocess.run(
        [sys.executable, "-c", ENGINE_SCRIPT, mode], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == applied
