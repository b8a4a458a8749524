"""Shared test helpers: the one tolerance table (STYLE.md)."""

from __future__ import annotations

import torch

# (rtol, atol) by dtype.
TOL = {
    torch.float32: (1e-4, 1e-4),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (5e-2, 5e-2),
}


def assert_close(actual, expected, dtype=None, **kw):
    rtol, atol = TOL[dtype or expected.dtype]
    torch.testing.assert_close(
        actual,
        expected,
        rtol=kw.pop("rtol", rtol),
        atol=kw.pop("atol", atol),
        check_dtype=False,
        **kw,
    )
