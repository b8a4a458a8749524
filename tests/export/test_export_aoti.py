"""AOTInductor package on the CPU, and the C++ example that loads it, match eager PyTorch.

The package is compiled once per session (conftest.aoti_package: a uint16 translate graph with
2 U-Net calls); the C++ example is built with CMake against the installed torch when cmake and a
C++ compiler exist.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medshift_fast.data import to_uint16
from medshift_fast.deploy import load_engine
from medshift_fast.errors import MedShiftError
from medshift_fast.export import ExportSettings, export_engine
from medshift_fast.flow import translate
from medshift_fast.translate import DEFAULTS

# the export settings' guidance defaults (TranslationSettings')
GUIDANCE = {k: DEFAULTS[k] for k in ("guidance_encode", "guidance_decode")}

SIZE = 16
ROOT = Path(__file__).resolve().parents[2]


def _eager_u16(model, frames: np.ndarray) -> np.ndarray:
    """The library path for raw frames: read_image's mapping, translate, data.to_uint16."""
    x = frames.astype(np.float32) * np.float32(2 / 65535) - np.float32(1)
    with torch.no_grad():
        y = translate(model, torch.from_numpy(x), 0, 2, tau=0.5, steps=1, solver="euler",
                      **GUIDANCE)
    return np.stack([to_uint16(img[0])[None] for img in y])


def _frames(n: int, seed: int) -> np.ndarray:
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    base = 30000 + 20000 * np.sin(6 * xx + 3 * yy)[None, None]
    return np.clip(base + g.normal(0, 3000, (n, 1, SIZE, SIZE)), 0, 65535).astype(np.uint16)


def test_aoti_package_matches_eager(aoti_model, aoti_package):
    path, report = aoti_package
    assert report.ok and report.info["device"] == "cpu"
    assert report.verify.max_abs <= 2 / 65535 + 1e-7  # at most one count of rounding
    eng = load_engine(path)
    assert eng.settings.io == "uint16" and eng.meta["engine"] == "aoti"
    frames = _frames(3, 0)  # batch 3: the package has a dynamic batch (exported with 2)
    out = eng(frames)
    assert out.dtype == np.uint16 and out.shape == frames.shape
    ref = _eager_u16(aoti_model, frames)
    assert np.abs(out.astype(np.int64) - ref.astype(np.int64)).max() <= 1
    assert np.abs(ref.astype(np.int64) - frames.astype(np.int64)).max() > 100  # not identity
    with pytest.raises(MedShiftError, match="uint16"):
        eng(frames.astype(np.float32))


def _build_example(build: Path) -> Path:
    import torch.utils

    build.mkdir(parents=True, exist_ok=True)
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    subprocess.run(["cmake", "-S", str(ROOT / "examples" / "cpp"), "-B", str(build), *gen,
                    f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
                    "-DCMAKE_BUILD_TYPE=Release"], check=True, capture_output=True, text=True)
    subprocess.run(["cmake", "--build", str(build)], check=True, capture_output=True, text=True)
    exe = build / "translate_frame"
    assert exe.exists()
    return exe


@pytest.mark.skipif(shutil.which("cmake") is None
                    or (shutil.which("c++") or shutil.which("g++")) is None,
                    reason="needs cmake and a C++ compiler")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="example built on Linux only")
def test_cpp_example_matches_python(aoti_model, aoti_package, tmp_path):
    path, _ = aoti_package
    # build/ is git-ignored; an unchanged example rebuilds in a second
    try:
        exe = _build_example(ROOT / "build" / "export_cpp_example")
    except subprocess.CalledProcessError as exc:
        if torch.version.cuda and "cmake" in exc.cmd[0] and "--build" not in exc.cmd:
            pytest.skip(f"CMake cannot configure this CUDA libtorch here: {exc.stderr[-300:]}")
        pytest.fail(f"building examples/cpp failed:\n{exc.stdout}\n{exc.stderr}")
    frame = _frames(1, 1)
    raw_in, raw_out = tmp_path / "in.raw", tmp_path / "out.raw"
    frame.astype("<u2").tofile(raw_in)
    r = subprocess.run([str(exe), str(path), str(raw_in), str(raw_out), str(SIZE), str(SIZE)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "translated" in r.stdout
    out = np.fromfile(raw_out, dtype="<u2").reshape(1, 1, SIZE, SIZE)
    py = load_engine(path)(frame)
    assert np.array_equal(out, py)  # the same compiled package, bit for bit
    ref = _eager_u16(aoti_model, frame)
    assert np.abs(out.astype(np.int64) - ref.astype(np.int64)).max() <= 1
    # a frame of the wrong size is refused with exit status 2 and a one-line reason
    r = subprocess.run([str(exe), str(path), str(raw_in), str(raw_out), "8", "32"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "16x16" in r.stderr


@pytest.mark.cuda
def test_aoti_cuda_package(model, tmp_path):  # pragma: no cover - needs a GPU
    s = ExportSettings(what="step", size=SIZE, batch=2, guidance=2.0)
    gpu = copy.deepcopy(model).cuda()
    report = export_engine(gpu, "aoti", tmp_path / "step.pt2", s, verify=True)
    assert report.ok and report.info["device"] == "cuda", str(report.verify)
