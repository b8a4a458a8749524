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


def tiny_run(path, domains, image_size: int = 32, data: str = "", std: float = 0.02, **extra):
    """Save an untrained tiny-preset run (zero-initialised output layers drawn from N(0, std),
    so a translation is not the identity) over ``domains``; returns its folder."""
    from medshift_fast.models import build_model
    from medshift_fast.run import save_run
    from medshift_fast.train import TrainConfig

    torch.manual_seed(0)
    m = build_model("tiny", num_classes=len(domains), model_channels=16, head_channels=16)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() > 1 and p.abs().sum() == 0:
                p.normal_(0, std)
    return save_run(path, TrainConfig(image_size=image_size, data=data), m.config,
                    tuple(domains), m.state_dict(), extra=extra or None)
