"""Native resolution: tiles blended without seams, memory planned before work, the working
scale and the intensity rule applied and recorded, degenerate requests refused."""

from __future__ import annotations

import copy
import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medshift_fast.cli import main
from medshift_fast.data import read_image, simulate, write_png16
from medshift_fast.errors import MedShiftError
from medshift_fast.models.unet import AttentionBlock
from medshift_fast.run import LoadedRun, load_run
from medshift_fast.translate import Translator
from medshift_fast.translate.learned import Learned
from medshift_fast.translate.tiling import plan_grid, tile_starts, tiled_apply

ROOT = Path(__file__).resolve().parents[1]
TEACHER, STUDENT = ROOT / "pretrained" / "demo128", ROOT / "pretrained" / "demo128_student"
shipped = pytest.mark.skipif(not (TEACHER / "config.json").is_file(),
                             reason="the shipped pretrained runs are not here")


def _psnr(a, b) -> float:
    return 10 * math.log10(4.0 / max(float(((a - b) ** 2).mean()), 1e-20))


@pytest.fixture(scope="module")
def xray(tmp_path_factory):
    """Simulated radiographs of two domains at 128 px (the shipped runs' scale)."""
    root = tmp_path_factory.mktemp("sim128")
    simulate(root, subjects=1, views=2, size=128, seed=3, progress=False)
    return root


def _image(root, domain="real_low", k=0):
    return read_image(sorted((Path(root) / domain).glob("*.png"))[k])


# ------------------------------------------------------------------------------ tiles, blend
@pytest.mark.parametrize("length, tile, overlap, factor", [(100, 32, 8, 4), (384, 128, 32, 4),
                                                           (2048, 128, 32, 4), (40, 64, 16, 4),
                                                           (129, 64, 16, 1)])
def test_tiles_cover_the_image_with_aligned_origins(length, tile, overlap, factor):
    starts = tile_starts(length, tile, overlap, factor)
    t = min(tile, length)
    assert starts[0] == 0 and starts[-1] + t == length
    assert all(s % factor == 0 for s in starts[:-1])
    assert all(b - a <= t - overlap + factor for a, b in zip(starts, starts[1:]))  # overlap kept


@pytest.mark.parametrize("shape", [(96, 200), (128, 128), (40, 300), (64, 40)])
def test_blending_the_identity_gives_the_image_back(shape):
    x = torch.rand(2, 3, *shape)
    g = plan_grid(shape, 32, 8, 4)
    y = tiled_apply(lambda t: t, x, (), g, tile_batch=5)
    torch.testing.assert_close(y, x, rtol=0, atol=1e-6)


def _local(model: nn.Module) -> nn.Module:
    """The network with every self-attention block removed (identity): a local U-Net with the
    trained convolutions of the shipped run."""
    m = copy.deepcopy(model)

    class Skip(nn.Module):
        def forward(self, x):
            return x

    for mod in list(m.modules()):
        for name, child in list(mod.named_children()):
            if isinstance(child, AttentionBlock):
                setattr(mod, name, Skip())
    return m.eval()


class _FixedNorm(nn.Module):
    """GroupNorm's affine part with fixed statistics: no per-image reduction, a local op."""

    def __init__(self, gn: nn.GroupNorm) -> None:
        super().__init__()
        self.gn = gn

    def forward(self, x):
        return x * self.gn.weight[None, :, None, None] * 0.5 + self.gn.bias[None, :, None, None]


def _strictly_local(model: nn.Module) -> nn.Module:
    m = _local(model)
    for mod in list(m.modules()):
        for name, child in list(mod.named_children()):
            if isinstance(child, nn.GroupNorm):
                setattr(mod, name, _FixedNorm(child))
    return m


def _run_of(kind, strict=False):
    run = load_run(TEACHER if kind == "teacher" else STUDENT)
    net = _strictly_local(run.model) if strict else _local(run.model)
    return LoadedRun(None, net, run.model_config, run.domains, run.config, run.codec, run.kind)


@shipped
@pytest.mark.parametrize("kind", ["teacher", "student"])
@pytest.mark.parametrize("side", [256, 384])
def test_tiled_equals_whole_for_a_local_unet(tmp_path, kind, side):
    """Where the network is local (no attention), tiles of the training size blended per
    solver stage (teacher) or once (student) reproduce the whole-image translation: the
    shipped run's trained convolutions, at the recipe's settings, on a radiograph of that
    size. (GroupNorm's per-tile statistics are the only difference left: docs/native.md.)"""
    simulate(tmp_path, subjects=1, views=1, size=side, seed=side, progress=False)
    x = torch.from_numpy(_image(tmp_path))[None, None][..., :, : side - 64]
    run = _run_of(kind)
    whole = Translator(run, "real_low", "real_exposure", tile=None).translate(x)
    tr = Translator(run, "real_low", "real_exposure", tile=128)
    tiled = tr.translate(x)
    assert tr.last_plan.n_tiles > 1
    assert _psnr(tiled, whole) >= 40.0
    assert _psnr(whole, x) < 38.0  # it did translate


