"""The ONNX export of the lean one-step student (issue 30): matches eager within 1e-4 at any
height and width, runs in ONNX Runtime, takes a stochastic student's noise maps, and is cached
by the weights and settings (reused, re-exported when either changes, never kept unverified)."""

from __future__ import annotations

import pytest
import torch
from utils import lean_run

from medshift_fast.errors import MedShiftError
from medshift_fast.export import export_engine, load_engine
from medshift_fast.export import student_engine as SE
from medshift_fast.export.graphs import ExportSettings, build_module
from medshift_fast.translate import Translator

pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("noise", [0, 1])
def test_lean_onnx_export_matches_eager(noise, tmp_path):
    run = lean_run(noise_channels=noise)
    st = run.model
    s = ExportSettings(what="translate", size=64, source=0, target=3, tau=0.45, dynamic=True)
    rep = export_engine(run, "onnx", tmp_path / "lean.onnx", s, tolerance=1e-4)
    assert rep.ok and rep.verify.max_abs < 1e-4
    eng = load_engine(rep.path, threads=1)
    assert eng.providers == ["CPUExecutionProvider"] and eng.dynamic and eng.factor == 4
    assert eng.noise_channels == noise
    ref_mod = build_module(st, s)
    g = torch.Generator().manual_seed(5)
    for shape in ((1, 1, 64, 64), (3, 1, 96, 160), (2, 1, 212, 36)):
        x = torch.rand(*shape, generator=g) * 2 - 1
        n = torch.randn(shape[0], 1, *shape[2:], generator=g) if noise else None
        args = (x,) if n is None else (x, n)
        with torch.no_grad():
            ref = ref_mod(*args)
            # and the graph's reference is the student's own translation
            ys, yt = torch.zeros(shape[0], dtype=torch.long), torch.full((shape[0],), 3)
            own = st.translate(x, 0.45, ys, yt, n).clamp(-1, 1)
        assert torch.equal(ref, own)
        out = eng(*args)
        assert out.shape == x.shape and float((out - ref).abs().max()) < 1e-4
    if noise:  # the noise input matters, and zeros are the deterministic member
        x = torch.rand(1, 1, 64, 64, generator=g) * 2 - 1
        assert not torch.equal(eng(x, torch.randn(1, 1, 64, 64, generator=g)), eng(x))
        assert torch.equal(eng(x), eng(x, torch.zeros(1, 1, 64, 64)))
    with pytest.raises(MedShiftError, match="multiples of 4"):
        eng(torch.zeros(1, 1, 66, 64))


def test_the_cache_exports_once_and_keys_on_weights_and_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSHIFT_CACHE", str(tmp_path))
    run = lean_run()
    calls = []
    from medshift_fast.export import api

    orig = api.export_engine

    def counting(*a, **k):
        calls.append(1)
        return orig(*a, **k)

    monkeypatch.setattr(api, "export_engine", counting)  # student_engine imports it per call
    e1 = Translator(run, 0, 3, engine="onnx").engine
    e2 = Translator(run, 0, 3, engine="onnx").engine
    assert len(calls) == 1 and e1.onnx.path == e2.onnx.path
    assert e1.onnx.path.parent == tmp_path / "engines"
    assert len(list((tmp_path / "engines").glob("*.onnx"))) == 1
    e3 = Translator(run, 0, 3, tau=0.45, engine="onnx").engine  # another setting
    other = lean_run(seed=7)  # other weights
    e4 = Translator(other, 0, 3, engine="onnx").engine
    assert len(calls) == 3 and len({e1.onnx.path, e3.onnx.path, e4.onnx.path}) == 3
    assert not list((tmp_path / "engines").glob(".export-*"))  # no temporary left behind


def test_a_mismatching_export_is_refused_and_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSHIFT_CACHE", str(tmp_path))
    monkeypatch.setattr(SE, "VERIFY_TOL", 0.0)  # nothing matches exactly: verification fails
    run = lean_run()
    with pytest.raises(MedShiftError, match="does not match eager"):
        _ = Translator(run, 0, 3, engine="onnx").engine
    assert not list((tmp_path / "engines").glob("*.onnx*"))


def test_onnx_engine_refusals():
    run = lean_run()
    with pytest.raises(MedShiftError, match="runs fp32"):
        _ = Translator(run, 0, 3, engine="onnx", bf16=True).engine
    from medshift_fast.run import load_run

    flow = load_run("pretrained/demo128")
    assert Translator(flow, "real_low", "real_exposure", engine="onnx").engine is None
