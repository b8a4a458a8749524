"""Outputs and refusals a radiologist can trust (issue 31): the scale decision, the intensity
rule (check / as-is / match) in the library, the API and the CLI, and the per-image
hallucination count of the manifest."""

from __future__ import annotations

import csv
import sys
import types

import numpy as np
import pytest
import torch

from medshift_fast.cli import main
from medshift_fast.data import DOMAINS, write_png16
from medshift_fast.data.io import read_image
from medshift_fast.errors import MedShiftError, offering
from medshift_fast.models import build_model
from medshift_fast.run import load_run, save_run
from medshift_fast.train import TrainConfig
from medshift_fast.translate import Translator
from medshift_fast.translate.checks import SCALE_FACTOR, check_scale, count_hallucinations
from medshift_fast.translate.intensity import PERCENTILES, decide, percentiles
from medshift_fast.translate.learned import Learned, domain_stats, record

SRC, TGT = "real_low", "real_exposure"
#: the flags of ``medshift translate`` that the messages below name (errors.offering)
FLAGS = {"size": "--size", "intensity": "--intensity", "input_bits": "--input-bits"}


def _record(lo: float, hi: float, n: int = 4, seed: int = 0) -> dict:
    """A domain record of images spread over [lo, hi] (what training computes)."""
    g = np.random.default_rng(seed)
    return domain_stats([g.uniform(lo, hi, (64, 64)).astype(np.float32) for _ in range(n)],
                        {"png:16": n})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny run of the five demo domains, trained at 32 px, full-range training images."""
    d = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    m = build_model("tiny", num_classes=len(DOMAINS), model_channels=16, head_channels=16)
    learned = record("image_size", 32, None, 32, {k: _record(-0.9, 0.9) for k in DOMAINS})
    return save_run(d, TrainConfig(image_size=32), m.config, DOMAINS, m.state_dict(),
                    extra={"learned": learned})


def _cli(run_dir, out, *inputs, extra=()):
    return main(["translate", "--checkpoint", str(run_dir), "--source", SRC, "--target", TGT,
                 "--steps", "1", "--out", str(out), "--no-progress", *extra, *map(str, inputs)])


def _rows(out):
    (m,) = sorted(out.glob("manifest-*.csv"))
    return list(csv.DictReader(open(m)))


# ----------------------------------------------------------------------------------- scale
@pytest.mark.parametrize("side, refused", [(128, False), (32 * 4, False), (32 * 4 + 8, True),
                                           (2048, True), (8, False)])
def test_the_scale_beyond_4x_is_a_decision(side, refused):
    learned = Learned("image_size", 32, None, 32)
    ws = learned.working_scale((side, side))
    if refused:
        with offering(FLAGS, kind="flag"), pytest.raises(
                MedShiftError, match="choose one -- --size learned") as e:
            check_scale(ws, False, (side, side), learned)
        assert "--size native" in str(e.value) and "--native --crop N" in str(e.value)
        assert f"more than {SCALE_FACTOR:g}x" in str(e.value)
        with pytest.raises(MedShiftError, match="size='learned'.*size='native'"):
            check_scale(ws, False, (side, side), learned)  # a library call: its keyword
    else:
        check_scale(ws, False, (side, side), learned)
    check_scale(ws, True, (side, side), learned)  # --size chose: never refused
    nat = Learned("native", 32, None, 32)
    check_scale(nat.working_scale((side, side)), False, (side, side), nat)  # its own grid


def test_cli_scale_refusal_and_the_explicit_choices(run_dir, tmp_path, capsys):
    p = tmp_path / "big.png"
    write_png16(p, np.random.default_rng(0).uniform(-0.9, 0.9, (300, 260)).astype(np.float32))
    assert _cli(run_dir, tmp_path / "o0", p) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "8.1x from the scale the model learned" in err[0], err
    assert not (tmp_path / "o0").exists() or not list((tmp_path / "o0").glob("*.png"))
    for k, size in enumerate(("learned", "32", "native")):
        assert _cli(run_dir, tmp_path / f"o{k + 1}", p, extra=["--size", size]) == 0
        (row,) = _rows(tmp_path / f"o{k + 1}")
        assert row["working_size"] == {"learned": "37x32", "32": "37x32",
                                       "native": "300x260"}[size]
    assert main(["translate", "--checkpoint", str(run_dir), "--source", SRC, "--target", TGT,
                 "--out", str(tmp_path / "x"), "--size", "huge", str(p)]) == 2
    assert "'learned'" in capsys.readouterr().err


# ------------------------------------------------------------------------------- intensity
def test_in_range_outside_and_far_radiographs():
    rec = _record(-0.9, 0.9)
    g = np.random.default_rng(1)
    assert decide(g.uniform(-0.85, 0.85, (64, 64)), rec, SRC).status == "in range"
    with offering(FLAGS, kind="flag"):
        out = decide(g.uniform(0.1, 0.85, (64, 64)), rec, SRC, "image 'a.png'")
    assert out.status == "outside" and "p1/p50/p99" in out.warning
    assert "--intensity match" in out.warning and "image 'a.png'" in out.warning
    api = decide(g.uniform(0.1, 0.85, (64, 64)), rec, SRC, "image 'a.png'")
    assert "mode='match'" in api.warning and "--intensity" not in api.warning
    far = decide(g.uniform(-0.95, -0.9, (64, 64)), rec, SRC)  # a float image: no container
    assert far.status == "far" and "far outside" in far.warning
    assert decide(g.uniform(-0.95, -0.9, (64, 64)), rec, SRC, mode="as-is").warning is None
    assert decide(g.uniform(-1, 1, (8, 8)), None, SRC).status == "unchecked"


def _png(tmp_path, name, values, sbit=None):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    if sbit:
        info.add(b"sBIT", bytes([sbit]))
    p = tmp_path / name
    Image.fromarray(values.astype(np.uint16)).save(p, pnginfo=info)
    return p


def test_a_container_mismatch_is_refused_naming_input_bits_and_a_ct_naming_intensity(tmp_path):
    rec = _record(-0.9, 0.9)
    g = np.random.default_rng(2)
    p = _png(tmp_path, "x12.png", g.integers(0, 4096, (96, 96)))
    img, src = read_image(p, with_source=True)
    with offering(FLAGS, kind="flag"), pytest.raises(
            MedShiftError, match=r"fit in 12 bits.*--input-bits 12.*--intensity as-is"):
        decide(img, rec, SRC, source=src)
    with pytest.raises(MedShiftError, match=r"read_image\(path, input_bits=12\).*mode='as-is'"):
        decide(img, rec, SRC, source=src)  # a library call: the mapping to do, its keyword
    assert decide(img, rec, SRC, source=src, mode="as-is").status == "far"
    img12, src12 = read_image(p, with_source=True, input_bits=12)
    assert decide(img12, rec, SRC, source=src12, input_bits=12).status == "in range"
    small = _png(tmp_path, "tiny.png", g.integers(0, 4096, (16, 16)))  # too few to tell
    img, src = read_image(small, with_source=True)
    assert decide(img, rec, SRC, source=src).status == "far"  # warned, not refused
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    ct = get_testdata_file("CT_small.dcm")
    img, src = read_image(ct, with_source=True, allow_modality=True)
    dark = _record(-0.97, -0.5)
    with offering(FLAGS, kind="flag"), pytest.raises(
            MedShiftError, match=r"not a radiograph \(DICOM Modality CT\).*"
                                 r"--intensity match.*--intensity as-is"):
        decide(img, dark, SRC, source=src)
    assert pydicom  # CT passes under as-is / match
    assert decide(img, dark, SRC, source=src, mode="match").knots is not None


def test_match_maps_percentiles_onto_the_domain_and_back():
    rec = _record(-0.9, 0.9)
    g = np.random.default_rng(3)
    img = np.tanh(g.normal(0.4, 0.1, (128, 128))).astype(np.float32)  # narrow, bright
    v = decide(img, rec, SRC, mode="match")
    moved = v.apply(img)
    dom = [rec["percentiles"][f"{q:g}"] for q in PERCENTILES]
    np.testing.assert_allclose(percentiles(moved.ravel()), dom, atol=2e-3)
    back = v.restore(moved)
    assert back.dtype == img.dtype and np.abs(back - img).max() < 1e-4
    t = torch.from_numpy(img)
    assert torch.allclose(v.restore(v.apply(t)), t, atol=1e-4)
    assert "matched (--intensity match)" in v.note and "->" in v.note
    with offering(FLAGS, kind="flag"), pytest.raises(
            MedShiftError, match="matching intensities needs.*--intensity check or --intensity"):
        decide(img, None, SRC, mode="match")


def test_the_api_checks_raw_uint16_frames(run_dir):
    tr = Translator(load_run(run_dir), SRC, TGT, steps=1)
    frames = np.random.default_rng(4).integers(0, 4096, (1, 1, 96, 96)).astype(np.uint16)
    with pytest.raises(MedShiftError, match=r"fit in 12 bits.*map 0\.\.4095 to the full range"):
        tr.check_intensity(frames, "frame 0")  # the API: the mapping to do, no CLI flag
    full = (frames.astype(np.int64) * 16).astype(np.uint16)
    assert tr.check_intensity(full, "frame 0").status == "in range"
    v = tr.check_intensity(frames, "frame 0", mode="match")
    x = v.apply(torch.from_numpy(frames.astype(np.float32) / 65535 * 2 - 1))
    assert tr.translate(x).shape == (1, 1, 96, 96)
    moved = v.apply(frames)  # raw frames stay raw frames, mapped like a 16-bit container
    assert moved.dtype == np.uint16 and moved.max() > 8 * frames.max()
    # back to within the uint16 rounding of the compressed tails above p99.5 / below p0.5
    assert np.abs(v.restore(moved).astype(np.int64) - frames).max() <= 16
    t16 = torch.from_numpy(frames.astype(np.int32)).to(torch.uint16)
    assert v.apply(t16).dtype == torch.uint16
    assert tr.check_intensity(t16, mode="as-is").status == "far"


def test_cli_match_writes_back_in_the_input_scale_and_records_it(run_dir, tmp_path, capsys):
    """tau = 1 is the identity translation: with --intensity match the output must come back
    in the input's own intensities (the inverse map undoes the forward one), and the manifest
    and the file's description record the map."""
    from PIL import Image

    g = np.random.default_rng(5)
    x = np.tanh(g.normal(0.5, 0.08, (48, 40))).astype(np.float32)  # outside: bright, narrow
    p = tmp_path / "a.png"
    write_png16(p, x)
    assert _cli(run_dir, tmp_path / "warn", p) == 0
    assert "outside the training range" in capsys.readouterr().err
    assert _cli(run_dir, tmp_path / "o", p, extra=["--tau", "1", "--intensity", "match",
                                                  "--size", "native"]) == 0
    (row,) = _rows(tmp_path / "o")
    assert row["intensity"].startswith("matched (--intensity match)")
    out = tmp_path / "o" / f"a_{TGT}.png"
    assert "matched (--intensity match)" in Image.open(out).text["Description"]
    step = 2 / 65535
    assert np.abs(read_image(out) - read_image(p)).max() < 1e-3 + step
    assert _cli(run_dir, tmp_path / "bad", p, extra=["--intensity", "guess"]) == 2
    assert "--intensity must be one of check, as-is, match" in capsys.readouterr().err


