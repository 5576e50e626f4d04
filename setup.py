"""The optional C kernel of the defense (service/defense/_kernel.c).

Everything else lives in pyproject.toml. `optional=True`: without a C compiler the
install still succeeds and the defense runs its Python code, with the same results.
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
        )
    ]
)
