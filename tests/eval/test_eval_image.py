"""SSIM / PSNR on images in [-1, 1]: known answers and monotonicity."""

import math

import pytest
import torch

from medshift_fast.errors import MedShiftError
from medshift_fast.eval import psnr, ssim


def _images(n=6, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    base = torch.tanh(3 * (0.5 - (xx**2 + yy**2)))  # smooth disc
    return (base + 0.1 * torch.randn(n, 1, size, size, generator=g)).clamp(-1, 1)


def test_ssim_of_image_with_itself_is_one():
    x = _images()
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-5)
    per = ssim(x, x, reduction="none", batch_size=4)
    assert per.shape == (6,)
    assert torch.allclose(per, torch.ones(6), atol=1e-5)


def test_ssim_and_psnr_fall_as_noise_grows():
    x = _images()
    g = torch.Generator().manual_seed(1)
    z = torch.randn(x.shape, generator=g)
    s_vals = [ssim(x + s * z, x).item() for s in (0.01, 0.05, 0.2)]
    p_vals = [psnr(x + s * z, x).item() for s in (0.01, 0.05, 0.2)]
    assert s_vals[0] > s_vals[1] > s_vals[2]
    assert p_vals[0] > p_vals[1] > p_vals[2]


def test_psnr_closed_form_and_identical():
    x = _images(n=3)
    # constant offset c: MSE = c², PSNR = 10 log10(2² / c²)
    c = 0.1
    assert psnr(x + c, x).item() == pytest.approx(10 * math.log10(4 / c**2), rel=1e-4)
    assert torch.isinf(psnr(x, x, reduction="none")).all()


def test_batching_matches_one_shot():
    x, y = _images(seed=0), _images(seed=3)
    assert torch.allclose(ssim(x, y, reduction="none", batch_size=2), ssim(x, y, reduction="none"))
    assert torch.allclose(psnr(x, y, reduction="none", batch_size=5), psnr(x, y, reduction="none"))


def test_user_errors():
    x = _images()
    with pytest.raises(MedShiftError, match="same shape"):
        ssim(x, x[:2])
    with pytest.raises(MedShiftError, match="at least"):
        ssim(x[..., :8, :8], x[..., :8, :8])
    with pytest.raises(MedShiftError, match="reduction"):
        psnr(x, x, reduction="sum")