# ---------------------------------------------------------------------------- hallucinations
def test_the_manifest_counts_through_the_hook(run_dir, tmp_path, monkeypatch):
    """The manifest's columns come from the detector module translate/hallucination.py on the
    working grid (a stand-in here)."""
    p = tmp_path / "a.png"
    write_png16(p, np.random.default_rng(6).uniform(-0.9, 0.9, (32, 32)).astype(np.float32))
    seen = []

    def fake(source, output):
        seen.append((tuple(source.shape), tuple(output.shape)))
        return {"count": 3, "area_px": 17, "area_fraction": 0.01, "max_z": 6.25}

    monkeypatch.setitem(sys.modules, "medshift_fast.translate.hallucination",
                        types.SimpleNamespace(hallucination_stats=fake))
    assert _cli(run_dir, tmp_path / "o", p, extra=["--size", "32"]) == 0
    (row,) = _rows(tmp_path / "o")
    assert (row["hallucination_count"], row["hallucination_area_px"],
            row["hallucination_max_z"]) == ("3", "17", "6.25")
    assert seen == [((32, 32), (32, 32))]  # on the working grid
    assert _cli(run_dir, tmp_path / "o2", p, extra=["--no-count-hallucinations"]) == 0
    assert _rows(tmp_path / "o2")[0]["hallucination_count"] == "" and len(seen) == 1


