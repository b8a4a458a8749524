"""Test configuration: Triton's interpreter on CPU machines, markers and capability skips.

TRITON_INTERPRET is read when @triton.jit decorates a function, so it is set here, before any
kernel module is imported. No GPU is queried at import time.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TRITON_INTERPRET", "0" if os.environ.get("MEDSHIFT_TEST_GPU") else "1")


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _has_triton() -> bool:
    import importlib.util

    return importlib.util.find_spec("triton") is not None


def _has_ext() -> bool:
    from medshift_fast import _backend

    return _backend.extension() is not None


def pytest_collection_modifyitems(config, items):
    caps = {}

    def cap(name, fn):
        if name not in caps:
            caps[name] = fn()
        return caps[name]

    for item in items:
        if "cuda" in item.keywords and not cap("cuda", _has_cuda):
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if "triton" in item.keywords and not cap("triton", _has_triton):
            item.add_marker(pytest.mark.skip(reason="needs triton"))
        if "ext" in item.keywords and not cap("ext", _has_ext):
            item.add_marker(
                pytest.mark.skip(reason="needs the compiled extension medshift_fast._C")
            )


def pytest_terminal_summary(terminalreporter):
    """The documented blocks (tests/test_docs.py) and how each ran, when that test ran."""
    import sys

    mod = sys.modules.get("tests.test_docs") or sys.modules.get("test_docs")
    report = getattr(mod, "REPORT", None)
    if report:
        terminalreporter.section("documented blocks (README.md, docs/*.md)")
        for line in report:
            terminalreporter.write_line(line)