@shipped
@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_tiles_are_exact_for_a_strictly_local_network(kind):
    """No attention and no per-image statistics: the blend of aligned tiles is the
    whole-image result to float round-off (the tiling itself adds nothing)."""
    torch.manual_seed(1)
    x = F.avg_pool2d(torch.rand(1, 1, 320, 256) * 2 - 1, 5, stride=1, padding=2)
    run = _run_of(kind, strict=True)
    kw = {"steps": 3} if kind == "teacher" else {}
    whole = Translator(run, "real_low", "real_exposure", tile=None, **kw).translate(x)
    tiled = Translator(run, "real_low", "real_exposure", tile=128, overlap=64,
                       **kw).translate(x)
    assert _psnr(tiled, whole) >= 60.0


def test_no_seams_on_tile_borders():
    """Blended tiles of a smooth-gradient model leave no step at tile borders."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 5, padding=2), nn.Tanh(), nn.Conv2d(8, 1, 5, padding=2))
    x = torch.rand(1, 1, 512, 512) * 2 - 1
    x = F.avg_pool2d(x, 9, stride=1, padding=4)
    g = plan_grid(x.shape, 128, 32, 4)
    with torch.no_grad():
        y = tiled_apply(lambda t: net(t), x, (), g, 8)[0, 0]
    gy = (y[1:] - y[:-1]).abs()
    rows = sorted({o - 1 for o in g.ys[1:]} | {o + 127 for o in g.ys[:-1]})
    mask = torch.zeros(gy.shape[0], dtype=torch.bool)
    mask[rows] = True
    assert float(gy[mask].mean() / gy[~mask].mean()) <= 1.05


# ----------------------------------------------------------------------------- memory plan
def _tiny_run(tmp_path, **over):
    from medshift_fast.data import DOMAINS
    from medshift_fast.models import build_model
    from medshift_fast.run import save_run
    from medshift_fast.train import TrainConfig

    torch.manual_seed(0)
    m = build_model("tiny", num_classes=len(DOMAINS), model_channels=16, head_channels=16,
                    **over)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() > 1 and p.abs().sum() == 0:
                p.normal_(0, 0.02)
    d = tmp_path / "run"
    save_run(d, TrainConfig(image_size=32), m.config, DOMAINS, m.state_dict())
    return d


def test_the_memory_plan_refuses_before_any_work(tmp_path):
    run = load_run(_tiny_run(tmp_path))
    tr = Translator(run, "real_low", "real_exposure", max_memory="20M")
    with pytest.raises(MedShiftError, match="memory budget"):
        tr.translate(torch.zeros(1, 1, 4096, 4096))
    whole = Translator(run, "real_low", "real_exposure", tile=None, max_memory="2G")
    with pytest.raises(MedShiftError, match="tiles"):
        whole.plan((1, 1, 1024, 1024))  # global attention over 65,536 tokens
    tiled = Translator(run, "real_low", "real_exposure", max_memory="2G")
    p1, p4 = tiled.plan((1, 1, 1024, 1024)), tiled.plan((1, 1, 4096, 4096))
    assert p1.tile_batch == p4.tile_batch > 1
    assert p4.peak - p1.peak < 16 * 4096 * 4096 * 4  # only whole-image buffers grow
    # tiles per forward: as asked (no faster or slower result), else the device's default
    one = Translator(run, "real_low", "real_exposure", max_memory="2G", tile_batch=1)
    assert one.plan((1, 1, 1024, 1024)).tile_batch == 1 and p1.tile_batch == 4  # CPU default
    x = torch.rand(1, 1, 200, 150) * 2 - 1
    assert _psnr(one.translate(x), tiled.translate(x)) >= 60.0


def test_oversized_and_degenerate_requests_exit_2_with_one_line(tmp_path, capsys):
    d = _tiny_run(tmp_path)
    from PIL import Image

    cases = {"one.png": (1, 1), "strip.png": (3, 500), "sliver.png": (16, 400)}
    for name, shape in cases.items():
        Image.fromarray(np.zeros(shape, np.uint16)).save(tmp_path / name)
    write_png16(tmp_path / "ok.png", np.zeros((64, 64), np.float32))
    base = ["translate", "--checkpoint", str(d), "--source", "real_low", "--target",
            "real_exposure", "--no-progress"]
    for args, needle in [([str(tmp_path / "one.png")], "too small"),
                         ([str(tmp_path / "strip.png")], "too small"),
                         ([str(tmp_path / "sliver.png")], "aspect ratio"),
                         (["--size", "100000", str(tmp_path / "ok.png")], "memory budget"),
                         (["--size", "0", str(tmp_path / "ok.png")], "--size"),
                         (["--size", "12.5", str(tmp_path / "ok.png")], "--size"),
                         (["--tile", "none", "--size", "1024", "--max-memory", "1G",
                           str(tmp_path / "ok.png")], "tiles"),
                         (["--max-memory", "lots", str(tmp_path / "ok.png")], "--max-memory"),
                         (["--tile", "6", str(tmp_path / "ok.png")], "tile"),
                         (["--tile-batch", "0", str(tmp_path / "ok.png")], "--tile-batch")]:
        out = tmp_path / f"out_{len(args)}_{needle[:4]}"
        rc = main([*base, "--out", str(out), *args])
        err = [e for e in capsys.readouterr().err.splitlines() if "error" in e]
        assert rc == 2 and len(err) == 1 and needle in err[0], (args, err)
        assert not list(out.glob("*.png")) if out.exists() else True


def test_translator_refuses_values_outside_its_range(tmp_path):
    tr = Translator(load_run(_tiny_run(tmp_path)), "real_low", "real_exposure", steps=1)
    for x in (torch.rand(1, 1, 32, 32) * 255, torch.rand(1, 1, 32, 32) * 10):
        with pytest.raises(MedShiftError, match=r"\[-1, 1\]"):
            tr.translate(x)
    assert tr.translate(torch.rand(1, 1, 30, 42) * 2 - 1).shape == (1, 1, 30, 42)  # any size


# ----------------------------------------------------------------------- scale, intensity
def test_the_working_scale_follows_what_the_run_learned():
    img = Learned("image_size", 128, None, 128)
    ws = img.working_scale((2048, 1536))
    assert ws.shape == (171, 128) and ws.warning and "size='native'" in ws.warning
    assert img.working_scale((2048, 1536), size="native").shape == (2048, 1536)
    assert img.size_warning((2048, 1536))
    nat = Learned("native", 256, None, 256)
    assert nat.working_scale((3000, 2500)).shape == (3000, 2500)
    sp = Learned("spacing", 256, 0.2, 256)
    ws = sp.working_scale((1000, 800), spacing_mm=0.1)
    assert ws.shape == (500, 400) and ws.how == "spacing" and ws.warning is None
    assert sp.working_scale((1000, 800), spacing_mm=0.5).warning  # 2.5x from 0.2 mm
    assert sp.working_scale((1000, 800)).shape == (1000, 800)  # spacing unknown: native


def _containers(tmp_path, x, bits, declared):
    """x in [-1, 1] written as ``bits``-bit values in 16-bit PNG and TIFF containers."""
    import tifffile
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    v = np.rint((x + 1) / 2 * (2**bits - 1)).astype(np.uint16)
    info = PngInfo()
    if declared and bits < 16:
        info.add(b"sBIT", bytes([bits]))
    png, tif = tmp_path / f"b{bits}_{declared}.png", tmp_path / f"b{bits}_{declared}.tif"
    Image.fromarray(v).save(png, pnginfo=info)
    tags = [(341, "H", 1, 2**bits - 1, False)] if declared and bits < 16 else []
    tifffile.imwrite(tif, v, extratags=tags)
    return png, tif


@shipped
@pytest.mark.parametrize("bits", [8, 10, 12, 16])
@pytest.mark.parametrize("declared", [True, False])
def test_low_bit_content_in_16bit_containers(xray, tmp_path, capsys, bits, declared):
    """Translated with the structure kept (r >= 0.9), or refused in one line naming the fix."""
    x = _image(xray, "real_low", 1)
    for f in _containers(tmp_path, x, bits, declared):
        out = tmp_path / f"out_{f.suffix[1:]}"
        rc = main(["translate", "--checkpoint", str(STUDENT), "--source", "real_low",
                   "--target", "real_exposure", "--out", str(out), "--no-progress", str(f)])
        err = [e for e in capsys.readouterr().err.splitlines() if "error" in e]
        if rc == 2:
            assert len(err) == 1 and f"--input-bits {bits}" in err[0], err
            assert not declared and bits < 16
            rc = main(["translate", "--checkpoint", str(STUDENT), "--source", "real_low",
                       "--target", "real_exposure", "--out", str(out), "--no-progress",
                       "--input-bits", str(bits), str(f)])
        assert rc == 0
        (y,) = out.glob(f"*_real_exposure{f.suffix}")
        a = read_image(y, input_bits=None if declared or bits == 16 else bits)
        r = np.corrcoef(a.ravel(), x.ravel())[0, 1]
        assert r >= 0.9, r
        raw = np.asarray(read_raw(y))
        assert raw.max() <= 2**bits - 1  # written back at the input's own bit depth


def read_raw(path):
    import tifffile
    from PIL import Image

    return tifffile.imread(path) if path.suffix == ".tif" else np.asarray(Image.open(path))


def test_sbit_is_honoured_and_written_back(tmp_path):
    from medshift_fast.data.writers import write_image

    x = np.linspace(-1, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    png, tif = _containers(tmp_path, x, 12, True)
    for f in (png, tif):
        img, src = read_image(f, with_source=True)
        np.testing.assert_allclose(img, x, atol=2 / 4095)
        out = tmp_path / f"copy{f.suffix}"
        write_image(out, img, src)
        assert read_raw(out).max() == 4095
        np.testing.assert_allclose(read_image(out), img, atol=1e-6)
    assert b"sBIT" in (tmp_path / "copy.png").read_bytes()


# ----------------------------------------------------------------- native-resolution training
def test_native_crops_are_a_function_of_the_draw_and_never_all_decoded(tmp_path):
    from medshift_fast.data import FolderDataset
    from medshift_fast.train.data import NativeCrops

    simulate(tmp_path / "d", subjects=2, views=2, size=96, seed=0, progress=False)
    ds = NativeCrops(FolderDataset(tmp_path / "d", size=None), 32, seed=1,
                     cache_bytes=2 * 96 * 96 * 4)
    a, b = ds[(3, 17)][0], ds[(3, 17)][0]
    assert a.shape == (1, 32, 32) and torch.equal(a, b)
    assert not torch.equal(ds[(3, 18)][0], a)
    for i in range(len(ds)):
        ds[(i, i)]
    assert len(ds._cache) <= 2  # a bounded cache, not the decoded dataset


def test_train_native_then_translate_on_the_native_grid(tmp_path):
    import json

    simulate(tmp_path / "d", subjects=2, views=2, size=96, seed=0, progress=False)
    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "d"), "--out", str(run), "--native",
                 "--crop", "32", "--steps", "2", "--batch-size", "4", "--no-progress",
                 "--sample-every", "0", "--val-every", "0", "--preset", "tiny"]) == 0
    rec = json.loads((run / "config.json").read_text())["learned"]
    assert rec["scale"]["kind"] == "native" and rec["tile"] == 32
    assert set(rec["intensity"]["domains"]) >= {"real_low", "real_exposure"}
    src = sorted((tmp_path / "d" / "real_low").glob("*.png"))[0]
    out = tmp_path / "out"
    assert main(["translate", "--checkpoint", str(run), "--source", "real_low", "--target",
                 "real_exposure", "--out", str(out), "--no-progress", "--steps", "2",
                 str(src)]) == 0
    (m,) = out.glob("manifest-*.csv")
    row = next(csv.DictReader(open(m)))
    assert row["working_size"] == "96x96" and "native grid" in row["scale"]
    assert row["tiles"].startswith("32 px")


@shipped
def test_an_exported_student_engine_translates_large_images_in_tiles(tmp_path):
    """ONNX Runtime on the engine's own size, tile by tile: the Translator's tiled result."""
    pytest.importorskip("onnxruntime")
    from medshift_fast.deploy import load_engine
    from medshift_fast.export import export_engine

    tr = Translator(load_run(STUDENT), "real_low", "real_exposure")
    export_engine(tr, "onnx", tmp_path / "s.onnx", size=128, batch=2)
    eng = load_engine(tmp_path / "s.onnx")
    x = torch.rand(1, 1, 320, 256) * 2 - 1
    y = eng.translate_tiled(x)
    assert y.shape == x.shape and _psnr(y, tr.translate(x)) >= 60.0
    with pytest.raises(MedShiftError, match="at least 128x128"):
        eng.translate_tiled(torch.zeros(1, 1, 64, 300))


@shipped
def test_frame_translator_tiles_large_frames_and_refuses_impossible_ones():
    from medshift_fast.deploy import FrameTranslator

    ft = FrameTranslator(str(STUDENT), "real_low", "real_exposure", size=256, any_size=True,
                         warmup=0)
    x = torch.rand(256, 256) * 2 - 1
    y = ft(x)
    ref = Translator(load_run(STUDENT), "real_low", "real_exposure").translate(x[None, None])
    assert ft.plan.n_tiles > 1 and _psnr(y, ref[0, 0]) >= 60.0
    with pytest.raises(MedShiftError, match="memory budget"):
        FrameTranslator(str(STUDENT), "real_low", "real_exposure", size=200_000, any_size=True)


def test_a_childs_peak_memory_is_its_own_not_its_parents():
    """CI measured 2.1 GB for a 0.5 GB translation: getrusage's ru_maxrss of a child carries its
    (large) parent's high-water mark over exec. cli_in_child reports the child's own VmHWM."""
    from medshift_fast.demo.native import cli_in_child

    ballast = np.ones(1536 * 2**20 // 8)  # 1.5 GB resident in this (the parent) process
    rc, _, peak_mb = cli_in_child(["--version"])
    assert rc == 0 and peak_mb < 1024, peak_mb
    del ballast


@shipped
@pytest.mark.slow
def test_a_real_2k_radiograph_at_native_size_within_the_memory_bound(tmp_path):
    """RG1_UNCI (1955 x 1841 CR, MONOCHROME1) through `medshift translate --size native` in a
    child process: a derived DICOM of the same geometry, the working scale recorded, the
    child's peak resident memory under 2 GB."""
    import types

    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    src = get_testdata_file("RG1_UNCI.dcm", download=False)
    if src is None:
        pytest.skip("pydicom-data's RG1_UNCI.dcm is not here")
    from medshift_fast.demo.native import cli_in_child  # the child's own peak (VmHWM)

    rc, stderr, peak_mb = cli_in_child([
        "translate", "--checkpoint", str(STUDENT), "--source", "real_low", "--target",
        "real_exposure", "--size", "native", "--out", str(tmp_path / "o"), "--no-progress", src])
    res = types.SimpleNamespace(stderr=stderr)
    assert rc == 0, res.stderr[-1000:]
    assert peak_mb <= 2048, peak_mb
    assert "larger than the 128-px images the model learned" in res.stderr  # said, one line
    a = pydicom.dcmread(src, stop_before_pixels=True)
    (out,) = (tmp_path / "o").glob("*.dcm")
    b = pydicom.dcmread(out)
    assert (b.Rows, b.Columns, b.PhotometricInterpretation, b.BitsStored) == (
        a.Rows, a.Columns, a.PhotometricInterpretation, a.BitsStored)
    assert "1955x1841 px, native grid" in b.DerivationDescription
    assert "tiles 128 px, overlap 32" in b.DerivationDescription


