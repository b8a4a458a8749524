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
