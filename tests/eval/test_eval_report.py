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
