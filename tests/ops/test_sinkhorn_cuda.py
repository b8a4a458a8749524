"""Sinkhorn GPU paths: compile checks that run anywhere, and `cuda` tests that need a GPU.

- The torch-free CUDA core (csrc/cuda/sinkhorn.cu) compiles with plain ``nvcc -c`` when nvcc is
  on PATH (no GPU, no torch needed).
- The Triton kernels compile for sm_90 through Triton's own compiler and ptxas (no GPU needed;
  the interpreter tests in test_sinkhorn_triton.py cannot catch GPU-only compile errors).
- On a GPU (marker `cuda`): the CUDA extension and Triton against the reference, fused and tiled
  paths, K = 5 in one launch, fp16/bf16 costs, tol semantics, no NaN at eps = 1e-4 x mean cost.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys

import pytest
import torch
from test_sinkhorn import assert_matches, check_backend, make_problem

from medshift_fast import ops
from medshift_fast.ops.reference import sinkhorn_ref

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sk = importlib.import_module("medshift_fast.ops.sinkhorn")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
def test_cuda_core_compiles_with_nvcc(tmp_path):
    src = os.path.join(ROOT, "csrc", "cuda", "sinkhorn.cu")
    cmd = ["nvcc", "-c", "-arch=sm_90", "-std=c++17", "-O3", "--use_fast_math",
           "-I", os.path.join(ROOT, "csrc", "include"), src, "-o", str(tmp_path / "sinkhorn.o")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "warning" not in out.stderr.lower(), out.stderr


_COMPILE_SCRIPT = r"""
import os, sys
os.environ.pop("TRITON_INTERPRET", None)
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import importlib.util
spec = importlib.util.spec_from_file_location("ksk", sys.argv[1])
m = importlib.util.module_from_spec(spec)
spec.loader.exec_module(m)
P = "*fp32"
def comp(fn, sig, consts, warps=4):
    triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts),
                   target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
sig = dict(C="*bf16", LA=P, LB=P, F=P, G=P, LP=P, ERR=P, NIT="*i32", ITERS="*i32", N="i32",
           M="i32", eps="fp32", inv_eps="fp32", max_iter="i32", tol="fp32", check_every="i32",
           HAS_ITERS="constexpr", BLOCK_N="constexpr", BLOCK_M="constexpr")
comp(m._sinkhorn_fused, sig, dict(HAS_ITERS=True, BLOCK_N=32, BLOCK_M=128), 8)
half = dict(N="i32", M="i32", eps="fp32", inv_eps="fp32", BLOCK_N="constexpr",
            BLOCK_M="constexpr")
comp(m._f_update, dict(C="*fp16", LA=P, F=P, G=P, **half), dict(BLOCK_N=16, BLOCK_M=256))
comp(m._g_update, dict(C=P, LB=P, F=P, G=P, **half), dict(BLOCK_N=64, BLOCK_M=64))
comp(m._row_err, dict(C=P, LA=P, F=P, G=P, LP=P, PART=P, N="i32", M="i32", inv_eps="fp32",
                      WRITE="constexpr", BLOCK_N="constexpr", BLOCK_M="constexpr"),
     dict(WRITE=True, BLOCK_N=16, BLOCK_M=256))
for dt, ieee in (("*fp32", True), ("*bf16", False)):
    comp(m._sqdist, dict(X=dt, Y=dt, OUT=P, N="i32", M="i32", D="i32", WIDEN="constexpr",
                         IEEE="constexpr", BLOCK_I="constexpr", BLOCK_J="constexpr",
                         BLOCK_D="constexpr"),
         dict(WIDEN=False, IEEE=ieee, BLOCK_I=64, BLOCK_J=64, BLOCK_D=32))
comp(m._gumbel_argmax, dict(LP=P, OUT="*i64", N="i32", M="i32", seed="i32",
                            BLOCK_N="constexpr", BLOCK_M="constexpr"),
     dict(BLOCK_N=16, BLOCK_M=256))