def test_a_forced_blob_is_counted_in_the_manifest(run_dir, tmp_path, monkeypatch):
    """The real detector (translate/hallucination.py, the one evaluate reports) through the
    manifest: an identity translation (tau = 1) of a smooth noisy
    source counts 0, the same with a blob painted into the output counts it."""
    from medshift_fast.translate.translator import Translator as T

    g = np.random.default_rng(7)
    yy, xx = np.mgrid[:128, :128]
    src = (0.3 * np.sin(xx / 20.0) + 0.02 * g.normal(size=(128, 128))).astype(np.float32)
    p = tmp_path / "a.png"
    write_png16(p, src)
    flags = ["--tau", "1", "--size", "native", "--intensity", "as-is"]
    assert _cli(run_dir, tmp_path / "same", p, extra=flags) == 0
    assert _rows(tmp_path / "same")[0]["hallucination_count"] == "0"
    blob = torch.from_numpy(0.5 * np.exp(-((yy - 64) ** 2 + (xx - 70) ** 2) / 8.0)).float()
    plain = T.translate
    monkeypatch.setattr(T, "translate", lambda self, x, **k: plain(self, x, **k) + blob)
    assert _cli(run_dir, tmp_path / "blob", p, extra=flags) == 0
    (row,) = _rows(tmp_path / "blob")
    assert int(row["hallucination_count"]) >= 1 and int(row["hallucination_area_px"]) > 0


