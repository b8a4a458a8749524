"""`medshift translate` on real users' files: DICOM in -> DICOM out, geometry kept, nothing
overwritten or lost, every bad input refused up front with one line and exit 2."""

from __future__ import annotations

import csv
import os
import shutil

import numpy as np
import pytest
import torch

from medshift_fast.cli import main
from medshift_fast.data import DOMAINS, write_png16
from medshift_fast.data.geometry import plan_fit
from medshift_fast.data.io import read_image
from medshift_fast.run import load_run
from medshift_fast.translate import Translator

pydicom = pytest.importorskip("pydicom")
tifffile = pytest.importorskip("tifffile")
SETTINGS = ["--source", "synthetic_low", "--target", "real_normal", "--steps", "1",
            "--no-progress"]


def _real(name):
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not shipped here (pydicom-data)")
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A small run over the five demo domains (random non-zero output layers), 32 px."""
    from utils import tiny_run

    return tiny_run(tmp_path_factory.mktemp("run"), DOMAINS)


def _translate(run_dir, out, *inputs, extra=()):
    return main(["translate", "--checkpoint", str(run_dir), "--out", str(out), *SETTINGS,
                 *extra, *map(str, inputs)])


def _manifest(out):
    """The rows of the one manifest a run wrote into ``out`` (manifest-<run id>.csv)."""
    (m,) = sorted(out.glob("manifest-*.csv"))
    return list(csv.DictReader(open(m)))


def _one_line(capsys, rc, *needles):
    err = capsys.readouterr().err.strip().splitlines()
    err = [e for e in err if e.startswith("medshift translate: error")]
    assert rc == 2 and len(err) == 1, err
    for n in needles:
        assert n in err[0], err[0]
    return err[0]


# ------------------------------------------------------------------------------ DICOM -> DICOM
@pytest.mark.parametrize("name", ["RG1_UNCI.dcm", "RG3_UNCI.dcm"])
def test_real_radiograph_comes_back_as_a_derived_dicom(run_dir, tmp_path, name):
    src_path = _real(name)
    assert _translate(run_dir, tmp_path / "out", src_path, extra=["--size", "learned"]) == 0
    out_path = tmp_path / "out" / (os.path.basename(src_path)[:-4] + "_real_normal.dcm")
    a, b = pydicom.dcmread(src_path), pydicom.dcmread(out_path)
    for kw in ("Rows", "Columns", "BitsStored", "BitsAllocated", "PhotometricInterpretation",
               "PatientID", "PatientName", "StudyInstanceUID", "Modality"):
        assert a.get(kw) == b.get(kw), kw
    assert b.SOPInstanceUID != a.SOPInstanceUID and b.SeriesInstanceUID != a.SeriesInstanceUID
    assert list(b.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert "synthetic_low" in b.DerivationDescription and "0.6" in b.DerivationDescription
    digest = load_run(run_dir).digest[:16]  # the run by name and hash, never its local path
    assert f"model {run_dir.name} sha256:{digest}" in b.DerivationDescription
    assert str(run_dir.parent) not in b.DerivationDescription
    # the pixels are the model's output mapped back to the input's geometry, to one stored step
    img, src = read_image(src_path, with_source=True)
    run = load_run(run_dir)
    tr = Translator(run, "synthetic_low", "real_normal", steps=1)
    fit = plan_fit(img.shape, 32, "crop", tr.factor)
    want = fit.restore(tr.translate(fit.apply(torch.from_numpy(img))))[0, 0].numpy()
    got = read_image(out_path)
    m = src.mapping
    step = 2.0 * abs(m.slope) / (m.hi - m.lo)
    lo, hi = sorted(m.to_unit(np.array(m.stored_range)))  # what the stored bits can hold
    assert got.shape == img.shape
    assert np.abs(got - want.clip(lo, hi)).max() <= step * 1.01
    assert np.abs(got - img).max() > 10 * step  # it was translated


def test_one_derived_series_per_source_series_and_run_and_a_manifest(run_dir, tmp_path):
    src = _real("RG3_UNCI.dcm")
    tree = tmp_path / "in"
    for sub in ("a", "b"):
        (tree / sub).mkdir(parents=True)
        shutil.copy(src, tree / sub / "img001.dcm")
    assert _translate(run_dir, tmp_path / "out", tree, extra=["--size", "32"]) == 0
    uids = {pydicom.dcmread(tmp_path / "out" / s / "img001_real_normal.dcm").SeriesInstanceUID
            for s in ("a", "b")}
    assert len(uids) == 1  # one derived series: one source series, one run
    rows = _manifest(tmp_path / "out")
    assert {r["output"] for r in rows} == {"a/img001_real_normal.dcm", "b/img001_real_normal.dcm"}
    assert all(r["status"] == "written" and r["target"] == "real_normal" for r in rows)
    assert {r["dicom_series_uid"] for r in rows} == uids  # the manifest names it
    assert rows[0]["series_uid"] not in uids  # the run's own UID, from which it is derived


# -------------------------------------------------------------------------- PNG / TIFF geometry
@pytest.mark.parametrize("kind", ["png", "tiff8", "tiff16"])
@pytest.mark.parametrize("resize", ["crop", "pad"])
def test_non_square_png_and_tiff_keep_size_and_depth(run_dir, tmp_path, kind, resize):
    rng = np.random.default_rng(0)
    if kind == "png":
        p = tmp_path / "x.png"
        write_png16(p, rng.random((45, 70)).astype(np.float32) * 2 - 1)
    else:
        p = tmp_path / "x.tif"
        dt = np.uint8 if kind == "tiff8" else np.uint16
        tifffile.imwrite(p, rng.integers(0, np.iinfo(dt).max, (45, 70)).astype(dt))
    assert _translate(run_dir, tmp_path / "out", p, extra=["--resize", resize]) == 0
    out = next((tmp_path / "out").glob("x_real_normal.*"))
    assert out.suffix == p.suffix
    if kind == "png":
        from PIL import Image

        with Image.open(out) as im:
            assert im.size == (70, 45) and im.mode.startswith("I;16")
    else:
        a = tifffile.imread(out)
        assert a.shape == (45, 70) and a.dtype == (np.uint8 if kind == "tiff8" else np.uint16)
    assert read_image(out).shape == (45, 70)


def test_native_size_and_out_format(run_dir, tmp_path):
    p = tmp_path / "x.png"
    write_png16(p, np.zeros((20, 28), np.float32))
    assert _translate(run_dir, tmp_path / "o1", p, extra=["--size", "native",
                                                         "--out-format", "tiff"]) == 0
    (tif,) = (tmp_path / "o1").glob("x_real_normal.tif*")
    assert tifffile.imread(tif).shape == (20, 28)
    assert _translate(run_dir, tmp_path / "o2", p, extra=["--out-format", "dicom"]) == 0
    ds = pydicom.dcmread(tmp_path / "o2" / "x_real_normal.dcm")
    assert (ds.Rows, ds.Columns) == (20, 28)


def test_geometry_restores_exactly():
    x = torch.rand(1, 1, 37, 53) * 2 - 1
    for size, resize in ((32, "crop"), (32, "pad"), ("native", "crop")):
        fit = plan_fit((37, 53), size, resize, 4)
        w = fit.apply(x)
        assert w.shape[-2] % 4 == 0 and w.shape[-1] % 4 == 0
        assert fit.restore(w).shape == x.shape
    fit = plan_fit((37, 53), "native", "crop", 4)
    torch.testing.assert_close(fit.restore(fit.apply(x)), x)  # identity geometry: exact


# ----------------------------------------------------------------------- trees, no overwriting
def test_nested_tree_with_repeated_names_keeps_every_output(run_dir, tmp_path, capsys):
    tree = tmp_path / "in"
    for sub in ("a", "b/c", "d"):
        (tree / sub).mkdir(parents=True)
        write_png16(tree / sub / "img001.png", np.zeros((16, 16), np.float32))
    write_png16(tree / "img001.png", np.zeros((16, 16), np.float32))
    assert _translate(run_dir, tmp_path / "out", tree) == 0
    outs = sorted(p.relative_to(tmp_path / "out").as_posix()
                  for p in (tmp_path / "out").rglob("*.png"))
    assert outs == ["a/img001_real_normal.png", "b/c/img001_real_normal.png",
                    "d/img001_real_normal.png", "img001_real_normal.png"]
    assert "wrote 4 image(s)" in capsys.readouterr().out
    # a second run refuses to overwrite, before any work; --overwrite replaces
    _one_line(capsys, _translate(run_dir, tmp_path / "out", tree), "already exists",
              "--overwrite")
    assert _translate(run_dir, tmp_path / "out", tree, extra=["--overwrite"]) == 0


def test_two_inputs_onto_one_output_are_refused(run_dir, tmp_path, capsys):
    for d in ("x", "y"):
        (tmp_path / d).mkdir()
        write_png16(tmp_path / d / "a.png", np.zeros((16, 16), np.float32))
    rc = _translate(run_dir, tmp_path / "out", tmp_path / "x" / "a.png", tmp_path / "y" / "a.png")
    _one_line(capsys, rc, "would both be written")
    assert not (tmp_path / "out" / "a_real_normal.png").exists()


def test_a_crash_mid_folder_keeps_what_was_written(run_dir, tmp_path, monkeypatch, capsys):
    import medshift_fast.translate.files as tf

    tree = tmp_path / "in"
    tree.mkdir()
    for i in range(5):
        write_png16(tree / f"{i}.png", np.full((16, 16), i / 10, np.float32))
    real, calls = tf.write_image, []

    def flaky(path, *a, **k):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(path, *a, **k)

    monkeypatch.setattr(tf, "write_image", flaky)
    rc = _translate(run_dir, tmp_path / "out", tree, extra=["--batch-size", "1"])
    _one_line(capsys, rc, "disk full")
    done = sorted((tmp_path / "out").glob("*.png"))
    assert [p.name for p in done] == ["0_real_normal.png", "1_real_normal.png"]
    assert all(read_image(p).shape == (16, 16) for p in done)  # complete files
    assert not [p for p in (tmp_path / "out").iterdir() if ".tmp" in p.name]
    rows = _manifest(tmp_path / "out")  # every input, with its outcome
    assert [(r["output"], r["status"]) for r in rows] == [
        ("0_real_normal.png", "written"), ("1_real_normal.png", "written"), ("", "failed"),
        ("3_real_normal.png", "not reached"), ("4_real_normal.png", "not reached")]
    assert "disk full" in rows[2]["reason"]


def test_outputs_follow_the_umask(run_dir, tmp_path):
    old = os.umask(0o022)
    try:
        p = tmp_path / "x.png"
        write_png16(p, np.zeros((16, 16), np.float32))
        assert _translate(run_dir, tmp_path / "out", p) == 0
    finally:
        os.umask(old)
    for f in (tmp_path / "out").iterdir():
        assert f.stat().st_mode & 0o777 == 0o644, f
    for f in ("model.safetensors", "config.json"):
        assert (run_dir / f).stat().st_mode & 0o777 == 0o644, f


# ------------------------------------------------------------- bad input: one line, exit 2
def _ct_like(tmp_path):
    return _real("CT_small.dcm")


BAD_ARGS = [
    (["--batch-size", "-1"], "--batch-size"),
    (["--batch-size", "0"], "--batch-size"),
    (["--tau", "1.5"], "tau"),
    (["--tau", "nan"], "tau"),
    (["--steps", "0"], "steps"),
    (["--guidance", "nan"], "guidance"),
    (["--guidance-encode", "inf"], "guidance_encode"),
    (["--solver", "leapfrog"], "leapfrog"),
    (["--size", "abc"], "--size"),
    (["--out-format", "jpeg"], "jpeg"),
    (["--resize", "stretch"], "stretch"),
    (["--mode", "fast"], "fast"),
    (["--mode", "fused", "--solver", "dopri5"], "fixed-step"),
]


@pytest.mark.parametrize("extra, needle", BAD_ARGS)
def test_bad_settings_are_refused_before_any_work(run_dir, tmp_path, capsys, extra, needle):
    p = tmp_path / "x.png"
    write_png16(p, np.zeros((16, 16), np.float32))
    rc = _translate(run_dir, tmp_path / "out", p, extra=extra)
    _one_line(capsys, rc, needle)
    assert not list((tmp_path / "out").glob("*.png")) if (tmp_path / "out").exists() else True


def test_bad_output_folders(run_dir, tmp_path, capsys):
    p = tmp_path / "x.png"
    write_png16(p, np.zeros((16, 16), np.float32))
    f = tmp_path / "file"
    f.write_text("x")
    _one_line(capsys, _translate(run_dir, f, p), "is a file")
    _one_line(capsys, _translate(run_dir, "/proc/medshift-cannot-write-here", p),
              "cannot be written")


def test_bad_runs_and_domains(run_dir, tmp_path, capsys):
    p = tmp_path / "x.png"
    write_png16(p, np.zeros((16, 16), np.float32))
    rc = main(["translate", "--checkpoint", str(run_dir), "--out", str(tmp_path / "o"),
               "--source", "synthetic_low", "--target", "mars", str(p)])
    _one_line(capsys, rc, "mars")
    rc = main(["translate", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "o"),
               "--source", "a", "--target", "b", str(p)])
    _one_line(capsys, rc, "nope")
    # a run whose config.json was edited: domains reordered, or the image size changed
    import json

    for edit, needle in ((lambda c: c["domains"].reverse(), "'domains'"),
                         (lambda c: c["train"].update(image_size=64), "'train'")):
        bad = tmp_path / f"bad_{needle}"
        shutil.copytree(run_dir, bad)
        cfg = json.loads((bad / "config.json").read_text())
        edit(cfg)
        (bad / "config.json").write_text(json.dumps(cfg))
        rc = main(["translate", "--checkpoint", str(bad), "--out", str(tmp_path / "o"),
                   *SETTINGS, str(p)])
        _one_line(capsys, rc, needle)


def test_bad_inputs_are_refused_up_front_or_skipped(run_dir, tmp_path, capsys):
    tree = tmp_path / "in"
    tree.mkdir()
    write_png16(tree / "good.png", np.zeros((16, 16), np.float32))
    shutil.copy(_real("CT_small.dcm"), tree / "ct.dcm")
    # refused before anything is written, naming the file and the way out
    _one_line(capsys, _translate(run_dir, tmp_path / "out", tree), "ct.dcm", "--allow-modality")
    assert not (tmp_path / "out" / "good_real_normal.png").exists()
    assert _translate(run_dir, tmp_path / "o2", tree, extra=["--allow-modality", "CT"]) == 0
    # --skip-bad: reported on stderr, the others translated, the summary counts it
    assert _translate(run_dir, tmp_path / "o3", tree, extra=["--skip-bad"]) == 0
    cap = capsys.readouterr()
    assert "ct.dcm" in cap.err and "1 skipped" in cap.out
    assert (tmp_path / "o3" / "good_real_normal.png").is_file()


@pytest.mark.parametrize("case", ["multiframe", "rgb_png", "bad_crc", "no_decoder", "nan_tiff"])
def test_each_refused_input_kind(run_dir, tmp_path, capsys, case):
    from PIL import Image

    if case == "multiframe":
        p, needle = tmp_path / "mf.dcm", "--frame"
        shutil.copy(_real("emri_small.dcm"), p)
        extra = ["--allow-modality", "MR"]
    elif case == "rgb_png":
        p, needle, extra = tmp_path / "rgb.png", "--allow-rgb", []
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(p)
    elif case == "bad_crc":
        p, needle, extra = tmp_path / "crc.png", "CRC", []
        write_png16(p, np.zeros((16, 16), np.float32))
        b = bytearray(p.read_bytes())
        b[-13] ^= 0xFF  # a byte of the IDAT chunk's CRC
        p.write_bytes(bytes(b))
    elif case == "no_decoder":
        p, needle, extra = tmp_path / "jpeg.dcm", "install", []
        shutil.copy(_real("JPEG-LL.dcm"), p)
        extra = ["--allow-modality", "all"]
    else:
        p, needle, extra = tmp_path / "nan.tif", "NaN", []
        tifffile.imwrite(p, np.array([[0.0, np.nan] * 8] * 16, np.float32))
    _one_line(capsys, _translate(run_dir, tmp_path / "out", p, extra=extra), p.name, needle)
