"""ops.guided_stage: each backend equals guided_stage_ref (odd shapes, dtypes, in place)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from utils import assert_close

from medshift_fast import _backend, ops
from medshift_fast.errors import BackendUnavailableError, MedShiftError
from medshift_fast.ops import ode as ode_mod
from medshift_fast.ops.reference import guided_stage_ref

ROOT = Path(__file__).resolve().parents[2]
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SHAPES = ((1,), (3, 1, 7, 5), (2, 1, 33, 65))
# (guided, acc mode): acc mode "none" = no accumulator (c = 0), "from_x" = c != 0 without acc,
# "given" = acc passed.
VARIANTS = [(g, a) for g in (True, False) for a in ("none", "from_x", "given")]
W, H, C = 2.5, -0.0625, 1.0 / 3.0


def _has_op() -> bool:
    return ode_mod._ext_op() is not None


needs_cpp = pytest.mark.skipif("not _has_op()", reason="extension lacks guided_stage_out")


def _backend_params():
    return [
        pytest.param("cpp", marks=[pytest.mark.ext, needs_cpp]),
        pytest.param("triton", marks=pytest.mark.triton),
    ]


def _inputs(shape, dtype, guided, acc_mode, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x, vc, vu, acc = (torch.randn(shape, generator=g).to(device=device, dtype=dtype)
                      for _ in range(4))
    c = 0.0 if acc_mode == "none" else C
    return x, vc, (vu if guided else None), (acc if acc_mode == "given" else None), c


def _check(got, want):
    assert (got[1] is None) == (want[1] is None)
    assert got[0].dtype == want[0].dtype and got[0].shape == want[0].shape
    assert_close(got[0], want[0])
    if want[1] is not None:
        assert got[1].dtype == want[1].dtype
        assert_close(got[1], want[1])


@pytest.mark.parametrize("backend", _backend_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("guided,acc_mode", VARIANTS)
def test_matches_reference(backend, dtype, shape, guided, acc_mode):
    x, vc, vu, acc, c = _inputs(shape, dtype, guided, acc_mode)
    want = guided_stage_ref(x, vc, vu, W, H, acc, c)
    _check(ops.guided_stage(x, vc, vu, W, H, acc, c, backend=backend), want)


@pytest.mark.parametrize("backend", _backend_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_in_place(backend, dtype):
    """out=x, acc_out=acc (the rk4 middle stages) and out=v_cond write the buffers themselves."""
    x, vc, vu, acc, c = _inputs((2, 1, 33, 65), dtype, True, "given")
    want = guided_stage_ref(x, vc, vu, W, H, acc, c)
    x_new, acc_new = ops.guided_stage(x, vc, vu, W, H, acc, c, out=x, acc_out=acc, backend=backend)
    assert x_new is x and acc_new is acc
    _check((x, acc), want)

    # v_cond and v_uncond as the two halves of one 2B model output, the result written over
    # v_cond (exact alias; v_uncond shares the storage without overlapping).
    x, v2, _, _, _ = _inputs((2, 3, 1, 7, 5), dtype, False, "none", seed=1)
    x, (vc, vu) = x[0], v2.unbind(0)
    want = guided_stage_ref(x, vc.clone(), vu.clone(), W, H)
    x_new, acc_new = ops.guided_stage(x, vc, vu, W, H, out=vc, backend=backend)
    assert x_new is vc and acc_new is None
    _check((vc, None), want)


@pytest.mark.parametrize("backend", _backend_params())
def test_strided_and_overlapping_buffers(backend):
    """Non-contiguous inputs/outputs, out of another dtype and out partially overlapping x."""
    g = torch.Generator().manual_seed(3)
    base = torch.randn(2, 1, 65, 33, generator=g)
    x = base.transpose(-1, -2)  # (2, 1, 33, 65), non-contiguous
    vc = torch.randn(2, 1, 33, 130, generator=g)[..., ::2]
    vu = torch.randn(2, 1, 33, 65, generator=g)
    acc = torch.randn(2, 1, 65, 33, generator=g).transpose(-1, -2)
    want = guided_stage_ref(x.clone(), vc, vu, W, H, acc.clone(), C)
    x_new, acc_new = ops.guided_stage(x, vc, vu, W, H, acc, C, out=x, acc_out=acc,
                                      backend=backend)
    assert x_new is x and acc_new is acc and not x.is_contiguous()
    _check((x, acc), want)

    out = torch.empty(2, 1, 33, 65, dtype=torch.float64)
    x_new, _ = ops.guided_stage(vu, vc, None, W, H, out=out, backend=backend)
    assert x_new is out and out.dtype == torch.float64
    assert_close(out, guided_stage_ref(vu, vc, None, W, H)[0].double(), dtype=torch.float32)

    buf = torch.randn(101, generator=g)
    v = torch.randn(100, generator=g)
    want = guided_stage_ref(buf[:-1].clone(), v, None, W, H)[0]
    ops.guided_stage(buf[:-1], v, None, W, H, out=buf[1:], backend=backend)  # shifted by one
    assert_close(buf[1:], want)


@pytest.mark.parametrize("backend", _backend_params())
def test_gradients_match_reference(backend):
    shape = (3, 1, 7, 5)
    for guided in (True, False):
        for acc_mode in ("none", "from_x", "given"):
            ins = _inputs(shape, torch.float32, guided, acc_mode, seed=5)
            leaves = [t.clone().requires_grad_(True) if t is not None else None for t in ins[:4]]
            grads = []
            for be in (backend, "reference"):
                for t in leaves:
                    if t is not None:
                        t.grad = None
                x_new, acc_new = ops.guided_stage(leaves[0], leaves[1], leaves[2], W, H,
                                                  leaves[3], ins[4], backend=be)
                loss = x_new.sin().sum()
                if acc_new is not None:
                    loss = loss + acc_new.pow(2).sum()
                loss.backward()
                grads.append([None if t is None else t.grad.clone() for t in leaves])
            for got, want in zip(*grads):
                assert (got is None) == (want is None)
                if want is not None:
                    assert_close(got, want)


@pytest.mark.parametrize("backend", _backend_params())
def test_empty_tensor(backend):
    x = torch.empty(0, 3)
    x_new, acc_new = ops.guided_stage(x, x.clone(), x.clone(), W, H, c=C, backend=backend)
    assert x_new.shape == (0, 3) and acc_new.shape == (0, 3)


@pytest.mark.ext
@needs_cpp
def test_auto_picks_cpp_and_falls_back():
    x, vc, vu, acc, c = _inputs((2, 1, 33, 65), torch.float32, True, "given")
    assert _backend.resolve("guided_stage", "cpu", ode_mod.supported_backends(x, vc, vu, acc)) \
        == "cpp"
    # Mixed dtypes: no kernel; auto falls back to the reference, an explicit kernel refuses.
    assert ode_mod.supported_backends(x, vc.half(), vu, acc) == ("reference",)
    want = guided_stage_ref(x, vc.half(), vu, W, H, acc, c)
    _check(ops.guided_stage(x, vc.half(), vu, W, H, acc, c), want)
    with pytest.raises(BackendUnavailableError):
        ops.guided_stage(x, vc.half(), vu, W, H, acc, c, backend="cpp")
    with pytest.raises(BackendUnavailableError):
        ops.guided_stage(x.double(), vc.double(), None, W, H, backend="cpp")


@pytest.mark.ext
@needs_cpp
def test_op_schema_fake_and_checks():
    """torch.library.opcheck: schema (mutated outputs), fake impl; the C++ checks reject misuse."""
    op = torch.ops.medshift_fast.guided_stage_out
    x, vc, vu, acc, _ = _inputs((3, 1, 7, 5), torch.float32, True, "given")
    torch.library.opcheck(op, (x, vc, vu, acc, W, H, C, torch.empty_like(x), torch.empty_like(x)),
                          test_utils=("test_schema", "test_faketensor"))
    with pytest.raises(RuntimeError, match="dtype"):
        op(x, vc.half(), None, None, W, H, 0.0, torch.empty_like(x), None)
    with pytest.raises(RuntimeError, match="contiguous"):
        op(x, vc.mT, None, None, W, H, 0.0, torch.empty_like(x), None)
    y = torch.randn(11)
    with pytest.raises(RuntimeError):  # output partially overlapping an input
        op(y[:10], y[1:].clone(), None, None, W, H, 0.0, y[1:], None)


def test_shape_mismatch_is_a_user_error():
    x = torch.zeros(2, 3)
    with pytest.raises(MedShiftError, match="shape"):
        ops.guided_stage(x, torch.zeros(3, 2), None, W, H)
    with pytest.raises(ValueError):
        ops.guided_stage(x, x, None, W, H, acc=torch.zeros(2))


# ------------------------------------------------------------------------------- native builds
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_cpp_core_unit_test(tmp_path):
    """The torch-free core and its C++ test (also run by `make ctest`) build and pass."""
    exe = tmp_path / "test_guided_stage"
    subprocess.run(
        ["g++", "-O2", "-std=c++17", "-fopenmp", f"-I{ROOT / 'csrc/include'}",
         str(ROOT / "csrc/cpu/guided_stage.cpp"), str(ROOT / "csrc/tests/test_guided_stage.cpp"),
         "-o", str(exe)],
        check=True, capture_output=True, timeout=300,
    )
    res = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_cuda_core_compiles(tmp_path):
    """Compile check of the torch-free CUDA core (no GPU needed)."""
    res = subprocess.run(
        ["nvcc", "-c", "-arch=sm_90", "-O3", "-std=c++17", f"-I{ROOT / 'csrc/include'}",
         str(ROOT / "csrc/cuda/guided_stage.cu"), "-o", str(tmp_path / "guided_stage.o")],
        capture_output=True, text=True, timeout=300, env={**os.environ},
    )
    assert res.returncode == 0, res.stderr


# ------------------------------------------------------------------------------------ GPU paths
@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", pytest.param("triton", marks=pytest.mark.triton)])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [1, 4099, 1 << 20])
def test_cuda_matches_reference(backend, dtype, n):
    if backend == "cuda" and not _backend.is_available("cuda"):
        pytest.skip("extension built without CUDA")
    if backend == "triton" and _backend.triton_interpret():
        pytest.skip("Triton runs interpreted in this session")
    for guided, acc_mode in VARIANTS:
        x, vc, vu, acc, c = _inputs((n,), dtype, guided, acc_mode, device="cuda")
        want = guided_stage_ref(x, vc, vu, W, H, acc, c)
        _check(ops.guided_stage(x, vc, vu, W, H, acc, c, backend=backend), want)
        # Misaligned views take the scalar path.
        if n > 1:
            want = guided_stage_ref(x[1:], vc[1:], None, W, H)
            _check(ops.guided_stage(x[1:], vc[1:], None, W, H, backend=backend), want)
        x_new, _ = ops.guided_stage(x, vc, vu, W, H, out=x, backend=backend)
        assert x_new is x
