"""Shared fixtures of the training tests: a tiny two-domain folder dataset, one CPU thread."""

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models on a shared, loaded CPU: two OpenMP threads spin against each other and make
    # every conv ~10x slower; one thread is faster and keeps these tests short.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_images(n: int = 12, size: int = 16, seed: int = 0):
    """(n, 1, S, S) smooth patterns in [-1, 1] of two domains (domain 1 is noisier)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    y = torch.arange(n) % 2
    phase = torch.rand(n, generator=g)[:, None, None] * 6
    img = 0.6 * torch.sin(3 * xx + phase) * torch.cos(2 * yy)
    img = img + 0.1 * y[:, None, None] * torch.randn(n, size, size, generator=g)
    return img.clamp(-1, 1)[:, None].float(), y


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """ROOT/<domain>/*.png with 10 16x16 16-bit PNGs per domain."""
    from medshift_fast.data import write_png16

    root = tmp_path_factory.mktemp("train_data")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:16, :16] / 15.0
    for d, noise in (("synthetic_low", 0.0), ("real_normal", 0.1)):
        (root / d).mkdir()
        for i in range(10):
            img = 0.6 * np.sin(3 * xx + i) * np.cos(2 * yy) + noise * rng.standard_normal((16, 16))
            write_png16(root / d / f"{i:03d}.png", np.clip(img, -1, 1).astype(np.float32))
    return root
