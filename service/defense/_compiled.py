"""The optional C extensions, built by setup.py when a compiler is there.

``kernel`` (``_kernel.c``: the entropy defense and the fresh-noise pool) and ``keyed``
(``_keyed.c``: keyed noise's HMAC seeds, with OpenSSL) are None where they were not
built, or when DYNANOISE_PURE_PYTHON=1 asks for the Python code (a machine without a
compiler runs the tests that way).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType


def _load(name: str) -> ModuleType | None:
    if os.environ.get("DYNANOISE_PURE_PYTHON") == "1":
        return None
    try:
        return importlib.import_module(f"{__package__}.{name}")
    except ImportError:  # not built at install time: the Python code runs instead
        return None


kernel = _load("_kernel")
keyed = _load("_keyed")
