"""The one thing pyproject.toml cannot say in stable terms: an optional C extension.

``ashmem._speedups`` (src/ashmem/_speedups.c) holds compiled twins of two functions of
``ashmem._rights``: the receive, and the send-then-receive, on binder's hot path.
``optional=True``: where it cannot be built (no C compiler or Python headers) the install
goes on without it and the same code runs in pure Python.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("ashmem._speedups", ["src/ashmem/_speedups.c"], optional=True),
    ]
)
