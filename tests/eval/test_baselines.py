"""Classical baselines: the filters are the libraries', tuning picks the grid optimum on the
validation split, and the test split is never read."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from medshift_fast.errors import MedShiftError
from medshift_fast.eval import baselines as B
from medshift_fast.eval.physics import noise_power_spectrum


def _smooth(n=3, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    ph = torch.rand(n, 1, 1, generator=g) * 6
    return (0.6 * torch.sin(5 * xx + ph) * torch.cos(4 * yy)).unsqueeze(1)


def _noisy(x, std, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (x + std * torch.randn(x.shape, generator=g)).clamp(-1, 1)


def test_parse_classical_names_and_refuses_unknown():
    assert [b.key for b in B.parse_classical("bm3d, gaussian")] == ["gaussian", "bm3d"]
    assert B.parse_classical("none") == () and B.parse_classical("") == ()
    assert [b.key for b in B.parse_classical("gaussian,tv,bm3d")] == [b.key for b in B.CLASSICAL]
    with pytest.raises(MedShiftError, match="median"):
        B.parse_classical("tv,median")


def test_filters_are_the_libraries_on_the_0_1_scale():
    from scipy.ndimage import gaussian_filter
    from skimage.restoration import denoise_tv_chambolle

    x = _noisy(_smooth(2), 0.1)
    u = (x[:, 0].double().numpy() + 1) / 2
    g = B.BY_KEY["gaussian"].apply(x, 0.7)
    ref = np.stack([gaussian_filter(v, 0.7, mode="reflect") for v in u]) * 2 - 1
    assert g.shape == x.shape and g.dtype == torch.float32
    np.testing.assert_allclose(g[:, 0].numpy(), ref, atol=1e-6)
    t = B.BY_KEY["tv"].apply(x, 0.05)
    ref = np.stack([denoise_tv_chambolle(v, weight=0.05) for v in u]) * 2 - 1
    np.testing.assert_allclose(t[:, 0].numpy(), np.clip(ref, -1, 1), atol=1e-6)
    with pytest.raises(MedShiftError, match="N, 1, H, W"):
        B.BY_KEY["tv"].apply(x[:, 0], 0.05)


def test_bm3d_denoises_deterministically():
    pytest.importorskip("bm3d")
    clean = _smooth(1)
    x = _noisy(clean, 0.1)
    b = B.BY_KEY["bm3d"]
    y1, y2 = b.apply(x, 0.05), b.apply(x, 0.05)
    assert torch.equal(y1, y2)  # one thread: bit-reproducible
    assert (y1 - clean).square().mean() < 0.5 * (x - clean).square().mean()
    assert y1.min() >= -1 and y1.max() <= 1


def test_tune_picks_the_psnr_optimum_and_records_the_curve():
    from medshift_fast.eval import psnr

    src = _smooth(4)
    tgt = B.BY_KEY["gaussian"].apply(src, 1.0)  # the "true target" is src blurred by sigma 1
    t = B.tune(B.BY_KEY["gaussian"], src, target=tgt, split="val")
    assert t.value == 1.0 and t.objective == "psnr_tgt" and not t.at_edge
    assert [v for v, _ in t.curve] == list(B.BY_KEY["gaussian"].grid)
    scores = dict(t.curve)
    assert scores[0.7] == pytest.approx(float(psnr(B.BY_KEY["gaussian"].apply(src, 0.7), tgt)))
    assert t.method == "Gaussian (σ 1 px)" and t.to_dict()["split"] == "val"
    again = B.tune(B.BY_KEY["gaussian"], src, target=tgt, split="val")
    assert again.curve == t.curve  # deterministic


def test_tune_without_aligned_targets_matches_the_target_noise_spectrum():
    clean = _smooth(6)
    src = _noisy(clean, 0.08)
    ref = noise_power_spectrum(B.BY_KEY["gaussian"].apply(src, 1.4))  # what the target looks like
    t = B.tune(B.BY_KEY["gaussian"], src, nps_ref=ref)
    assert t.objective == "nps_dist" and t.value == 1.4
    assert min(s for _, s in t.curve) == pytest.approx(dict(t.curve)[1.4])
    with pytest.raises(MedShiftError, match="aligned targets or"):
        B.tune(B.BY_KEY["gaussian"], src)


def test_tune_extends_the_grid_down_within_the_parameter_bounds():
    src = _noisy(_smooth(3), 0.0)
    t = B.tune(B.BY_KEY["gaussian"], src, target=src)  # identity is best: the smallest sigma
    g, (lo, _) = B.BY_KEY["gaussian"].grid, B.BY_KEY["gaussian"].bounds
    vals = [v for v, _ in t.curve]
    assert t.value < g[0] and min(vals) >= lo and vals[-len(g):] == list(g)  # extended down
    assert t.at_edge == (t.value in (vals[0], vals[-1]))


def test_tune_extends_the_grid_past_an_end_until_the_optimum_is_inside():
    src = _smooth(4)
    b = B.BY_KEY["gaussian"]
    tgt = b.apply(src, 4.5)  # beyond the grid's last value (2.8)
    t = B.tune(b, src, target=tgt)
    vals = [v for v, _ in t.curve]
    assert vals[:len(b.grid)] == list(b.grid) and len(vals) > len(b.grid)
    assert not t.at_edge and b.grid[-1] < t.value < 8.0
    assert max(s for _, s in t.curve) == dict(t.curve)[t.value]


# --- never the test split ----------------------------------------------------------------------
SPLITS = {"s0": "train", "s1": "train", "s2": "val", "s3": "val", "s4": "test", "s5": "test"}
VAL_SIGMA, TEST_SIGMA = 0.7, 2.0


def make_split_data(root, size=16, views=2):
    """Manifest dataset: synthetic_low sources; real_normal targets = the source blurred by
    0.7 px in train/val and by 2 px in test, so a tuner that peeks at test picks 2."""
    from medshift_fast.data import write_png16

    rows = []
    for k, (subj, split) in enumerate(SPLITS.items()):
        src = _noisy(_smooth(views, size, seed=k), 0.05, seed=10 + k)
        sigma = TEST_SIGMA if split == "test" else VAL_SIGMA
        tgt = B.BY_KEY["gaussian"].apply(src, sigma)
        for v in range(views):
            vid = f"{subj}_v{v:02d}"
            for dom, img in (("synthetic_low", src[v, 0]), ("real_normal", tgt[v, 0])):
                rel = f"{dom}/{vid}.png"
                write_png16(root / rel, img.numpy())
                rows.append({"path": rel, "domain": dom, "subject": subj, "view_id": vid,
                             "split": split})
    with open(root / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "domain", "subject", "view_id", "split"])
        w.writeheader()
        w.writerows(rows)
    return rows


def test_tuning_never_reads_the_test_split(tmp_path):
    rows = make_split_data(tmp_path)
    for r in rows:  # every test-split file is now garbage: reading one would raise
        if r["split"] == "test":
            (tmp_path / r["path"]).write_bytes(b"not an image at all")
    gauss = B.parse_classical("gaussian")
    (t,) = B.tune_all(gauss, tmp_path, "synthetic_low", "real_normal", split="val", size=16,
                      max_images=12)
    assert t.value == VAL_SIGMA and t.objective == "psnr_tgt" and t.n_images == 4
    val_files = {str(tmp_path / r["path"]) for r in rows if r["split"] == "val"}
    assert t.paths and set(t.paths) <= val_files
    with pytest.raises(MedShiftError, match="never tuned on the test split"):
        B.tune_all(gauss, tmp_path, "synthetic_low", "real_normal", split="test", size=16,
                   max_images=12)
    with pytest.raises(MedShiftError, match="split 'nope'"):
        B.tune_all(gauss, tmp_path, "synthetic_low", "real_normal", split="nope", size=16,
                   max_images=12)


def test_evaluate_tunes_on_val_not_on_the_test_split_it_scores(tmp_path):
    """End to end: on the test split sigma 2 would win; the evaluation still uses val's 0.7,
    and its own test-split score of that row shows the test optimum was not taken."""
    from medshift_fast.eval.evaluate import EvalConfig, evaluate
    from medshift_fast.models import build_model
    from medshift_fast.run import load_run, save_run
    from medshift_fast.train import TrainConfig

    make_split_data(tmp_path / "data")
    torch.manual_seed(0)
    m = build_model("tiny", num_classes=2, model_channels=16, head_channels=16)
    save_run(tmp_path / "run", TrainConfig(image_size=16), m.config,
             ("synthetic_low", "real_normal"), m.state_dict(), m.state_dict())
    res = evaluate(EvalConfig(checkpoint=str(tmp_path / "run"), data=str(tmp_path / "data"),
                              out=str(tmp_path / "ev"), source="synthetic_low",
                              target="real_normal", taus=(0.5,), steps=1, baselines=False,
                              classical="gaussian", allow_small_n=True, bootstrap=50,
                              progress=False), run=load_run(tmp_path / "run"))
    (tuning,) = res.settings["classical_tuning"]
    assert tuning["value"] == VAL_SIGMA and tuning["split"] == "val"
    row = next(r for r in res.rows if r["kind"] == "classical")
    assert row["method"] == "Gaussian (σ 0.7 px)" and row["baseline"] == "gaussian"
    test_opt = B.tune(B.BY_KEY["gaussian"], res.images["source"],
                      target=res.images["target (true)"])
    assert test_opt.value == TEST_SIGMA  # what peeking at the test split would have chosen
    assert "tuned on the validation split" in (tmp_path / "ev" / "report.md").read_text()
