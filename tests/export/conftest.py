"""Shared fixtures for the export tests: one tiny model, one ONNX export of its U-Net, one AOTI
package (compiled once per session: AOTInductor compilation dominates this folder's run time)."""

from __future__ import annotations

import shutil

import pytest
import torch

from medshift_fast.export.graphs import ExportSettings
from medshift_fast.models import build_model

SIZE = 16
DOMAINS = ("synthetic_low", "real_normal", "real_low")


def make_model(**overrides) -> torch.nn.Module:
    """The tiny U-Net with its zero-initialised output layers given random weights."""
    torch.manual_seed(0)
    m = build_model("tiny", **{"model_channels": 16, "head_channels": 16, "num_classes": 3,
                               **overrides})
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() > 1 and p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return m.eval()


@pytest.fixture(scope="session")
def model():
    return make_model()


@pytest.fixture(scope="session")
def onnx_core(model):
    """(ModelProto, exporter) of v = UNet(x, t, y): the single slow step of the ONNX tests."""
    from medshift_fast.export.onnx_export import export_core

    return export_core(model, ExportSettings(what="step", size=SIZE), exporter="auto")


@pytest.fixture()
def cached_core(monkeypatch, onnx_core):
    """Make export_onnx reuse the session's U-Net export (the composition still runs)."""
    from medshift_fast.export import onnx_export

    monkeypatch.setattr(onnx_export, "export_core", lambda *a, **k: onnx_core)
    return onnx_core


AOTI_SETTINGS = ExportSettings(what="translate", size=SIZE, batch=2, io="uint16", source=0,
                               target=2, tau=0.5, steps=1, solver="euler")


@pytest.fixture(scope="session")
def aoti_model():
    """A one-level U-Net (its mid block still has attention): AOTInductor compile time grows with
    the graph (~30 s CPU for this one, ~90 s for the three-level tiny model)."""
    return make_model(channel_mult=(1,), attention_ds=())


@pytest.fixture(scope="session")
def aoti_package(aoti_model, tmp_path_factory):
    """A uint16 translate package (euler, 1 step per leg: 2 U-Net calls) and its export report."""
    from medshift_fast.export import export_engine

    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        pytest.skip("AOTInductor needs a C++ compiler")
    out = tmp_path_factory.mktemp("aoti") / "translator.pt2"
    report = export_engine(aoti_model, "aoti", out, AOTI_SETTINGS, domains=DOMAINS, verify=True)
    return out, report
