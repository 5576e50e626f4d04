"""The defense's optional C extensions (`service.native`).

``kernel`` (``_kernel.c``: the entropy defense, the fresh-noise pool and the repeat
monitor's row keys) and ``keyed`` (``_keyed.c``: keyed noise's HMAC seeds, with
OpenSSL) are None where they were not built or DYNANOISE_PURE_PYTHON=1.
"""

from __future__ import annotations

from ..native import load_extension

kernel = load_extension(f"{__package__}._kernel")
keyed = load_extension(f"{__package__}._keyed")
