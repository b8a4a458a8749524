"""`medshift demo --quick`: the newcomer's first command runs end to end (about a minute)."""

from __future__ import annotations

import csv

import pytest

from medshift_fast.cli import main


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    return out


def test_quick_demo_writes_report_metrics_and_a_verified_engine(quick_demo):
    report = (quick_demo / "report.md").read_text()
    assert "verified in ONNX Runtime" in report and "FAILED" not in report
    for pair in ("synthetic_low_to_real_normal", "real_low_to_real_exposure"):
        ev = quick_demo / f"eval_{pair}"
        rows = list(csv.DictReader(open(ev / "metrics.csv")))
        methods = [r["method"] for r in rows]
        assert "identity" in methods and any(m.startswith("MedShift") for m in methods)
        assert (ev / "grid.png").stat().st_size > 0 and (ev / "tradeoff.png").is_file()
        assert all(r["c2st_acc"] != "" and r["halluc_count"] != "" for r in rows)
        assert (ev / "noise_curve.png").is_file()
    assert "Issue 29's realism targets" in report and "hallucinations per image" in report
    assert (quick_demo / "translator.onnx").is_file()
    assert (quick_demo / "run" / "model.safetensors").is_file()


def test_demo_exits_non_zero_when_its_export_fails(tmp_path, capsys, monkeypatch):
    import medshift_fast.export as export
    from medshift_fast.errors import MedShiftError

    def broken(*a, **k):
        raise MedShiftError("the exporter broke")

    monkeypatch.setattr(export, "export_engine", broken)
    rc = main(["demo", "--quick", "--out", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "export" in err[0]
    assert "FAILED" in (tmp_path / "report.md").read_text()  # the work is kept
