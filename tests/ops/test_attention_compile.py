"""The Triton kernels compile for a real GPU target (sm_90, PTX -> SASS by Triton's own ptxas)
without a GPU: ahead-of-time, in a subprocess with TRITON_INTERPRET=0. This checks the compiled
code path (types, layouts, shared memory) that the interpreter never sees.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from medshift_fast import _backend

_SCRIPT = textwrap.dedent('''
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from medshift_fast.kernels import attention as ka, attention_block as kb

    def build(kernel, ptrs, consts, warps=4, stages=3):
        fn = kernel
        while not isinstance(fn, triton.runtime.jit.JITFunction):
            fn = fn.fn
        floats = {"qk_scale", "scale", "inv_count", "eps"}
        sig = {n: "constexpr" if n in consts else ptrs.get(n, "fp32" if n in floats else "i32")
               for n in fn.arg_names}
        ck = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts),
                            target=GPUTarget("cuda", 90, 32),
                            options={"num_warps": warps, "num_stages": stages})
        assert ck.metadata.shared <= 227 * 1024, (kernel, ck.metadata.shared)

    P, F = "*bf16", "*fp32"
    io = {n: P for n in ("Q", "K", "V", "O", "DO", "DQ", "DK", "DV")}
    io.update(LSE=F, DELTA=F)
    tails = dict(BLOCK_D=64, PRECISION="tf32", EVEN_M=False, EVEN_N=False, EVEN_D=False)
    build(ka._fwd_kernel, io, dict(tails, BLOCK_M=128, BLOCK_N=64))
    build(ka._bwd_delta_kernel, io, dict(BLOCK_M=64, BLOCK_D=64))
    build(ka._bwd_dkdv_kernel, io, dict(tails, BLOCK_M=32, BLOCK_N=128))
    build(ka._bwd_dq_kernel, io, dict(tails, BLOCK_M=128, BLOCK_N=32))
    gemm = dict(A=P, X=P, SA=F, SB=F, BIAS=F, R=F, Y=P)
    build(kb._conv1x1_kernel, gemm, dict(PROLOGUE=True, HAS_BIAS=True, RESIDUAL=True,
                                         PRECISION="tf32", BLOCK_M=64, BLOCK_N=64, BLOCK_K=32))
    build(kb._group_stats_kernel, dict(X=P, MEAN=F, RSTD=F), dict(BLOCK_C=8, BLOCK_N=512))
    print("compiled")
''')


@pytest.mark.triton
@pytest.mark.slow
def test_kernels_compile_for_sm90():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="0")
    res = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True,
                         timeout=600)
    if res.returncode != 0 and "ptxas" in res.stderr and "not found" in res.stderr:
        pytest.skip("Triton's ptxas is not available")
    assert res.returncode == 0 and "compiled" in res.stdout, res.stderr[-3000:]


@pytest.mark.triton
def test_autotune_pruning():
    kern = _backend.import_kernels("attention")
    cfgs = kern._configs([(128, 64, 4, 3), (64, 32, 4, 4), (128, 128, 8, 2)])
    tiles = lambda cs: [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) for c in cs]  # noqa: E731
    bf16, fp32 = torch.empty(1, dtype=torch.bfloat16), torch.empty(1)
    assert tiles(kern._prune(cfgs, {"Q": bf16, "T": 4096})) == [(128, 64), (64, 32), (128, 128)]
    assert tiles(kern._prune(cfgs, {"Q": bf16, "T": 100})) == [(128, 64), (64, 32), (128, 128)]
    assert tiles(kern._prune(cfgs, {"Q": bf16, "T": 40})) == [(64, 32)]
    assert tiles(kern._prune(cfgs, {"Q": bf16, "T": 1})) == [(64, 32)]
    assert tiles(kern._prune(cfgs, {"Q": fp32, "T": 4096})) == [(64, 32)]
