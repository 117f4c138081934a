"""moelab: build Mixture-of-Experts language models the way dots.llm1 and OLMoE were built.

Importing the package has no side effects and does not import torch; the heavy entry points
are loaded lazily on first use (``moelab.load_pretrained``).
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load_pretrained", "save_pretrained"]


def __getattr__(name: str):
    if name in ("load_pretrained", "save_pretrained"):
        from moelab.checkpoint import hf

        return getattr(hf, name)
    raise AttributeError(f"module 'moelab' has no attribute {name!r}")
