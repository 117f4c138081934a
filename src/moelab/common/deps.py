"""Optional dependencies: import them by name, or fail with the extra that provides them."""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingDependencyError(ImportError):
    """An optional package is not installed; the message names the pip extra to install."""


def require(module: str, extra: str, package: str | None = None) -> ModuleType:
    """Import ``module`` or raise naming ``pip install 'moelab[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependencyError(
            f"{package or module} is needed here but is not installed: "
            f"pip install 'moelab[{extra}]' (import error: {err})"
        ) from err
