"""Builds the compiled record codec, raftmq._codec; everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "raftmq._codec",
            sources=["common/_codec.c"],
            # Without a C compiler the install still succeeds and raftmq.record_batch runs
            # the pure-Python codec (a unit test fails then, unless that is asked for).
            optional=True,
            # gcc / clang (the code uses __builtin_add_overflow); warnings are bugs here.
            extra_compile_args=["-Wall", "-Wextra", "-Wconversion", "-Wno-sign-conversion"],
        )
    ]
)
