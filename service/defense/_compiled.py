"""The optional C kernel (``_kernel.c``, built by setup.py when a compiler is there).

``kernel`` is None where it was not built, or when DYNANOISE_PURE_PYTHON=1 asks for
the Python code (a machine without a compiler runs the tests that way).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType


def _load() -> ModuleType | None:
    if os.environ.get("DYNANOISE_PURE_PYTHON") == "1":
        return None
    try:
        return importlib.import_module(f"{__package__}._kernel")
    except ImportError:  # no compiler at install time: the Python code runs instead
        return None


kernel = _load()
