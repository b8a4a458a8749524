"""`medshift utility` (the sim-to-real utility benchmark) on a tiny simulated dataset: the
outputs, the cache, what training sees, where the classical route is fitted, bad inputs."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import torch

from medshift_fast.cli import main
from medshift_fast.errors import MedShiftError

DOMAINS = ("synthetic_low", "synthetic_high", "real_low", "real_normal", "real_exposure")
FAST = ["--taus", "0.5", "--combo-tau", "0.5", "--seeds", "2", "--steps", "2",
        "--batch-size", "2", "--crop", "8", "--widths", "4,8", "--min-test-images", "2",
        "--bootstrap", "50", "--no-progress"]


def _run(path, domains=DOMAINS):
    from medshift_fast.models import build_model
    from medshift_fast.run import save_run
    from medshift_fast.train import TrainConfig

    torch.manual_seed(0)
    m = build_model("tiny", num_classes=len(domains), model_channels=16, head_channels=16)
    sd = m.state_dict()
    with torch.no_grad():  # a non-zero output layer: the translation is not the identity
        for k, v in sd.items():
            if k.startswith("out."):
                v.normal_(0, 0.05)
    return save_run(path, TrainConfig(image_size=16), m.config, domains, sd, sd)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """6 subjects x 2 views at 16 px (train 4 subjects, val 1, test 1) and an untrained run."""
    from medshift_fast.data import simulate

    root = tmp_path_factory.mktemp("util")
    simulate(root / "data", subjects=6, views=2, size=16, seed=0, progress=False)
    _run(root / "run")
    _run(root / "run2", ("synthetic_low", "real_normal"))
    return root


def _args(sim, out, data=None, run="run", *extra):
    return ["utility", "--checkpoint", str(sim / run), "--data", str(data or sim / "data"),
            "--source", "synthetic_low", "--target", "real_normal", "--out", str(out), *FAST,
            *extra]


@pytest.fixture()
def no_training(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("training started")

    monkeypatch.setattr("medshift_fast.eval.downstream.train_task", boom)


def _copy(sim, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(sim / "data", data)
    return data


def test_end_to_end_outputs_cache_and_stage_lines(sim, tmp_path, capsys, monkeypatch):
    out = tmp_path / "u"
    assert main(_args(sim, out)) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[utility]")]
    assert len(lines) >= 9  # data, translation, classical fit, 6 conditions, report
    for f in ("report.md", "metrics.csv", "per_seed.csv", "predictions.png", "utility.json"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    names = [r["condition"] for r in rows]
    assert names == ["synthetic (as is)", "translated τ=0.5", "hist-match + noise + blur",
                     "domain randomisation", "translated τ=0.5 + randomisation",
                     "real (oracle)"]
    assert float(rows[0]["gap_closed"]) == 0.0 and float(rows[-1]["gap_closed"]) == 1.0
    assert all(float(r["score"]) >= 0 and r["n_test"] == "2" for r in rows)
    assert len(list(csv.DictReader(open(out / "per_seed.csv")))) == 12
    before = (out / "metrics.csv").read_text()

    def boom(*a, **k):  # a rerun is served by the cache: no training, no translation
        raise AssertionError("recomputed")

    monkeypatch.setattr("medshift_fast.eval.downstream.train_task", boom)
    monkeypatch.setattr("medshift_fast.translate.translator.Translator.translate", boom)
    assert main(_args(sim, out)) == 2  # a previous output needs --overwrite
    assert main(_args(sim, out, None, "run", "--overwrite")) == 0
    assert (out / "metrics.csv").read_text() == before


def test_training_never_sees_the_real_test_views(sim, tmp_path, monkeypatch):
    from medshift_fast.eval import downstream
    from medshift_fast.eval.utility_data import load_set

    seen = []
    real = downstream.train_task

    def spy(x, y, **kw):
        seen.append(x.clone())
        return real(x, y, **kw)

    monkeypatch.setattr("medshift_fast.eval.downstream.train_task", spy)
    assert main(_args(sim, tmp_path / "u")) == 0
    from medshift_fast.eval.downstream import bin_views

    test_views = bin_views(torch.cat([load_set(sim / "data", d, "test").x for d in DOMAINS]), 2)
    train_src = bin_views(load_set(sim / "data", "synthetic_low", "train").x, 2)
    assert len(seen) == 12
    for x in seen:
        assert x.shape[0] == train_src.shape[0]
        d = (x[:, None] - test_views[None]).abs().flatten(2).amax(-1)  # (train, test)
        assert float(d.min()) > 1e-3  # no training image is (a rendering of) a test view
    assert torch.equal(seen[0], train_src)  # synthetic as is


def test_refuses_a_test_split_that_shares_subjects_with_training(sim, tmp_path, capsys,
                                                               no_training):
    data = _copy(sim, tmp_path)
    rows = list(csv.DictReader(open(data / "manifest.csv")))
    test_subj = next(r["subject"] for r in rows if r["split"] == "test")
    for r in rows:
        if r["subject"] == test_subj and r["domain"] == "synthetic_low":
            r["split"] = "train"
    with open(data / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    assert main(_args(sim, tmp_path / "u", data)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "shares" in err[0] and "with the training data" in err[0]


def test_classical_route_is_fitted_on_the_validation_split_only(sim, tmp_path, monkeypatch):
    from medshift_fast.eval import sim2real
    from medshift_fast.eval.utility_data import load_set

    got = {}
    real_fit = sim2real.MatchNoiseBlur.fit.__func__

    def spy(cls, src_val, tgt_val, **kw):
        got["src"], got["tgt"], got["split"] = src_val, tgt_val, kw.get("split")
        return real_fit(cls, src_val, tgt_val, **kw)

    monkeypatch.setattr(sim2real.MatchNoiseBlur, "fit", classmethod(spy))
    assert main(_args(sim, tmp_path / "u", None, "run", "--conditions",
                      "synthetic,classical,oracle")) == 0
    assert got["split"] == "val"
    assert torch.equal(got["src"], load_set(sim / "data", "synthetic_low", "val").x)
    assert torch.equal(got["tgt"], load_set(sim / "data", "real_normal", "val").x)


def test_classical_parameters_follow_the_validation_images():
    """The blur and noise curve are read from the (target) validation images: blurrier, noisier
    val images give a larger blur / higher curve; applying is deterministic."""
    from medshift_fast.eval.sim2real import MatchNoiseBlur, gaussian_blur

    g = torch.Generator().manual_seed(0)
    base = gaussian_blur(torch.rand(6, 1, 32, 32, generator=g) * 2 - 1, 3.0)
    src = (base + 0.01 * torch.randn(base.shape, generator=g)).clamp(-1, 1)
    sharp = (base + 0.02 * torch.randn(base.shape, generator=g)).clamp(-1, 1)
    soft = gaussian_blur((base + 0.08 * torch.randn(base.shape, generator=g)), 1.2).clamp(-1, 1)
    a, b = MatchNoiseBlur.fit(src, sharp), MatchNoiseBlur.fit(src, soft)
    assert b.blur > a.blur
    assert np.nanmean(b.target_curve) != np.nanmean(a.target_curve)
    assert torch.equal(a.apply(src, seed=1), a.apply(src, seed=1))


@pytest.mark.parametrize("case", ["missing", "size", "kind", "none", "domain", "few"])
def test_bad_inputs_one_line_exit_2_before_any_training(sim, tmp_path, capsys, no_training,
                                                        case):
    import tifffile

    data, run, extra = _copy(sim, tmp_path), "run", []
    if case == "missing":
        (data / "labels/s000_v01.tif").unlink()
        want = "labels for"
    elif case == "size":
        rows = list(csv.DictReader(open(data / "manifest.csv")))
        vid = next(r["view_id"] for r in rows if r["split"] == "test")
        tifffile.imwrite(data / f"labels/{vid}.tif", np.zeros((8, 8), np.float32))
        want = "is 8x8 but its image is 16x16"
    elif case == "kind":
        extra = ["--task", "segmentation"]
        want = "is a map but the task needs a mask"
    elif case == "none":
        shutil.rmtree(data / "labels")
        rows = list(csv.DictReader(open(data / "manifest.csv")))
        with open(data / "manifest.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, [c for c in rows[0] if c != "labels"],
                               extrasaction="ignore", lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
        want = "no labels found"
    elif case == "domain":
        run = "run2"
        extra = ["--source", "real_low"]
        want = "unknown domain 'real_low'"
    else:
        extra = ["--min-test-images", "48"]
        want = "only 2 real_normal test views"
    out = tmp_path / "u"
    assert main(_args(sim, out, data, run, *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and want in err[0], err
    assert not (out / "report.md").exists()


def test_config_refusals():
    from medshift_fast.eval.utility import UtilityConfig

    base = dict(checkpoint="r", data="d", source="synthetic_low", target="real_normal", out="o")
    for bad, match in ((dict(conditions=("synthetic", "magic")), "unknown condition"),
                       (dict(tune_split="test"), "must differ from the test split"),
                       (dict(task="detection"), "--task"),
                       (dict(crop=30), "multiple of 4"),
                       (dict(target="synthetic_low"), "same domain")):
        with pytest.raises(MedShiftError, match=match):
            UtilityConfig(**{**base, **bad})


# --- the pieces ------------------------------------------------------------------------------
def test_summary_gap_closed_and_verdicts():
    from medshift_fast.eval.utility_report import summarize, verdict_lines

    rng = np.random.default_rng(0)
    base = rng.uniform(1, 2, 50)
    per_seed = {"synthetic (as is)": [list(base + 1.0 + e) for e in (0.0, 0.01, -0.01)],
                "translated τ=0.6": [list(base + 0.5 + e) for e in (0.0, 0.01, -0.01)],
                "real (oracle)": [list(base + e) for e in (0.0, 0.01, -0.01)]}
    rows, boot = summarize(per_seed, "regression", 200)
    g = {r["condition"]: r for r in rows}
    assert g["translated τ=0.6"]["gap_closed"] == pytest.approx(0.5)
    assert g["translated τ=0.6"]["gap_lo"] == pytest.approx(0.5)  # paired: exact per resample
    assert g["synthetic (as is)"]["seed_std"] == pytest.approx(0.01)
    lines = verdict_lines(rows, boot, "regression", "mm")
    assert lines[0].startswith("The gap is real") and "100.0x" in lines[0]
    assert "Best without real labels: translated τ=0.6" in lines[1]
    per_seed["real (oracle)"] = [list(base + 0.99 + e) for e in (0.0, 0.01, -0.01)]
    rows, boot = summarize(per_seed, "regression", 200)
    assert verdict_lines(rows, boot, "regression", "mm")[0].startswith("The gap is NOT")


def test_domain_randomisation_is_seeded_and_masks_cutouts():
    from medshift_fast.eval.sim2real import randomize

    x = torch.rand(16, 1, 24, 24) * 2 - 1
    a, wa = randomize(x, torch.Generator().manual_seed(3))
    b, wb = randomize(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and torch.equal(wa, wb)
    assert a.min() >= -1 and a.max() <= 1 and not torch.equal(a, x)
    assert set(wa.unique().tolist()) <= {0.0, 1.0} and (wa == 0).any()


def test_training_is_reproducible_and_scores_are_closed_form():
    from medshift_fast.eval.downstream import TaskBudget, predict, scores, train_task
    from medshift_fast.models.taskunet import TaskUNet

    x, y = torch.rand(4, 1, 16, 16) * 2 - 1, torch.rand(4, 1, 16, 16) * 10
    b = TaskBudget(steps=3, batch_size=2, crop=8, widths=(4, 8))
    r1 = train_task(x, y, task="regression", budget=b, seed=5, scale=10.0, randomize=True)
    r2 = train_task(x, y, task="regression", budget=b, seed=5, scale=10.0, randomize=True)
    assert all(torch.equal(r1["state"][k], r2["state"][k]) for k in r1["state"])
    p = predict(r1["state"], x[:, :, :14, :14], task="regression", budget=b, scale=10.0)
    assert p.shape == (4, 1, 14, 14)  # padded to the factor, cropped back
    assert torch.allclose(scores(y, y, "regression"), torch.zeros(4))
    assert torch.allclose(scores(y + 2, y, "regression"), torch.full((4,), 2.0))
    m = (y > 5).float()
    assert torch.allclose(scores(m, m, "segmentation"), torch.ones(4))
    assert TaskUNet((4, 8, 16))(torch.zeros(1, 1, 12, 20)).shape == (1, 1, 12, 20)
    with pytest.raises(MedShiftError, match="divisible by 4"):
        TaskUNet((4, 8, 16))(torch.zeros(1, 1, 10, 10))


def test_demo_section_lines(sim, tmp_path):
    from medshift_fast.eval.utility import demo_section

    over = dict(taus=(0.5,), combo_tau=0.5, seeds=2, steps=2, batch_size=2, crop=8,
                widths=(4, 8), min_test_images=2, bootstrap=50, workers=1)
    lines, secs = demo_section(sim / "run", sim / "data", tmp_path / "utility",
                               log=lambda m: None, **over)
    text = "\n".join(lines)
    assert lines[0].startswith("## Does the translation train better models?")
    assert "| real (oracle) |" in text and "utility/predictions.png" in text and secs > 0
    assert (tmp_path / "utility" / "predictions.png").is_file()


def test_translation_does_not_depend_on_workers(sim, tmp_path):
    """One thread per fixed chunk, a generator per image: 1 or 2 worker processes give the same
    bits (so the cached training sets, and every score, do too)."""
    from medshift_fast.eval.utility import UtilityConfig
    from medshift_fast.eval.utility_data import load_set
    from medshift_fast.eval.utility_run import CHUNK, translated
    from medshift_fast.run import load_run
    from medshift_fast.translate import Translator

    x = load_set(sim / "data", "synthetic_low", "train").x
    x = torch.cat([x] * (CHUNK // x.shape[0] + 1))[:CHUNK + 2]  # two chunks
    run = load_run(sim / "run")
    tr = Translator(run, "synthetic_low", "real_normal", tau=0.5, seed=0)
    outs = []
    for w in (1, 2):
        cfg = UtilityConfig(checkpoint=str(sim / "run"), data=str(sim / "data"),
                            source="synthetic_low", target="real_normal", out="o", workers=w)
        outs.append(translated(tr, x, run, cfg, tmp_path / f"c{w}", False, "t"))
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], x)
    # the precision is part of the cache key: a bf16 translation is another training set
    def n_cached(bf16):
        tr.bf16 = bf16
        translated(tr, x[:2], run, cfg, tmp_path / "c1", False, "t")
        return len(list((tmp_path / "c1").glob("translated_*")))

    assert n_cached(False) == 2 and n_cached(True) == 3 and n_cached(False) == 3
