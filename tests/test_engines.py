"""A one-step student's execution engines (translate/engine.py): every engine agrees with eager
fp32, auto picks what the rules say, bf16 only where native and checked, threads from the
machine, and the command line takes --engine / --precision / --threads."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from utils import lean_run

from medshift_fast.errors import MedShiftError
from medshift_fast.translate import Translator
from medshift_fast.translate import engine as E


def _x(shape=(2, 1, 200, 264), seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _gens(n, base=10):
    return [torch.Generator().manual_seed(base + k) for k in range(n)]


@pytest.mark.parametrize("name", ["channels_last", "onnx"])
@pytest.mark.parametrize("noise", [0, 1])
def test_engines_agree_with_eager(name, noise, tmp_path, monkeypatch):
    """fp32 engines: the same translation as eager fp32 to float round-off, tiled (128-px tiles)
    and whole, deterministic and stochastic students alike."""
    if name == "onnx":
        pytest.importorskip("onnxruntime")
        import medshift_fast.export  # noqa: F401 - provides the engine

        monkeypatch.setenv("MEDSHIFT_CACHE", str(tmp_path))
    run = lean_run(noise_channels=noise)
    x = _x()
    for tile in (128, None):
        ref = Translator(run, 0, 3, tile=tile, engine="eager").translate(x, _gens(2))
        tr = Translator(run, 0, 3, tile=tile, engine=name, bf16=False)
        assert tr.engine.name == name and not tr.engine.bf16
        y = tr.translate(x, _gens(2))
        assert float((y - ref).abs().max()) < 1e-4, (name, tile)


@pytest.mark.slow
def test_the_compiled_engine_agrees_with_eager():
    run = lean_run()
    x = _x((1, 1, 128, 128))
    ref = Translator(run, 0, 3, engine="eager").translate(x)
    y = Translator(run, 0, 3, engine="compile", bf16=False).translate(x)
    assert float((y - ref).abs().max()) < 1e-4


def test_bf16_is_close_and_the_check_measures_it():
    run = lean_run()
    x = _x()
    ref = Translator(run, 0, 3, engine="eager").translate(x)
    y = Translator(run, 0, 3, engine="channels_last", bf16=True).translate(x)
    mse = float(((y - ref) ** 2).mean())
    assert 0 < mse and 10 * math.log10(4 / mse) > 40  # bf16 rounds, a little
    db = E.bf16_check(run.model, 0.6, 0, 3, 64)
    assert math.isfinite(db) and db > 40
    # a network whose residual is large and sharp loses more to bf16 than a gentle one
    loud = lean_run()
    with torch.no_grad():
        for p in loud.model.parameters():
            p.mul_(8.0)
    assert E.bf16_check(loud.model, 0.6, 0, 3, 64) < db


def test_auto_follows_the_rules(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    asked = []

    def ok():
        asked.append(1)
        return True

    monkeypatch.setattr(E, "native_bf16", lambda device="cpu": True)
    assert E.choose(True, cpu, None, ok) == ("channels_last", True) and asked
    assert E.choose(True, cpu, None, lambda: False)[1] is False  # the check failed: fp32
    assert E.choose(False, cpu, None, ok) == ("eager", False)  # the U-Net student: as published
    assert E.choose(True, cuda, None, ok) == ("eager", False)
    assert E.choose(True, cpu, True, lambda: False) == ("channels_last", True)  # asked for
    monkeypatch.setattr(E, "native_bf16", lambda device="cpu": False)
    asked.clear()
    # no native bf16: channels_last fp32 (end to end faster and leaner than ONNX Runtime here)
    assert E.choose(True, cpu, None, ok) == ("channels_last", False) and not asked


def test_bf16_needs_a_grain_it_cannot_disturb(monkeypatch):
    """auto's bf16 bar: the PSNR bar AND an rms error at most BF16_MAX_GRAIN_FRACTION of the
    faintest grain the student records for the target; no recorded grain: fp32."""
    from medshift_fast.models.texture import DetectorNoise

    run = lean_run()
    st = run.model
    assert E.grain_floor(st, 3) is None and not E.bf16_ok(st, 0.6, 0, 3, 64)
    db = E.bf16_check(st, 0.6, 0, 3, 64)
    rms = 2.0 * 10.0 ** (-db / 20.0)
    knots = (-0.5, 0.0, 0.5)

    def with_floor(floor):
        model = DetectorNoise(0.5, knots, (0.01,) * 3, (floor, 2 * floor, 3 * floor))
        monkeypatch.setattr(st, "textures", {3: model}, raising=False)
        return E.grain_floor(st, 3)

    assert with_floor(rms / E.BF16_MAX_GRAIN_FRACTION * 2) == rms / E.BF16_MAX_GRAIN_FRACTION * 2
    assert E.bf16_ok(st, 0.6, 0, 3, 64)  # a coarse grain: bf16's rounding is lost in it
    with_floor(rms / E.BF16_MAX_GRAIN_FRACTION / 2)
    assert not E.bf16_ok(st, 0.6, 0, 3, 64)  # a faint one: fp32
    assert E.grain_floor(st, 4) is None  # another target: nothing recorded


def test_native_bf16_reads_the_cpu_flags(monkeypatch):
    E.cpu_flags.cache_clear()
    monkeypatch.setattr(E, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert E.native_bf16("cpu") == torch.backends.mkldnn.is_available()
    monkeypatch.setattr(E, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert not E.native_bf16("cpu")


def test_threads_come_from_the_affinity(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert E.machine_threads() == 3


def test_auto_engine_and_refusals():
    run = lean_run()
    tr = Translator(run, 0, 3)
    eng = tr.engine
    assert eng is tr.engine  # built once
    assert not eng.bf16  # no grain recorded: auto keeps fp32 (bf16's rounding is a texture)
    with pytest.raises(MedShiftError, match="unknown engine"):
        Translator(run, 0, 3, engine="tensorflow")
    with pytest.raises(MedShiftError, match="needs a CUDA device"):
        Translator(run, 0, 3, engine="cuda_graph")
    # a flow run has no engine
    from medshift_fast.run import load_run

    assert Translator(load_run("pretrained/demo128"), "real_low", "real_exposure").engine is None


def test_an_engine_object_is_used_as_given():
    run = lean_run()
    calls = []

    class Spy(E.StudentEngine):
        def translate(self, z, *a, **k):
            calls.append(tuple(z.shape))
            return super().translate(z, *a, **k)

    x = _x((1, 1, 300, 200))
    y = Translator(run, 0, 3, tile=128, engine=Spy(run.model)).translate(x)
    ref = Translator(run, 0, 3, tile=128, engine="eager").translate(x)
    assert torch.equal(y, ref) and len(calls) > 1 and all(c[-1] <= 128 for c in calls)


def test_cli_engine_precision_threads(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from medshift_fast.cli import main
    from medshift_fast.data import DOMAINS, read_image, write_png16
    from medshift_fast.run import save_run
    from medshift_fast.train import TrainConfig

    monkeypatch.setenv("MEDSHIFT_CACHE", str(tmp_path / "cache"))
    run = lean_run()
    d = tmp_path / "run"
    save_run(d, TrainConfig(image_size=128), run.model.config, DOMAINS, run.model.state_dict(),
             kind="student")
    inp = tmp_path / "in"
    inp.mkdir()
    g = torch.Generator().manual_seed(0)
    write_png16(inp / "a.png", torch.rand(160, 200, generator=g) * 1.6 - 0.8)
    src, tgt = DOMAINS[0], DOMAINS[3]
    outs, before = {}, torch.get_num_threads()
    for eng, prec in (("eager", "fp32"), ("onnx", "fp32"), ("channels_last", "fp32")):
        out = tmp_path / f"out_{eng}"
        rc = main(["translate", "--checkpoint", str(d), "--source", src, "--target", tgt,
                   "--size", "native", "--engine", eng, "--precision", prec,
                   "--threads", "1", "--out", str(out), "--no-progress", str(inp)])
        assert rc == 0 and torch.get_num_threads() == before  # --threads 1 for the command only
        (png,) = out.glob("a*.png")
        outs[eng] = read_image(png)
    for eng in ("onnx", "channels_last"):
        assert np.abs(outs[eng] - outs["eager"]).max() <= 2 / 65535 + 1e-7
    for bad in (["--engine", "tpu"], ["--precision", "fp8"], ["--threads", "0"]):
        rc = main(["translate", "--checkpoint", str(d), "--source", src, "--target", tgt,
                   "--out", str(tmp_path / "x"), "--no-progress", *bad, str(inp)])
        assert rc == 2
