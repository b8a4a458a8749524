"""Refusals that say the right thing, once, before any work, naming a fix the command that was run
accepts (issue 32): each case of the issue's list is a test."""

from __future__ import annotations

import shutil
import struct
import zlib

import numpy as np
import pytest
from utils import tiny_run

from medshift_fast.cli import main
from medshift_fast.data import DOMAINS, write_png16
from medshift_fast.errors import MedShiftError
from medshift_fast.models import build_model
from medshift_fast.run import save_run
from medshift_fast.train import TrainConfig

pydicom = pytest.importorskip("pydicom")


def _errors(capsys) -> list[str]:
    return [e for e in capsys.readouterr().err.splitlines() if ": error:" in e]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("run"), DOMAINS)


def _translate(run, out, *inputs, extra=()):
    return main(["translate", "--checkpoint", str(run), "--source", "real_low", "--target",
                 "real_exposure", "--out", str(out), "--steps", "1", "--no-progress", *extra,
                 *map(str, inputs)])


def _big_png(path, side=20000):
    """A valid 8-bit grey PNG of side x side pixels (all zero; ~2 MB, written in ~2 s)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))

    z, row = zlib.compressobj(1), bytes(side + 1)
    idat = b"".join([z.compress(row) for _ in range(side)] + [z.flush()])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(
        ">IIBBBBB", side, side, 8, 0, 0, 0, 0)) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_a_valid_huge_png_is_called_too_large_not_corrupt(run_dir, tmp_path, capsys):
    p = _big_png(tmp_path / "huge.png")
    assert _translate(run_dir, tmp_path / "out", p) == 2
    (err,) = _errors(capsys)
    assert "20000x20000 px" in err and "too large" in err and "megapixels" in err, err
    assert "corrupt" not in err and "truncated" not in err


def test_a_small_crop_is_not_advised_input_bits(tmp_path, capsys):
    """An 8x8 crop of a 16-bit radiograph (dark: its values fit 12 bits) far outside the
    domain's training range: too few pixels to claim a bit-depth mismatch (the intensity rule's
    ``MISMATCH_PIXELS``), so it is translated with one warning line that names the intensity
    choices, not --input-bits; a whole image of 12-bit data is refused naming --input-bits 12."""
    from PIL import Image

    from medshift_fast.translate.learned import record

    rec = {"percentiles": {"0.5": -0.9, "1": -0.85, "5": -0.6, "50": 0.0, "95": 0.6,
                           "99": 0.85, "99.5": 0.9}}
    run = tiny_run(tmp_path / "run", DOMAINS,
                   learned=record("image_size", 32, None, 32, {"real_low": rec}))
    v = np.full((8, 8), 3000, np.uint16)
    v[::2] = 3100
    Image.fromarray(v).save(tmp_path / "crop.png")
    assert _translate(run, tmp_path / "out", tmp_path / "crop.png") == 0
    err = capsys.readouterr().err
    warned = [e for e in err.splitlines() if "warning:" in e]
    assert len(warned) == 1 and "crop.png" in warned[0], err
    assert "far outside the training range" in warned[0] and "--intensity match" in warned[0]
    assert "--input-bits" not in err and ": error:" not in err, err
    big = np.rint(np.linspace(0, 4095, 64 * 64)).astype(np.uint16).reshape(64, 64)
    Image.fromarray(big).save(tmp_path / "twelve.png")
    assert _translate(run, tmp_path / "out2", tmp_path / "twelve.png") == 2
    (err,) = _errors(capsys)
    assert "--input-bits 12" in err, err


def _dataset(root):
    from PIL import Image
    from pydicom.data import get_testdata_file

    for d in ("a", "b"):
        for i in range(8):
            write_png16(root / d / f"{i}.png", np.full((16, 16), i / 10 - 0.4, np.float32))
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "a" / "rgb.png")
    shutil.copy(get_testdata_file("CT_small.dcm"), root / "b" / "ct.dcm")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "b" / "eight.png")
    return root


def test_train_names_only_flags_train_accepts(tmp_path, capsys, caplog):
    data = _dataset(tmp_path / "data")
    argv = ["train", "--data", str(data), "--out", str(tmp_path / "r"), "--steps", "1",
            "--batch-size", "2", "--image-size", "8", "--no-progress"]
    assert main(argv) == 2
    (err,) = _errors(capsys)
    assert "rgb.png" in err and "--skip-bad" in err, err
    for flag in ("--allow-rgb", "--allow-modality", "allow_mixed_depth", "allow_rgb", "--frame"):
        assert flag not in err, err
    (data / "a" / "rgb.png").unlink()
    assert main(argv) == 2
    (err,) = _errors(capsys)
    assert "ct.dcm" in err and "--allow-modality" not in err and "remove it" in err, err
    (data / "b" / "ct.dcm").unlink()
    assert main(argv) == 2
    (err,) = _errors(capsys)
    assert "mixed bit depths" in err and "allow_mixed_depth" not in err, err
    assert "--skip-bad" in err
    # a library call names its own keyword arguments
    from medshift_fast.data import FolderDataset

    with pytest.raises(MedShiftError, match="allow_mixed_depth=True or skip_bad=True"):
        FolderDataset(data)


def test_each_skip_is_reported_once_without_advising_skip_bad(tmp_path, caplog):
    import logging

    from medshift_fast.train.data import check_dataset, open_split

    data = _dataset(tmp_path / "data")
    cfg = TrainConfig(data=str(data), skip_bad=True, image_size=8)
    with caplog.at_level(logging.WARNING, logger="medshift_fast.data"):
        check_dataset(cfg)            # every split, as train does before the first step
        open_split(cfg, "train")      # then the train split again
    lines = [r.getMessage() for r in caplog.records if "skipping bad file" in r.getMessage()]
    for name in ("rgb.png", "ct.dcm", "eight.png"):
        assert sum(name in ln for ln in lines) == 1, lines
    assert not any("--skip-bad" in ln or "skip_bad" in ln for ln in lines), lines


def test_a_wrong_typed_config_value_names_its_field(tmp_path, capsys):
    from medshift_fast.eval.evaluate import EvalConfig
    from medshift_fast.train.distill import DistillConfig
    from medshift_fast.translate.files import TranslateConfig

    cases = [(lambda: TrainConfig(steps="10"), "steps"),
             (lambda: TrainConfig(lr="1e-3"), "lr"),
             (lambda: DistillConfig(teacher="t", tau_max="0.6"), "tau_max"),
             (lambda: EvalConfig(checkpoint="r", data="d", out="o", source="a", target="b",
                                 max_images="4"), "max_images"),
             (lambda: TranslateConfig(checkpoint="r", inputs=("x",), out="o", source="a",
                                      target="b", batch_size="4"), "batch_size")]
    for make, field in cases:
        with pytest.raises(MedShiftError) as ei:
            make()
        msg = str(ei.value)
        assert field in msg and "not supported" not in msg, msg
    assert TrainConfig(steps=10.0).steps == 10 and TrainConfig(lr=1).lr == 1.0
    assert TrainConfig(domains=["a", "b"]).domains == ("a", "b")
    # a hand-edited config.json of a run that is resumed
    import json

    run = tmp_path / "r"
    m = build_model("tiny", num_classes=2, model_channels=16, head_channels=16)
    save_run(run, TrainConfig(image_size=8, data=str(tmp_path)), m.config, ("a", "b"),
             m.state_dict())
    cfg = json.loads((run / "config.json").read_text())
    cfg["train"]["batch_size"] = "4"
    (run / "config.json").write_text(json.dumps(cfg))
    from medshift_fast.train.checkpoint import check_compatible

    with pytest.raises(MedShiftError, match="batch_size must be a whole number"):
        check_compatible(run, TrainConfig(image_size=8), m.config, ("a", "b"), "pixel")


def test_flags_are_never_abbreviated(run_dir, tmp_path, capsys):
    p = tmp_path / "x.png"
    write_png16(p, np.zeros((16, 16), np.float32))
    rc = main(["translate", "--checkpoint", str(run_dir), "--source", "real_low", "--target",
               "real_exposure", "--out", str(tmp_path / "o"), "--input", str(p)])
    err = capsys.readouterr().err
    assert rc == 2 and "--input" in err and "--input-bits" not in err, err


def _student(tmp_path, teacher) -> str:
    from medshift_fast.models.student import Student, StudentConfig
    from medshift_fast.run import load_run

    t = load_run(teacher)
    st = Student(StudentConfig(unet=t.model.config.to_dict(), pairs=((2, 4),)))
    st.init_from_teacher(t.model)
    return str(save_run(tmp_path / "st", {"image_size": 32}, st.config.to_dict(), t.domains,
                        st.state_dict(), kind="student"))


def test_evaluate_refuses_a_students_baselines_before_reading_data(run_dir, tmp_path, capsys,
                                                                     monkeypatch):
    import medshift_fast.eval._data as data

    def no_data(*a, **k):
        raise AssertionError("data read before the refusal")

    monkeypatch.setattr(data, "count_split", no_data)
    monkeypatch.setattr(data, "load_domain", no_data)
    rc = main(["evaluate", "--checkpoint", _student(tmp_path, run_dir), "--data",
               str(tmp_path), "--source", "real_low", "--target", "real_exposure", "--out",
               str(tmp_path / "ev"), "--no-progress"])
    errs = _errors(capsys)
    assert rc == 2 and len(errs) == 1, errs
    assert "--no-baselines" in errs[0] and "sdedit" in errs[0].lower(), errs[0]


def test_evaluate_with_too_few_images_names_what_to_pass(run_dir, tmp_path, capsys):
    from medshift_fast.data import simulate

    root = simulate(tmp_path / "sim", subjects=20, views=6, size=16, progress=False)
    argv = ["evaluate", "--checkpoint", str(run_dir), "--data", str(root), "--source",
            "real_low", "--target", "real_exposure", "--out", str(tmp_path / "ev"),
            "--no-progress", "--steps", "1"]
    assert main([*argv, "--max-images", "4"]) == 2
    (err,) = _errors(capsys)
    assert "n = 4" in err and "--max-images 16" in err and "--allow-small-n" in err, err
    few = simulate(tmp_path / "few", subjects=3, views=6, size=16, progress=False)
    argv[argv.index(str(root))] = str(few)
    assert main(argv) == 2  # a test split of 6 images
    (err,) = _errors(capsys)
    assert "n = 6" in err and "add images to the test split" in err and "--split" in err, err
    assert "--allow-small-n" in err and "--max-images" not in err, err
