"""The optional C extensions, built by setup.py when a compiler is there.

Each (``service/defense/_kernel.c``, ``_keyed.c``, ``service/protocol/_rows.c``)
replaces Python code that gives the same results, several times slower on the request
path; `load_extension` gives None where one was not built, or when
DYNANOISE_PURE_PYTHON=1 asks for the Python code (a machine without a compiler runs
the tests that way).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType


def load_extension(name: str) -> ModuleType | None:
    """The compiled module ``name`` (dotted), or None: then its Python code runs."""
    if os.environ.get("DYNANOISE_PURE_PYTHON") == "1":
        return None
    try:
        return importlib.import_module(name)
    except ImportError:  # not built at install time: the Python code runs instead
        return None
