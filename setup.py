"""Build script: metadata lives in setup.cfg; this file only adds the optional C extension.

``ferric_ipc._localread`` speeds up local reads (key hash, index probe, record
check). It is optional: without a C compiler the build goes on without it and
``ferric_ipc`` uses its pure-Python path, which answers the same.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "ferric_ipc._localread",
            sources=["ferric_ipc/_localread.c"],
            extra_compile_args=["-O2", "-std=c11"],
            optional=True,
        )
    ]
)
