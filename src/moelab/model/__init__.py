"""The MoE decoder: pure single-device math. Imports only torch and moelab.config.

Entry points: ``ModelConfig`` and presets, ``build_model``, ``MoETransformer``, the losses.
Configs and presets import without torch (so the command line starts fast); the modules
holding tensors load on first use.
"""

from moelab.model.config import AttentionConfig, ModelConfig, MoEConfig
from moelab.model.presets import PRESETS, get_preset

_LAZY = {"ModelOutput", "MoETransformer", "build_model"}


def __getattr__(name: str):
    if name in _LAZY:
        from moelab.model import transformer

        return getattr(transformer, name)
    raise AttributeError(f"module 'moelab.model' has no attribute {name!r}")
