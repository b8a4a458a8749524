"""Package-level behaviour: lean import, backend dispatch."""

import os
import subprocess
import sys

import pytest

import medshift_fast
from medshift_fast import _backend
from medshift_fast.errors import BackendUnavailableError, MedShiftError


def test_import_is_lean():
    # Importing the package (and its ops/flow/models) must not import triton or initialise CUDA.
    code = (
        "import sys, medshift_fast, medshift_fast.ops, medshift_fast.flow, medshift_fast.models\n"
        "import torch\n"
        "assert 'triton' not in sys.modules, 'triton imported at import time'\n"
        "assert not torch.cuda.is_initialized(), 'CUDA initialised at import time'\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout


def test_unknown_backend_name():
    with pytest.raises(MedShiftError):
        with medshift_fast.use_backend("fastest"):
            pass


def test_explicit_missing_backend_raises(monkeypatch):
    # "cuda" made unavailable whatever the machine: the refusal is tested everywhere
    monkeypatch.setattr(_backend, "is_available",
                        lambda name: name in ("auto", "reference"))
    with pytest.raises(BackendUnavailableError):
        with medshift_fast.use_backend("cuda"):
            pass
    with pytest.raises(BackendUnavailableError):
        _backend.resolve("x", "cpu", ("reference", "cuda"), "cuda")


def test_preference_falls_back_to_auto_for_ops_without_it(monkeypatch):
    """A pipeline-wide preference is used by the ops that have it; an op without it resolves by
    auto; an explicit per-op request still raises; a preference missing on the machine raises."""
    monkeypatch.setattr(_backend, "is_available", lambda name: name != "cuda")
    with _backend.use_backend("cpp"):
        assert _backend.resolve("a", "cpu", ("cpp", "reference")) == "cpp"
        assert _backend.resolve("b", "cpu", ("triton", "reference")) == "reference"
        assert _backend.resolve("c", "cuda", ("cpp", "reference")) == "reference"
        with pytest.raises(BackendUnavailableError):
            _backend.resolve("b", "cpu", ("triton", "reference"), "cpp")
    monkeypatch.setenv("MEDSHIFT_FAST_BACKEND", "cuda")
    with pytest.raises(BackendUnavailableError, match="preferred"):
        _backend.resolve("a", "cpu", ("cpp", "reference"))


def test_auto_picks_reference_when_nothing_else():
    assert _backend.resolve("x", "cpu", ("reference",), "auto") == "reference"


def test_backend_unsupported_for_op_raises():
    with pytest.raises(BackendUnavailableError):
        _backend.resolve(
            "x", "cpu", ("reference",), "cpp" if _backend.is_available("cpp") else "cuda"
        )


def test_use_backend_context_and_env(monkeypatch):
    assert medshift_fast.current_backend() in _backend.BACKENDS
    with medshift_fast.use_backend("reference"):
        assert medshift_fast.current_backend() == "reference"
        with medshift_fast.use_backend("auto"):
            assert medshift_fast.current_backend() == "auto"
        assert medshift_fast.current_backend() == "reference"
    monkeypatch.setenv("MEDSHIFT_FAST_BACKEND", "reference")
    assert medshift_fast.current_backend() == "reference"
    monkeypatch.setenv("MEDSHIFT_FAST_BACKEND", "nonsense")
    with pytest.raises(MedShiftError):
        medshift_fast.current_backend()


def test_auto_never_picks_interpreted_triton_on_cpu(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    name = _backend.resolve("x", "cpu", ("triton", "reference"), "auto")
    assert name == "reference"


def test_extension_status_reports_not_built_and_stale(tmp_path, monkeypatch):
    """`medshift env` says why the extension is missing, or that it is older than the sources."""
    import json

    pkg = tmp_path / "medshift_fast"
    (tmp_path / "csrc").mkdir()
    (tmp_path / "csrc" / "op.cpp").write_text("int f() { return 1; }\n")
    pkg.mkdir()
    monkeypatch.setattr(_backend, "_PKG", str(pkg))
    monkeypatch.setattr(_backend, "BUILD_INFO", str(pkg / "_C_build.json"))

    def status():
        _backend.extension_status.cache_clear()
        return _backend.extension_status()

    (pkg / "_C_build.json").write_text(json.dumps({"error": "the build failed (no compiler)"}))
    st = status()
    assert st["state"] == "not built" and "no compiler" in st["detail"]
    (pkg / "_C.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    digest = _backend.sources_digest(str(tmp_path))
    (pkg / "_C_build.json").write_text(json.dumps({"sources_sha256": digest, "error": None}))
    assert status()["state"] == "built"
    (tmp_path / "csrc" / "op.cpp").write_text("int f() { return 2; }\n")  # sources changed
    st = status()
    assert st["state"] == "stale" and "make ext" in st["detail"]
    _backend.extension_status.cache_clear()
