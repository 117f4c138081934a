"""Shared test setup: offline hub, deterministic seeds, the gpu marker skips without CUDA."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_configure(config):
    # Tests run tiny ops, where one thread is fastest and immune to oversubscription when
    # other processes (tokenizer workers, spawned trainers) share the two CI cores.
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(int(os.environ.get("MOELAB_TEST_THREADS", "1")))


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
