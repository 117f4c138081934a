"""The MoE decoder: pure single-device math. Imports only torch and moelab.config.

Entry points: ``ModelConfig`` and presets, ``build_model``, ``MoETransformer``, the losses.
"""

from moelab.model.config import AttentionConfig, ModelConfig, MoEConfig
from moelab.model.presets import PRESETS, get_preset
from moelab.model.transformer import ModelOutput, MoETransformer, build_model