@shipped
def test_the_demo_ends_with_a_real_radiograph_at_native_size(tmp_path, monkeypatch):
    """demo_native.native_section on a 320 x 300 crop of RG1_UNCI (the same file pipeline as
    the demo's full-size run): a derived DICOM of the input's geometry, the report's lines
    with the working grid and tiles, and the input/output figure with its 100 % crops."""
    pytest.importorskip("pydicom")
    import pydicom
    import pydicom.data

    from medshift_fast.demo import native as demo_native

    src = pydicom.data.get_testdata_file("RG1_UNCI.dcm", download=False)
    if src is None:
        pytest.skip("pydicom-data's RG1_UNCI.dcm is not here")
    ds = pydicom.dcmread(src)
    a = ds.pixel_array[600:920, 900:1200].copy()
    ds.Rows, ds.Columns = a.shape
    ds.PixelData = a.tobytes()
    small = tmp_path / "RG1_crop.dcm"
    ds.save_as(small)
    monkeypatch.setattr(pydicom.data, "get_testdata_file", lambda *a, **k: str(small))
    lines, timing = demo_native.native_section(tmp_path / "demo", STUDENT, lambda m: None)
    text = "\n".join(lines)
    assert "working grid" in text and "tiles" in text and "![native](native_rg1.png)" in text
    assert timing["native_s"] > 0 and (tmp_path / "demo" / "native_rg1.png").is_file()
    (out,) = (tmp_path / "demo" / "native").glob("*.dcm")
    b = pydicom.dcmread(out)
    assert (b.Rows, b.Columns, b.PhotometricInterpretation) == (320, 300, "MONOCHROME1")
    assert "working 320x300 px, native grid" in b.DerivationDescription
    assert demo_native.native_section(tmp_path / "d2", None, lambda m: None)[0][0].startswith(
        "- Native-size translation skipped")