print("ok")
"""


@pytest.mark.slow
@pytest.mark.triton
def test_triton_kernels_compile_for_sm90():
    """Full Triton -> PTX -> cubin compile for an H100 target, in a fresh process (the test
    session runs Triton in interpreter mode)."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    out = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT,
                          os.path.join(ROOT, "kernels", "sinkhorn.py")],
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


# ------------------------------------------------------------------------------------ on a GPU
def _gpu_backends():
    return ["cuda", pytest.param("triton", marks=pytest.mark.triton)]


def _need(backend):
    if backend == "cuda" and not sk._c_has("cuda"):
        pytest.skip("extension built without CUDA")


GPU_CASES = [  # (K, N, M, eps / mean cost, uniform, max_iter, tol)
    (1, 1, 7, 0.05, True, 20, 0.0),
    (3, 37, 53, 1e-3, False, 100, 0.0),
    (5, 256, 256, 0.05, True, 300, 1e-6),
    (1, 1024, 1024, 0.05, False, 100, 0.0),
    (3, 1500, 1100, 0.05, True, 200, 1e-5),  # beyond the fused limit: tiled path
]


@pytest.mark.cuda
@pytest.mark.parametrize("backend", _gpu_backends())
@pytest.mark.parametrize("K,N,M,rel,uniform,max_iter,tol", GPU_CASES)
def test_gpu_matches_reference(backend, K, N, M, rel, uniform, max_iter, tol):
    _need(backend)
    check_backend(backend, K, N, M, rel, uniform, max_iter, tol, device="cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("backend", _gpu_backends())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_low_precision_and_warm_start(backend, dtype):
    _need(backend)
    check_backend(backend, 3, 100, 77, 0.05, False, 200, 1e-5, dtype=dtype, device="cuda",
                  warm=True)


@pytest.mark.cuda
@pytest.mark.parametrize("path", [1, 2], ids=["fused", "tiled"])
def test_cuda_paths_and_top_up(path):
    _need("cuda")
    cost, eps, a, b = make_problem(3, 300, 200, 0.1, uniform=False)
    cost = cost.clone()
    cost[0] *= 1e-3  # converges long before the others: the fused path tops it up
    cost, a = cost.cuda(), a.cuda()
    b = b.cuda()
    ref = sinkhorn_ref(cost, eps, a, b, max_iter=500, tol=1e-6)
    C, la, lb, f0, g0 = sk._prepare(cost, a, b, None, None)
    lp, f, g, err, stats = torch.ops.medshift_fast.sinkhorn_log(C, la, lb, f0, g0, eps, 500,
                                                                1e-6, 10, path)
    assert_matches(sk._result(cost, lp, f, g, stats[0], err), ref, cost, eps, tol=1e-6)
    torch.cuda.synchronize()


@pytest.mark.cuda
@pytest.mark.parametrize("backend", _gpu_backends())
def test_gpu_tiny_eps_is_finite(backend):
    _need(backend)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(64, 3 * 32 * 32, generator=g).cuda()
    x1 = torch.randn(64, 3 * 32 * 32, generator=g).cuda()
    cost = ops.pairwise_sqdist(x0, x1)
    r = ops.sinkhorn(cost, 1e-4 * float(cost.mean()), max_iter=300, tol=1e-5, backend=backend)
    for t in (r.log_plan, r.f, r.g, r.marginal_error):
        assert torch.isfinite(t).all()
    assert abs(float(r.plan.sum()) - 1) < 1e-2


@pytest.mark.cuda
@pytest.mark.triton
def test_gpu_cost_and_sampling_stay_on_device():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(33, 70, generator=g).cuda()
    x1 = torch.randn(40, 70, generator=g).cuda()
    c = ops.pairwise_sqdist(x0, x1, backend="triton")
    torch.testing.assert_close(c, ops.pairwise_sqdist(x0, x1, backend="reference"), rtol=1e-4,
                               atol=1e-3)
    r = ops.sinkhorn(c, 0.05 * float(c.mean()), backend="auto")
    for mode in ("multinomial", "conditional"):
        i, j = ops.sample_plan(r.log_plan, mode, backend="triton")
        assert i.is_cuda and j.is_cuda and int(j.max()) < 40
