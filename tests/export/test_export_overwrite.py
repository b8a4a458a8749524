"""``export`` onto an existing engine: refused before any work unless --overwrite (engine and
sidecar both), and a failed export under --overwrite leaves the old engine as it was."""

from __future__ import annotations

import hashlib
import json

import pytest

from medshift_fast.cli import main
from medshift_fast.errors import MedShiftError
from medshift_fast.export import api, export_engine
from medshift_fast.export.graphs import ExportSettings

SIZE = 16  # the session model's (conftest.py)
DOMAINS = ("synthetic_low", "real_normal", "real_low")
STEP = ExportSettings(what="step", size=SIZE)


def _sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture()
def no_work(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the export started although its target was refused")

    monkeypatch.setattr(api, "_write_engine", boom)


@pytest.mark.parametrize("which", ["engine", "sidecar", "both"])
def test_an_existing_engine_or_sidecar_is_refused_before_any_work(model, tmp_path, which,
                                                                  no_work):
    out = tmp_path / "translator.onnx"
    side = tmp_path / "translator.onnx.json"
    if which in ("engine", "both"):
        out.write_bytes(b"the user's engine")
    if which in ("sidecar", "both"):
        side.write_text('{"mine": true}')
    before = {p.name: _sha(p) for p in tmp_path.iterdir()}
    with pytest.raises(MedShiftError, match="already exist.*--overwrite"):
        export_engine(model, "onnx", out, STEP, domains=DOMAINS, verify=False)
    assert {p.name: _sha(p) for p in tmp_path.iterdir()} == before


def test_overwrite_replaces_engine_and_sidecar(model, tmp_path, cached_core):
    out = tmp_path / "translator.onnx"
    out.write_bytes(b"old engine")
    (tmp_path / "translator.onnx.json").write_text("{}")
    rep = export_engine(model, "onnx", out, STEP, domains=DOMAINS, verify=True, overwrite=True)
    assert rep.ok and out.read_bytes() != b"old engine"
    side = json.loads((tmp_path / "translator.onnx.json").read_text())
    assert side["sha256"] == _sha(out) and side["file"] == "translator.onnx"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["translator.onnx",
                                                          "translator.onnx.json"]


def test_a_failed_export_keeps_the_old_engine(model, tmp_path, monkeypatch):
    from medshift_fast.export import onnx_export

    def broken(*a, **k):
        raise MedShiftError("the exporter broke")

    monkeypatch.setattr(onnx_export, "export_core", broken)
    out = tmp_path / "translator.onnx"
    out.write_bytes(b"old engine")
    with pytest.raises(MedShiftError, match="exporter broke"):
        export_engine(model, "onnx", out, STEP, domains=DOMAINS, overwrite=True)
    assert out.read_bytes() == b"old engine"
    assert [p.name for p in tmp_path.iterdir()] == ["translator.onnx"]  # no temporary left


def test_cli_export_onto_an_existing_engine(tmp_path, capsys, no_work):
    out = tmp_path / "t.onnx"
    out.write_bytes(b"the user's engine")
    rc = main(["export", "--checkpoint", str(tmp_path / "no-run-needed"), "--format", "onnx",
               "--out", str(out), "--source", "a", "--target", "b"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "already exist" in err[0] and "--overwrite" in err[0]
    assert out.read_bytes() == b"the user's engine"
