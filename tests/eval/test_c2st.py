"""Classifier two-sample test: it is a sensitive judge (a blurred copy and a lower dose are told
from real images, real vs real is chance), its splits keep a subject on one side, it takes
other classifiers, refuses bad input, and no training code can reach it."""

import numpy as np
import pytest
import torch
import torch.nn as nn
from _xray import xray
from scipy.ndimage import gaussian_filter

from medshift_fast.errors import MedShiftError
from medshift_fast.eval.c2st import C2STConfig, _split, c2st, tile_crops

HIGH = 20000.0  # photons per pixel (the simulator's real_exposure)
LOW = 1500.0  # (real_low)


@pytest.fixture(scope="module")
def sets():
    a, ga = xray(range(0, 8), HIGH, seed=1)
    b, gb = xray(range(8, 16), HIGH, seed=2)
    low, gl = xray(range(8, 16), LOW, seed=2)
    return a, ga, b, gb, low, gl


def test_real_vs_real_is_chance(sets):
    a, ga, b, gb, _, _ = sets
    r = c2st(a, b, real_groups=ga, fake_groups=gb)
    assert r.accuracy < 0.7 and r.lo < 0.6, r
    assert r.lo <= r.accuracy <= r.hi
    assert len(r.per_seed) == 3 and r.n_heldout == (12, 12)


def test_a_blurred_copy_is_told_apart(sets):
    a, ga, b, gb, _, _ = sets
    blurred = torch.from_numpy(gaussian_filter(b.numpy(), (0, 0, 0.7, 0.7)))
    r = c2st(a, blurred, real_groups=ga, fake_groups=gb)
    assert r.accuracy >= 0.9 and r.lo >= 0.75, r


def test_a_lower_dose_is_told_apart(sets):
    a, ga, _, _, low, gl = sets
    r = c2st(a, low, real_groups=ga, fake_groups=gl)
    assert r.accuracy >= 0.9 and r.lo >= 0.75, r


def test_deterministic_and_seeded(sets):
    a, ga, b, gb, _, _ = sets
    cfg = C2STConfig(seeds=1, steps=20)
    r1 = c2st(a, b, real_groups=ga, fake_groups=gb, cfg=cfg, seed=5)
    r2 = c2st(a, b, real_groups=ga, fake_groups=gb, cfg=cfg, seed=5)
    assert r1.per_seed == r2.per_seed and (r1.lo, r1.hi) == (r2.lo, r2.hi)


def test_split_keeps_every_group_on_one_side():
    groups = [f"s{i // 3}" for i in range(30)]
    for seed in range(5):
        tr, te = _split(groups, 0.5, torch.Generator().manual_seed(seed), "x")
        assert {groups[i] for i in tr.tolist()}.isdisjoint({groups[i] for i in te.tolist()})
        assert len(tr) + len(te) == 30 and len(te) == 15


def test_tiles_cover_the_image():
    x = torch.arange(50 * 70, dtype=torch.float32).view(1, 1, 50, 70)
    t = tile_crops(x, 24)
    assert t.shape == (1, 3 * 3, 1, 24, 24)
    seen = torch.zeros(50, 70, dtype=torch.bool)
    for k in range(t.shape[1]):
        v = t[0, k, 0]
        y0, x0 = divmod(int(v[0, 0]), 70)
        seen[y0:y0 + 24, x0:x0 + 24] = True
    assert bool(seen.all())


def test_another_classifier_can_be_plugged_in(sets):
    a, ga, _, _, low, gl = sets

    class Energy(nn.Module):  # a generic small CNN of someone else's
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3),
                                     nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                     nn.Linear(8, 1))

        def forward(self, x):
            return self.net(x)  # (B, 1) logits are accepted

    r = c2st(a, low, real_groups=ga, fake_groups=gl, classifier=lambda seed: Energy(),
             cfg=C2STConfig(seeds=1, steps=30))
    assert 0.0 <= r.accuracy <= 1.0 and np.isfinite(r.lo)


def test_bad_input_is_refused(sets):
    a, ga, b, gb, _, _ = sets
    with pytest.raises(MedShiftError, match="group"):
        c2st(a, b, real_groups=ga, fake_groups=["one"] * len(gb))
    with pytest.raises(MedShiftError, match="NaN"):
        c2st(a, b * float("nan"))
    with pytest.raises(MedShiftError, match=r"\(N, 1, H, W\)"):
        c2st(a[:, 0], b)
    with pytest.raises(MedShiftError, match="entries"):
        c2st(a, b, real_groups=ga[:-1])
    with pytest.raises(MedShiftError, match="even batch"):
        C2STConfig(batch=7)


def test_no_training_code_reaches_the_c2st():
    """The C2ST is a judge: nothing under train/ (the students' discriminator included) may
    import it, directly or through other modules."""
    from test_architecture import MODULES, _reach

    for name in MODULES:
        if name.startswith("medshift_fast.train"):
            assert "medshift_fast.eval.c2st" not in _reach(name), name
