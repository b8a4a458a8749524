"""The X-ray simulator: noise physics, beam hardening, alignment, determinism, output layout."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medshift_fast.data import DOMAINS, physics, simulate
from medshift_fast.data.phantom import _p, rotation
from medshift_fast.data.projector import (
    Geometry,
    line_integrals,
    make_rays,
    project_volume,
    voxelize,
)
from medshift_fast.data.simulator import (
    SimConfig,
    render_domains,
    subject_line_integrals,
    subject_splits,
)
from medshift_fast.errors import MedShiftError

REAL = ("real_low", "real_normal", "real_exposure")


@pytest.mark.parametrize("domain", REAL)
def test_flat_field_variance_matches_poisson(domain):
    """Var of an open-field image = (2/(hi-lo))^2 (sum(G^2) Phi + sigma_e^2) / Phi^2 (+-10 %)."""
    cfg = SimConfig(size=128)
    S, ss = cfg.size, cfg.ss
    L = torch.zeros(S * ss, S * ss, 2, dtype=torch.float64)
    phi = physics.real_fluence(L, ss, cfg)
    n0 = cfg.photons[domain]
    a = physics.real_image(phi, n0, cfg, np.random.default_rng(1))
    b = physics.real_image(phi, n0, cfg, np.random.default_rng(2))
    inner = (slice(4, -4), slice(4, -4))  # away from the reflect-padded border
    measured = (((a - b) ** 2) / 2)[inner].mean().item()
    lam = n0 * (1.0 + cfg.heel * (1.0 - (torch.arange(S) + 0.5) * 2.0 / S))  # open field x heel
    lo, hi = cfg.real_window
    gain = physics.noise_gain(cfg.detector_blur_px)
    pred_rows = (2.0 / (hi - lo)) ** 2 * (gain * lam + cfg.electronic_noise**2) / lam**2
    predicted = pred_rows[4:-4].double().mean().item()
    assert abs(measured / predicted - 1.0) < 0.10, (measured, predicted)
    # and the no-noise expectation is the log of the heel profile, i.e. there is no bias
    clean = physics.real_image(phi, n0, cfg, None)
    want = 2 * (-torch.log(phi[:, 0]) - lo) / (hi - lo) - 1
    assert torch.allclose(clean.mean(1)[4:-4], want[4:-4], atol=1e-6)


def test_noise_decreases_low_normal_exposure():
    cfg = SimConfig(size=64, views=1, subjects=1)
    _, _, L = subject_line_integrals(cfg, 0)
    a = render_domains(L[0], cfg, [0, 0, 0])
    b = render_domains(L[0], cfg, [1, 0, 0])
    clean = render_domains(L[0], cfg, None)
    head = clean["synthetic_high"] > -0.6
    std = {d: ((a[d] - b[d])[head].std() / 2**0.5).item() for d in DOMAINS}
    assert std["real_low"] > std["real_normal"] > std["real_exposure"] > 0
    assert std["synthetic_low"] > std["synthetic_high"] > 0
    assert 0.02 < std["real_low"] < 0.15  # clearly visible at 64 px (image range is 2)


def test_beam_hardening_sublinear_real_linear_synthetic():
    S = 32
    bone = torch.linspace(0.0, 40.0, S, dtype=torch.float64)  # mm of cortical bone per column
    L = torch.zeros(S, S, 2, dtype=torch.float64)
    L[..., 0] = 60.0  # soft tissue
    L[..., 1] = bone
    mu_w, _ = physics.mu_per_mm(50.0)
    for cfg in (SimConfig(size=S, supersample=1, scatter_amplitude=0.0, heel=0.0,
                          focal_blur_px=0.0, detector_blur_px=0.0), SimConfig(size=S,
                                                                              supersample=1)):
        imgs = render_domains(L, cfg, None)
        for d in DOMAINS:
            p = physics.image_to_log_signal(imgs[d], d, cfg).mean(0)  # average over rows
            slope = torch.diff(p) / torch.diff(bone)
            if d.startswith("synthetic"):
                fit = np.polyfit(bone.numpy(), p.numpy(), 1)
                resid = p.numpy() - np.polyval(fit, bone.numpy())
                assert np.abs(resid).max() < 1e-6  # exactly linear: monochromatic
                assert fit[1] == pytest.approx(60.0 * mu_w, rel=1e-6)
            else:
                inner = slope[2:-2]  # skip blur-affected border columns
                assert (torch.diff(inner) < 0).all(), d  # effective mu falls with thickness
                assert inner[-1] < 0.8 * inner[0], d


def _edges(x):
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=x.dtype)
    x = x[None, None]
    gx = F.conv2d(x, kx[None, None])
    gy = F.conv2d(x, kx.T[None, None])
    return (gx**2 + gy**2).sqrt()[0, 0]


def test_five_renderings_are_aligned():
    cfg = SimConfig(size=64, views=2, subjects=1)
    _, _, L = subject_line_integrals(cfg, 0)
    for v in range(2):
        imgs = render_domains(L[v], cfg, None)
        ref = _edges(imgs["synthetic_high"])
        for d in DOMAINS:
            e = _edges(imgs[d])
            aligned = np.corrcoef(ref.ravel(), e.ravel())[0, 1]
            shifted = np.corrcoef(ref.ravel(), torch.roll(e, 3, 1).ravel())[0, 1]
            assert aligned > 0.6 and aligned > shifted + 0.2, (d, aligned, shifted)


def test_determinism_and_layout(sim_root, tmp_path):
    again = simulate(tmp_path / "again", subjects=3, views=2, size=32, seed=0, progress=False)
    other = simulate(tmp_path / "other", subjects=3, views=2, size=32, seed=1, progress=False)
    files = sorted(p.relative_to(sim_root) for p in sim_root.rglob("*") if p.is_file())
    assert len(files) == 38 and all((again / f).is_file() for f in files)  # 30 PNG, 6 labels
    for f in files:
        assert (sim_root / f).read_bytes() == (again / f).read_bytes(), f
    assert (sim_root / "real_low/s000_v00.png").read_bytes() != (
        other / "real_low/s000_v00.png").read_bytes()
    rows = list(csv.DictReader(open(sim_root / "manifest.csv")))
    assert list(rows[0]) == ["path", "domain", "subject", "view_id", "split", "labels"]
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    meta = json.loads((sim_root / "simulator.json").read_text())
    assert SimConfig.from_dict(meta["config"]) == SimConfig(subjects=3, views=2, size=32)
    assert meta["tables"]["mu_rho_bone"][0] == physics.MU_RHO_BONE[0]
    assert len(meta["subjects"]) == 3 and "anatomy" in meta["subjects"][0]
    with pytest.raises(MedShiftError, match="--overwrite"):
        simulate(tmp_path / "again", subjects=1, views=1, size=16, progress=False)


def test_subject_splits_nonempty():
    for n in (3, 4, 7, 10, 20):
        sp = subject_splits(SimConfig(subjects=n))
        assert set(sp) == {"train", "val", "test"} and sp.count("train") >= n // 2
    assert subject_splits(SimConfig(subjects=1)) == ["train"]


def test_subjects_vary():
    cfg = SimConfig(size=32, views=1, subjects=2)
    a = subject_line_integrals(cfg, 0)[2]
    b = subject_line_integrals(cfg, 1)[2]
    assert (a - b).abs().mean() > 0.05 * a.abs().mean()


@pytest.mark.parametrize("kind", ["parallel", "cone"])
def test_analytic_chords_exact(kind):
    r = 50.0
    geom = Geometry(kind, sod=700.0, fov=200.0)
    views = [(10.0, -20.0, 3.0, -4.0)]
    sphere = [_p([0, 0, 0], [r, r, r], soft=1.0)]
    L = line_integrals(sphere, views, 20, geom)[0, ..., 0]
    # closed form: the chord of a line at distance q from the centre is 2 sqrt(r^2 - q^2)
    O, D = make_rays(views, 20, geom)
    o, d = O[0].reshape(20, 20, 3), D[0].reshape(20, 20, 3)
    q2 = ((o - (o * d).sum(-1, keepdim=True) * d) ** 2).sum(-1)
    want = 2 * (r * r - q2).clamp(min=0).sqrt()
    assert torch.allclose(L, want, atol=1e-6) and want.max() > 90
    assert torch.equal(L, line_integrals(sphere, views, 20, geom, cull=False)[0, ..., 0])
    # a rotated, clipped ellipsoid: compare with dense sampling along each ray
    ell = [_p([5, -8, 12], [30, 45, 20], soft=0.5, bone=2.0, rot=rotation(rx=20, rz=35),
              planes=[((0.3, 0.2, 0.9), 15.0)])]
    La = line_integrals(ell, views, 20, geom)[0]
    t = torch.linspace(-100, 100, 2001, dtype=torch.float64)  # 0.1 mm steps
    if kind == "cone":
        t = t + 700  # make_rays' cone origins are the source, 700 mm from the isocentre
    pts = o[..., None, :] + t[:, None] * d[..., None, :]
    p = ell[0]
    loc = (pts - torch.from_numpy(p.center)) @ torch.from_numpy(p.rot)
    inside = ((loc / torch.from_numpy(p.axes)) ** 2).sum(-1) <= 1
    inside &= pts @ torch.tensor([0.3, 0.2, 0.9], dtype=torch.float64) <= 15.0
    chord = inside.sum(-1).double() * float(t[1] - t[0])
    assert torch.allclose(La[..., 0], 0.5 * chord, atol=0.15)
    assert torch.allclose(La[..., 1], 2.0 * chord, atol=0.6)
    assert La[..., 1].max() > 20


def test_voxel_projector_agrees_with_analytic():
    cfg = SimConfig(size=24, views=2, subjects=1, supersample=1)
    _, prims, _ = subject_line_integrals(cfg, 0)
    geom = Geometry(cfg.geometry, cfg.sod, cfg.fov)
    views = [(0.0, 0.0, 0.0, 0.0), (90.0, 0.0, 0.0, 0.0)]
    La = line_integrals(prims, views, 24, geom).reshape(2, -1, 2)
    O, D = make_rays(views, 24, geom)
    Lv = project_volume(voxelize(prims, 64, 280.0), 280.0, O, D, 128).double()
    ratio = Lv.sum((0, 1)) / La.sum((0, 1))
    assert ((ratio - 1).abs() < 0.03).all(), ratio
    rel = (Lv[..., 0] - La[..., 0]).abs().mean() / La[..., 0].mean()
    assert rel < 0.08


def test_config_validation():
    with pytest.raises(MedShiftError, match="--size"):
        SimConfig(size=0)
    with pytest.raises(MedShiftError, match="domain"):
        SimConfig(domains=("real_hi",))
    with pytest.raises(MedShiftError, match="photons"):
        SimConfig(photons={"real_low": 0.0, "real_normal": 1.0, "real_exposure": 1.0})
    cfg = SimConfig(domains=("real_low",))
    assert dataclasses.replace(cfg, seed=3).seed == 3


def test_parallel_geometry_and_domain_subset(tmp_path):
    out = simulate(tmp_path / "p", subjects=1, views=1, size=16, geometry="parallel",
                   domains=("synthetic_high", "real_normal"), progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["labels", "manifest.csv", "real_normal",
                                                     "simulator.json", "synthetic_high"]
