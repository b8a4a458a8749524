"""`medshift evaluate` end to end on a tiny simulated dataset (outputs exist and are sane)."""

import csv

import pytest

from medshift_fast.cli import main


@pytest.fixture(scope="module")
def sim_run(tmp_path_factory):
    from medshift_fast.data import simulate

    root = tmp_path_factory.mktemp("sim")
    simulate(root / "data", subjects=3, views=2, size=16, seed=0, progress=False)
    rc = main(["train", "--data", str(root / "data"), "--out", str(root / "run"), "--steps", "2",
               "--batch-size", "4", "--image-size", "16", "--no-progress"])
    assert rc == 0
    return root


def test_evaluate_writes_report(sim_run, tmp_path):
    out = tmp_path / "ev"
    rc = main(["evaluate", "--checkpoint", str(sim_run / "run"), "--data", str(sim_run / "data"),
               "--source", "synthetic_low", "--target", "real_normal", "--taus", "0.5",
               "--steps", "1", "--out", str(out), "--no-progress", "--allow-small-n",
               "--tune-images", "2", "--bootstrap", "200", "--c2st-seeds", "1",
               "--c2st-steps", "5"])
    assert rc == 0
    for f in ("report.md", "metrics.csv", "paired_bootstrap.csv", "grid.png", "tradeoff.png",
              "noise_curve.csv", "noise_curve.png", "hallucinations.csv"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    names = [r["method"] for r in rows]
    assert names[0] == "identity" and "true target" in names and "inversion τ=0" in names
    ident = rows[0]
    assert float(ident["ssim_src"]) == pytest.approx(1.0)
    report = (out / "report.md").read_text()
    assert "FID-ENL0" in report and "C2ST" in report and "halluc./img" in report
    for r in rows:  # the new columns on every row
        assert 0.0 <= float(r["c2st_acc"]) <= 1.0, r["method"]
        assert float(r["c2st_lo"]) <= float(r["c2st_acc"]) <= float(r["c2st_hi"])
        assert float(r["halluc_count"]) >= 0 and r["noise_curve_dev"] != ""
    assert float(ident["halluc_count"]) == 0.0  # the identity invents nothing by construction
    curves = list(csv.DictReader(open(out / "noise_curve.csv")))
    assert {c["method"] for c in curves} >= {"target (reference)", "identity", "true target"}


def test_evaluate_unknown_domain_exit_2(sim_run, tmp_path, capsys):
    rc = main(["evaluate", "--checkpoint", str(sim_run / "run"), "--data", str(sim_run / "data"),
               "--source", "synthetic_low", "--target", "moon", "--out", str(tmp_path)])
    assert rc == 2
    assert "moon" in capsys.readouterr().err


def test_evaluate_refuses_fid_on_too_few_images_before_any_work(sim_run, tmp_path, capsys):
    out = tmp_path / "ev"
    rc = main(["evaluate", "--checkpoint", str(sim_run / "run"), "--data", str(sim_run / "data"),
               "--source", "synthetic_low", "--target", "real_normal", "--taus", "0.5",
               "--steps", "1", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "n = 2" in err[0] and "--allow-small-n" in err[0] and "16" in err[0]
    assert not out.exists()  # refused before translating or writing anything


def test_evaluate_c2st_flags():
    from medshift_fast.cli import build_parser
    from medshift_fast.cli._flags import config_from_args
    from medshift_fast.errors import MedShiftError
    from medshift_fast.eval.evaluate import EvalConfig

    args = build_parser().parse_args(["evaluate", "--checkpoint", "c", "--data", "d", "--out",
                                      "o", "--source", "a", "--target", "b", "--no-c2st"])
    cfg = config_from_args(EvalConfig, args)
    assert cfg.c2st is False and cfg.c2st_config() is None
    kw = dict(checkpoint="c", data="d", out="o", source="a", target="b")
    assert EvalConfig(**kw, c2st_seeds=5).c2st_config().seeds == 5
    with pytest.raises(MedShiftError, match="seeds"):
        EvalConfig(**kw, c2st_seeds=0)


def test_evaluate_config_refuses_tuning_on_the_evaluated_split():
    from medshift_fast.errors import MedShiftError
    from medshift_fast.eval.evaluate import EvalConfig

    kw = dict(checkpoint="c", data="d", out="o", source="a", target="b")
    with pytest.raises(MedShiftError, match="tune-split"):
        EvalConfig(**kw, tune_split="test")
    with pytest.raises(MedShiftError, match="median"):
        EvalConfig(**kw, classical="median")
    assert EvalConfig(**kw, tune_split="test", classical="none").classical == "none"
