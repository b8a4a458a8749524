"""A folder translate: every input vetted before the first translation, every input in the
manifest with its outcome, and an interrupted run continued by --resume to the outputs and
manifest of an uninterrupted one (issue 32)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from utils import tiny_run

import medshift_fast.translate.files as tf
from medshift_fast.cli import main
from medshift_fast.data import DOMAINS, write_png16

tifffile = pytest.importorskip("tifffile")
SETTINGS = ["--source", "synthetic_low", "--target", "real_normal", "--steps", "1",
            "--no-progress", "--batch-size", "2"]
IDENTITY = ("run_id", "series_uid")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("run"), DOMAINS)


@pytest.fixture
def folder(tmp_path):
    """9 good PNGs and, 8th in name order, a TIFF whose pixels are NaN (header fine)."""
    tree = tmp_path / "in"
    tree.mkdir()
    for i in range(9):
        write_png16(tree / f"{i}.png", np.full((16, 16), i / 10 - 0.4, np.float32))
    bad = np.zeros((16, 16), np.float32)
    bad[3, 3] = np.nan
    tifffile.imwrite(tree / "7bad.tif", bad)
    return tree


def _run(run_dir, out, tree, *extra):
    return main(["translate", "--checkpoint", str(run_dir), "--out", str(out), *SETTINGS,
                 *extra, str(tree)])


def _rows(out):
    (m,) = sorted(out.glob("manifest-*.csv"))
    return list(csv.DictReader(open(m)))


def test_a_bad_file_stops_the_folder_before_anything_is_written(run_dir, folder, tmp_path,
                                                                 capsys):
    assert _run(run_dir, tmp_path / "out", folder) == 2
    err = [e for e in capsys.readouterr().err.splitlines() if e.strip()]
    assert len(err) == 1 and "7bad.tif" in err[0] and "--skip-bad" in err[0], err
    assert not list((tmp_path / "out").glob("*.png"))  # vetted before the first translation


def test_skip_bad_lists_the_bad_file_once_and_every_input(run_dir, folder, tmp_path, capsys):
    assert _run(run_dir, tmp_path / "out", folder, "--skip-bad") == 0
    err = capsys.readouterr().err
    skipped = [e for e in err.splitlines() if "7bad.tif" in e]
    assert len(skipped) == 1 and "skipped" in skipped[0], err
    assert "--skip-bad" not in skipped[0]  # no advice to pass what is already passed
    rows = {r["input"].rsplit("/", 1)[-1]: r for r in _rows(tmp_path / "out")}
    assert len(rows) == 10 and rows["7bad.tif"]["status"] == "skipped"
    assert "NaN" in rows["7bad.tif"]["reason"]
    assert all(r["status"] == "written" and len(r["sha256"]) == 64 and len(r["input_sha256"])
               == 64 for k, r in rows.items() if k != "7bad.tif")


def test_an_interrupted_run_resumed_equals_an_uninterrupted_one(run_dir, folder, tmp_path,
                                                                monkeypatch, capsys):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert _run(run_dir, whole, folder, "--skip-bad") == 0
    real, n = tf.write_image, [0]

    def interrupted(*a, **k):  # SIGINT arriving while the 4th output is being written
        n[0] += 1
        if n[0] == 4:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(tf, "write_image", interrupted)
    assert _run(run_dir, cut, folder, "--skip-bad") == 130
    err = capsys.readouterr().err
    assert "interrupted: after 3 of 9 image(s)" in err and "--resume" in err, err
    status = [r["status"] for r in _rows(cut)]
    assert status.count("written") == 3 and status.count("not reached") == 6
    assert status.count("skipped") == 1
    monkeypatch.setattr(tf, "write_image", real)
    # a plain rerun refuses (the outputs exist) and names --resume
    assert _run(run_dir, cut, folder, "--skip-bad") == 2
    assert "--resume" in capsys.readouterr().err
    assert _run(run_dir, cut, folder, "--skip-bad", "--resume") == 0
    out = capsys.readouterr()
    assert "3 written before the interruption were verified and kept" in out.out, out
    # the outputs and the manifest are an uninterrupted run's (the run's own id aside)
    names = sorted(p.name for p in whole.glob("*.png"))
    assert names == sorted(p.name for p in cut.glob("*.png")) and len(names) == 9
    for name in names:
        assert (whole / name).read_bytes() == (cut / name).read_bytes(), name
    strip = [[{k: v for k, v in r.items() if k not in IDENTITY} for r in _rows(d)]
             for d in (whole, cut)]
    assert strip[0] == strip[1]
    assert len({r["run_id"] for r in _rows(cut)}) == 1  # one run, one manifest
    assert len(list(cut.glob("manifest-*.csv"))) == 1


def test_resume_verifies_the_outputs_and_the_settings(run_dir, folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(run_dir, out, folder, "--skip-bad") == 0
    # another tau: not the run to continue
    assert _run(run_dir, out, folder, "--skip-bad", "--resume", "--tau", "0.45") == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "tau" in err, err
    # an output changed after the run wrote it is not kept silently
    (out / "2_real_normal.png").write_bytes((out / "3_real_normal.png").read_bytes())
    assert _run(run_dir, out, folder, "--skip-bad", "--resume") == 2
    err = capsys.readouterr().err
    assert "2_real_normal.png" in err and "SHA-256" in err and "--overwrite" in err, err
    assert _run(run_dir, out, folder, "--skip-bad", "--resume", "--overwrite") == 0
    capsys.readouterr()
    rows = {r["output"]: r for r in _rows(out)}
    assert rows["2_real_normal.png"]["status"] == "written"
    from medshift_fast.fileio import sha256_file

    assert sha256_file(out / "2_real_normal.png") == rows["2_real_normal.png"]["sha256"]
    # nothing to resume in a folder without a manifest
    assert _run(run_dir, tmp_path / "empty", folder, "--resume") == 2
    assert "nothing to resume" in capsys.readouterr().err
