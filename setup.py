"""Build the optional C extension; everything else is in pyproject.toml.

``otlp_meter._native`` is the rules engine's hot path in C. It is optional: without a C
compiler (or with ``OTLP_METER_NATIVE=0`` at run time) the same rules run in pure Python.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "otlp_meter._native",
            ["otlp_meter/_native.c"],
            depends=["otlp_meter/_blake2b.h"],
            extra_compile_args=["-O3", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        )
    ]
)