def test_large_grids_are_counted_in_windows_of_bounded_size(monkeypatch):
    """Memory flat in image size: a 2100 x 300 grid is counted in 3 windows of <= 1024 px a
    side (sums of counts and areas, the largest z), a small one at once."""
    from medshift_fast.translate.checks import COUNT_WINDOW, count_windows

    calls = []

    def fake(source, output):
        calls.append(tuple(source.shape))
        return {"count": 2, "area_px": 5, "max_z": 4.0 + len(calls)}

    monkeypatch.setitem(sys.modules, "medshift_fast.translate.hallucination",
                        types.SimpleNamespace(hallucination_stats=fake))
    big = np.zeros((2100, 300), np.float32)
    d = count_hallucinations(big, big)
    assert calls == [(700, 300)] * 3 and max(max(c) for c in calls) <= COUNT_WINDOW
    assert (d["count"], d["area_px"], d["max_z"], d["windows"]) == (6, 15, 7.0, 3)
    assert d["area_fraction"] == 15 / (2100 * 300)
    cover = np.zeros((2100, 3000), int)
    for ry, rx in count_windows(2100, 3000):
        cover[ry, rx] += 1
    assert (cover == 1).all()  # every pixel in exactly one window
    calls.clear()
    count_hallucinations(big[:512], big[:512])
    assert calls == [(512, 300)]
