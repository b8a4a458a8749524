"""Small X-ray-like test images: random smooth anatomy per subject, rendered through the
simulator's detector chain (``data.physics.real_image``: Poisson quanta, detector blur,
electronic noise, log, window) at two doses -- without the projector, so a test set costs
milliseconds."""

import numpy as np
import torch

from medshift_fast.data.physics import real_image
from medshift_fast.data.simulator import SimConfig

CFG = SimConfig()


def anatomy(subject: int, view: int, size: int = 64) -> torch.Tensor:
    """(S, S) log attenuation p of one subject and view: an elliptic 'head' of random blobs on
    air, shifted a little per view (float64)."""
    rng = np.random.default_rng([subject, 12345])
    yy, xx = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    dy, dx = 0.05 * view, -0.04 * view
    yy, xx = yy + dy, xx + dx
    a, b = rng.uniform(0.6, 0.8, 2)
    body = 1.0 / (1.0 + np.exp(-25 * (1.0 - (xx / a) ** 2 - (yy / b) ** 2)))
    p = 2.0 * body
    for _ in range(6):
        cy, cx = rng.uniform(-0.5, 0.5, 2)
        r = rng.uniform(0.08, 0.3)
        p += rng.uniform(0.3, 1.2) * body * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
    return torch.from_numpy(p)


def xray(subjects, photons: float, views: int = 3, size: int = 64, seed: int = 0):
    """(N, 1, S, S) float32 images in [-1, 1] and their subject ids."""
    imgs, groups = [], []
    for s in subjects:
        for v in range(views):
            rng = np.random.default_rng([seed, s, v, int(photons)])
            imgs.append(real_image(torch.exp(-anatomy(s, v, size)), photons, CFG, rng))
            groups.append(f"s{s:03d}")
    return torch.stack(imgs).unsqueeze(1).float(), groups
