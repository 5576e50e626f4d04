"""The optional C extensions (service/defense/_kernel.c, _keyed.c, service/protocol/_rows.c).

Everything else lives in pyproject.toml. `optional=True`: without a C compiler (or,
for _keyed, without OpenSSL's headers) the install still succeeds and the defense
runs its Python code, with the same results.
"""

import numpy
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "service.defense._kernel",
            ["service/defense/_kernel.c"],
            include_dirs=[numpy.get_include()],
            # No fused multiply-adds: the kernel must round exactly as the Python code.
            extra_compile_args=["-ffp-contract=off"],
            optional=True,
        ),
        Extension(
            "service.defense._keyed",
            ["service/defense/_keyed.c"],
            include_dirs=[numpy.get_include()],
            libraries=["crypto"],  # OpenSSL's libcrypto, the one hashlib uses
            optional=True,
        ),
        Extension(
            "service.protocol._rows",
            ["service/protocol/_rows.c"],
            include_dirs=[numpy.get_include()],
            optional=True,
        ),
    ]
)
