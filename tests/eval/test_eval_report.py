"""The trade-off verdict: Pareto dominance of one tau-sweep over another, on both planes."""

from medshift_fast.eval.report import dominance


def _row(kind, tau, ssim, fid, psnr, nps):
    return {"kind": kind, "tau": tau, "ssim_src": ssim, "fid_enl0": fid, "psnr_tgt": psnr,
            "nps_dist": nps}


def test_dominance_says_which_sweep_wins_on_each_plane():
    rows = [_row("medshift", 0.3, 0.85, 30, 27, 0.5), _row("medshift", 0.6, 0.95, 40, 26, 0.9),
            _row("sdedit", 0.3, 0.60, 50, 24, 0.4), _row("sdedit", 0.6, 0.80, 45, 25, 1.0)]
    first, second = dominance(rows)
    assert "Pareto-dominates" in first  # every SDEdit point is worse on SSIM and FID
    assert "does NOT" in second and "τ=0.3" in second  # SDEdit τ=0.3 has the lowest NPS
    assert dominance([_row("medshift", 0.3, 1, 1, 1, 1)]) == []


# --- verdicts against the classical baselines and SDEdit ----------------------------------------
def _r(method, kind, psnr, nps, fid, tau=""):
    return {"method": method, "kind": kind, "tau": tau, "psnr_tgt": psnr, "nps_dist": nps,
            "fid_enl0": fid, "ssim_src": 0.9}


def test_dominated_by_names_the_dominating_rivals_per_plane():
    from medshift_fast.eval.report import dominated_by, verdict_lines

    student = _r("MedShift 1-step τ=0.6", "student", 38.0, 4.6, 56.0, 0.6)
    rows = [
        student,
        _r("TV (weight 0.03)", "classical", 40.5, 2.2, 55.0),  # better on all three
        _r("Gaussian (σ 0.6 px)", "classical", 39.6, 5.0, 50.0),  # not on NPS, yes on FID
        _r("SDEdit τ=0.6", "sdedit", 37.0, 1.0, 40.0),  # lower PSNR: never dominates
        _r("identity", "baseline", 99.0, 0.0, 0.0),  # not a rival kind
        _r("true target", "oracle", 99.0, 0.0, 0.0),
    ]
    hits = dominated_by(rows, student)
    assert ("psnr tgt vs nps dist", "TV (weight 0.03)") in hits
    assert ("psnr tgt vs fid enl0", "TV (weight 0.03)") in hits
    assert ("psnr tgt vs fid enl0", "Gaussian (σ 0.6 px)") in hits
    assert ("psnr tgt vs nps dist", "Gaussian (σ 0.6 px)") not in hits
    assert not any(m in ("SDEdit τ=0.6", "identity", "true target") for _, m in hits)
    assert dominated_by(rows, rows[1]) == []  # TV is beaten by nothing
    (line,) = verdict_lines(rows)
    assert "DOMINATED" in line and "TV (weight 0.03)" in line
    free = [_r("MedShift τ=0.6", "medshift", 41.0, 2.0, 30.0, 0.6), rows[1]]
    assert "not Pareto-dominated" in verdict_lines(free)[0]
    nan = _r("MedShift τ=0.6", "medshift", float("nan"), 2.0, 30.0, 0.6)
    assert dominated_by([nan, rows[1]], nan) == []  # no aligned truth: nothing to judge
    assert "no aligned ground truth" in verdict_lines([nan, rows[1]])[0]


def test_zoom_grid_is_an_exact_integer_nearest_neighbour_zoom(tmp_path):
    import numpy as np
    import pytest
    import torch
    from PIL import Image

    from medshift_fast.errors import MedShiftError
    from medshift_fast.eval.report import save_zoom_grid, zoom_mosaic

    g = torch.Generator().manual_seed(0)
    imgs = {"source": torch.rand(3, 1, 20, 24, generator=g) * 2 - 1,
            "TV": torch.rand(3, 1, 20, 24, generator=g) * 2 - 1}
    crop, z, gap = (2, 5, 6, 7), 3, 2
    m = zoom_mosaic(imgs, ["source", "TV"], [2, 0], crop, zoom=z, gap=gap)
    assert m.shape == (2 * 6 * z + gap, 2 * 7 * z + gap) and m.dtype == np.uint8
    tile = m[6 * z + gap:, 7 * z + gap:]  # second row (image 0), second column (TV)
    want = np.rint((imgs["TV"][0, 0, 2:8, 5:12].numpy() + 1) * 127.5).astype(np.uint8)
    assert np.array_equal(tile, np.kron(want, np.ones((z, z), np.uint8)))
    assert (m[6 * z:6 * z + gap] == 255).all()  # the white gap between rows
    p = save_zoom_grid(tmp_path / "zoom.png", imgs, ["source", "TV"], [2, 0], crop, zoom=z)
    im = np.asarray(Image.open(p))
    assert im.shape == (m.shape[0] + 14, m.shape[1]) and np.array_equal(im[14:], m)
    with pytest.raises(MedShiftError, match="does not fit"):
        zoom_mosaic(imgs, ["source"], [0], (15, 0, 8, 8))
    with pytest.raises(MedShiftError, match="BM3D"):
        zoom_mosaic(imgs, ["source", "BM3D"], [0], crop)


def test_report_sections_for_small_n_and_the_bootstrap():
    from medshift_fast.eval.report import bootstrap_table, markdown_table, small_n_lines

    lines = small_n_lines(12, 168)
    assert "n = 12" in lines[0] and "Warning" in lines[1] and "12 images" in lines[1]
    assert len(small_n_lines(64, 168)) == 1
    rows = [{"method": "TV (weight 0.02)", "kind": "classical", "n": 48, "kid": 0.0123,
             "kid_std": 0.0041, "fid_enl0": 50.0}]
    table = markdown_table(rows)
    assert "0.0123 ± 0.0041" in table and "FID-ENL0↓ (n=48)" in table
    boot = [{"method": "student", "baseline": "TV", "metric": "psnr_tgt", "diff": -2.5, "lo": -3.0,
             "hi": -2.0, "verdict": "baseline better"},
            {"method": "student", "baseline": "TV", "metric": "kid", "diff": 0.001, "lo": -0.002,
             "hi": 0.004, "verdict": "not resolved"}]
    t = bootstrap_table(boot)
    assert "-2.50 [-3.00, -2.00] ▼" in t and "+0.0010 [-0.0020, +0.0040] |" in t
