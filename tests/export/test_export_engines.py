"""export_engine + sidecar + load_engine (ONNX Runtime), bad engine files, TensorRT, the CLI."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from medshift_fast.cli import main
from medshift_fast.deploy import load_engine
from medshift_fast.errors import MedShiftError
from medshift_fast.export import ExportSettings, export_engine, read_sidecar, sidecar_path
from medshift_fast.flow import translate
from medshift_fast.translate import DEFAULTS

# the export settings' guidance defaults (TranslationSettings')
GUIDANCE = {k: DEFAULTS[k] for k in ("guidance_encode", "guidance_decode")}

pytest.importorskip("onnxruntime")
SIZE = 16
DOMAINS = ("synthetic_low", "real_normal", "real_low")
TR = ExportSettings(what="translate", size=SIZE, batch=2, source=0, target=2, tau=0.6, steps=2,
                    solver="heun")


@pytest.fixture()
def onnx_engine(model, cached_core, tmp_path):
    out = tmp_path / "tr.onnx"
    report = export_engine(model, "onnx", out, TR, domains=DOMAINS, verify=True)
    return out, report


def test_export_engine_writes_sidecar_and_verifies(model, onnx_engine):
    out, report = onnx_engine
    assert report.ok and report.verify.max_abs < 1e-4 and report.verify.psnr > 60
    meta = read_sidecar(out)
    assert meta["engine"] == "onnx" and meta["exporter"] == report.info["exporter"]
    assert meta["domains"] == list(DOMAINS) and meta["size"] == SIZE
    assert meta["settings"]["solver"] == "heun" and meta["settings"]["tau"] == 0.6
    assert meta["inputs"][0]["name"] == "image" and meta["medshift_fast_version"]


def test_load_engine_calls_like_eager(model, onnx_engine):
    eng = load_engine(onnx_engine[0])
    assert eng.what == "translate" and eng.domains == DOMAINS and "heun" in repr(eng)
    x = torch.rand(3, 1, SIZE, SIZE) * 2 - 1  # another batch size than exported
    with torch.no_grad():
        ref = translate(model, x, 0, 2, tau=0.6, steps=2, solver="heun",
                        **GUIDANCE).clamp(-1, 1)
    out = eng(x)
    assert isinstance(out, torch.Tensor) and (out - ref).abs().max() < 1e-4
    # NumPy in -> NumPy out; an unbatched (S, S) frame keeps its shape
    one = eng(x[0, 0].numpy())
    assert isinstance(one, np.ndarray) and one.shape == (SIZE, SIZE)
    assert np.abs(one - ref[0, 0].numpy()).max() < 1e-4
    with pytest.raises(MedShiftError, match="images"):
        eng(torch.zeros(1, 1, SIZE * 2, SIZE * 2))
    with pytest.raises(MedShiftError, match="float"):
        eng(torch.zeros(1, 1, SIZE, SIZE, dtype=torch.int32))
    with pytest.raises(MedShiftError, match="NaN"):
        eng(torch.full((SIZE, SIZE), float("nan")))
    # MONOCHROME1 frames (high = dark): inverted on the way in and out
    mono1 = load_engine(onnx_engine[0], monochrome1=True)
    assert (mono1(-x) - (-ref)).abs().max() < 1e-4


def test_step_engine(model, cached_core, tmp_path):
    s = ExportSettings(what="step", size=SIZE, guidance=2.0)
    report = export_engine(model, "onnx", tmp_path / "step.onnx", s, verify=True)
    assert report.ok
    eng = load_engine(tmp_path / "step.onnx")
    x = torch.rand(2, 1, SIZE, SIZE) * 2 - 1
    v = eng(x, 0.25, 1)  # scalar t and y are broadcast
    with torch.no_grad():
        vv = model(torch.cat([x, x]), torch.full((4,), 0.25), torch.tensor([1, 1, 3, 3]))
    assert (v - (vv[2:] + 2.0 * (vv[:2] - vv[2:]))).abs().max() < 1e-4
    with pytest.raises(MedShiftError, match="labels"):
        eng(x, 0.5, 7)


def test_corrupted_and_wrong_version_engines(onnx_engine):
    out, _ = onnx_engine
    side = sidecar_path(out)
    good_meta = side.read_text()
    data = bytearray(out.read_bytes())
    data[len(data) // 2] ^= 0xFF
    out.write_bytes(bytes(data))
    with pytest.raises(MedShiftError, match="corrupted"):
        load_engine(out)
    # a damaged file whose sidecar was rewritten to match: the runtime's error, as MedShiftError
    out.write_bytes(b"not an onnx model")
    meta = json.loads(good_meta)
    from medshift_fast.export.sidecar import sha256_file

    meta["sha256"] = sha256_file(out)
    side.write_text(json.dumps(meta))
    with pytest.raises(MedShiftError, match="cannot load"):
        load_engine(out)
    meta["format_version"] = 99
    side.write_text(json.dumps(meta))
    with pytest.raises(MedShiftError, match="format version 99"):
        load_engine(out)
    side.write_text("{not json")
    with pytest.raises(MedShiftError, match="not valid JSON"):
        load_engine(out)
    side.unlink()
    with pytest.raises(MedShiftError, match="no sidecar"):
        load_engine(out)
    with pytest.raises(MedShiftError, match="does not exist"):
        load_engine(out.with_name("missing.onnx"))


def test_tensorrt_missing_is_a_clear_error(model, tmp_path):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("TensorRT is installed here")
    with pytest.raises(MedShiftError, match="TensorRT is not installed.*untested here"):
        export_engine(model, "tensorrt", tmp_path / "tr.plan", TR)
    assert not (tmp_path / "tr.plan").exists()


@pytest.mark.cuda
def test_tensorrt_engine_on_gpu(model, tmp_path):  # pragma: no cover - needs TensorRT + GPU
    pytest.importorskip("tensorrt")
    s = ExportSettings(what="translate", size=SIZE, batch=2, dtype="fp16", source=0, target=2,
                       tau=0.6, steps=2, solver="heun")
    gpu_model = copy.deepcopy(model).cuda()
    report = export_engine(gpu_model, "tensorrt", tmp_path / "tr.plan", s, verify=True)
    assert report.ok, str(report.verify)


def _run_dir(model, tmp_path):
    from medshift_fast.run import save_run
    from medshift_fast.train.config import TrainConfig

    return save_run(tmp_path / "run", TrainConfig(image_size=SIZE), model.config, DOMAINS,
                    model.state_dict())


def test_cli_export_onnx(model, cached_core, tmp_path, capsys, monkeypatch):
    run = _run_dir(model, tmp_path)
    out = tmp_path / "cli.onnx"
    rc = main(["export", "--checkpoint", str(run), "--format", "onnx", "--out", str(out),
               "--source", "synthetic_low", "--target", "real_low", "--tau", "0.5",
               "--steps", "2", "--solver", "euler", "--device", "cpu"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "verify: max abs error" in text and "PSNR" in text and "OK" in text
    meta = read_sidecar(out)
    assert meta["source_domain"] == "synthetic_low" and meta["settings"]["target"] == 2
    # verification beyond the tolerance -> exit 1 (files kept); a negative bound always fails
    from medshift_fast.export import api

    real = api.verify_engine
    monkeypatch.setattr(api, "verify_engine", lambda *a, **k: real(*a, **{**k, "tolerance": -1}))
    rc = main(["export", "--checkpoint", str(run), "--format", "onnx", "--out", str(out),
               "--what", "step", "--device", "cpu", "--overwrite"])
    assert rc == 1 and out.exists()
    assert "verification failed" in capsys.readouterr().err


@pytest.mark.parametrize("extra, msg", [
    (["--format", "onnx", "--out", "x.onnx", "--source", "nope", "--target", "real_low"],
     "unknown domain"),
    (["--format", "onnx", "--out", "x.onnx"], "--source and --target"),
    (["--format", "onnx", "--out", "x.onnx", "--source", "real_low", "--target", "real_normal",
      "--solver", "dopri5"], "adaptive"),
    (["--format", "aoti", "--out", "x.onnx", "--what", "step"], ".pt2"),
    (["--format", "onnx", "--out", "x.onnx", "--what", "step", "--io", "uint16"], "float I/O"),
    (["--format", "onnx", "--out", "x.onnx", "--what", "step", "--size", "18"], "divisible"),
    (["--format", "tensorrt", "--out", "x.plan", "--what", "step"], "TensorRT"),
])
def test_cli_bad_arguments_exit_2(model, tmp_path, capsys, extra, msg):
    run = _run_dir(model, tmp_path)
    extra = [str(tmp_path / e) if e.startswith("x.") else e for e in extra]
    if msg == "TensorRT":
        try:
            import tensorrt  # noqa: F401
            pytest.skip("TensorRT is installed here")
        except ImportError:
            pass
    rc = main(["export", "--checkpoint", str(run), "--device", "cpu", *extra])
    err = capsys.readouterr().err
    assert rc == 2 and msg in err and len(err.strip().splitlines()) == 1


def test_cli_argparse_errors_exit_2(capsys):
    for argv, msg in ((["export", "--checkpoint", "r", "--format", "tflite", "--out", "x"],
                       "tflite"),
                      (["export", "--format", "onnx", "--out", "x.onnx"], "--checkpoint")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0], err


def test_a_float_engine_refuses_raw_counts_and_uint16_before_any_work(onnx_engine, monkeypatch):
    """Issue 31: float32 raw counts (0..1023) returned an all-1.0 image; translate_tiled took a
    raw uint16 pixel_array and returned garbage after a minute. Now each is one line from the
    sidecar's "input" entry, before the runtime runs."""
    eng = load_engine(onnx_engine[0])
    assert read_sidecar(onnx_engine[0])["input"] == {"dtype": "float32", "range": [-1.0, 1.0]}
    monkeypatch.setattr(type(eng), "_run", lambda *a: pytest.fail("the runtime ran"))
    g = np.random.default_rng(0)
    counts = g.integers(0, 1024, (1, 1, SIZE, SIZE)).astype(np.float32)
    raw16 = g.integers(0, 65536, (SIZE * 4, SIZE * 4)).astype(np.uint16)
    for call, x, needle in ((eng, counts, r", 10\d\d\] \(raw counts\?\)"),
                            (eng, raw16[:SIZE, :SIZE], "uint16"),
                            (eng.translate_tiled, raw16, "uint16"),
                            (eng.translate_tiled, raw16.astype(np.float32), "raw counts"),
                            (eng, np.full((SIZE, SIZE), np.nan, np.float32), "NaN")):
        with pytest.raises(MedShiftError, match=needle) as err:
            call(x)
        assert "\n" not in str(err.value) and "[-1, 1]" in str(err.value)
    assert eng.check_input(torch.zeros(1, 1, SIZE, SIZE, dtype=torch.float64)).dtype == \
        torch.float32


def test_an_old_sidecar_without_the_input_entry_is_checked_by_its_io(onnx_engine):
    out, _ = onnx_engine
    meta = json.loads(sidecar_path(out).read_text())
    del meta["input"]
    sidecar_path(out).write_text(json.dumps(meta))
    eng = load_engine(out)
    with pytest.raises(MedShiftError, match="raw counts"):
        eng(np.full((SIZE, SIZE), 700, np.float32))
