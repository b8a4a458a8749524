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


def lean_run(seed: int = 0, **fields):
    """A lean one-step student (``models.lean``) with random non-zero weights (its
    zero-initialised layers included), wrapped as a run of 5 domains that learned 0 -> 3."""
    from medshift_fast.models.student import Student, StudentConfig
    from medshift_fast.run import LoadedRun

    torch.manual_seed(seed)
    teacher = {"guidance_encode": 0.0, "guidance_decode": 1.5, "solver": "euler", "steps": 10}
    st = Student(StudentConfig(arch="lean", lean={"num_classes": 5, **fields}, pairs=((0, 3),),
                               teacher=teacher))
    with torch.no_grad():
        for p in st.parameters():
            p.normal_(0, 0.05 if p.dim() > 1 else 0.02)
    return LoadedRun.from_model(st.eval(), image_size=128)
