"""ops.attention: the Triton flash attention (forward, dq/dk/dv) against the fp32 reference.

On the CPU the Triton kernels run under TRITON_INTERPRET=1 (tests/conftest.py) at tiny shapes;
the `cuda` tests repeat the comparison at U-Net shapes (T up to 4096) on a GPU:
    MEDSHIFT_TEST_GPU=1 MEDSHIFT_FAST_TRITON_AUTOTUNE=0 pytest tests/ops -m cuda
Rule (STYLE.md, flash-attention's): in fp16/bf16 the kernel's error against the fp32 reference
(computed from the same rounded inputs) is at most 2x the error of plain PyTorch math in that
dtype (q k^T, softmax, p v: the einsum form) + a small atol.
"""

from __future__ import annotations

import pytest
import torch
from utils import TOL

from medshift_fast import _backend, ops
from medshift_fast.errors import BackendUnavailableError
from medshift_fast.ops.reference import attention_ref

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
_ATOL_LOWP = {torch.float16: 1e-3, torch.bfloat16: 5e-3}  # the rule's small additive slack


def _make(shape, dtype, device, token_major=False, seed=0):
    """q, k, v, dO with ~unit entries; token_major gives strided (B, H, D, T)-memory views."""
    g = torch.Generator().manual_seed(seed)
    B, H, T, D = shape
    ts = []
    for _ in range(4):
        x = torch.randn(B, H, D, T, generator=g) if token_major else torch.randn(B, H, T, D,
                                                                               generator=g)
        x = x.to(device=device, dtype=dtype)
        ts.append(x.transpose(-1, -2) if token_major else x)
    return ts


def _plain(q, k, v):
    """The einsum form in the inputs' dtype (what flash-attention's tests call upcast=False)."""
    s = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    return torch.matmul(torch.softmax(s, dim=-1), v)


def _fwd_bwd(fn, q, k, v, do, upcast=False):
    ins = [t.detach().float() if upcast else t.detach() for t in (q, k, v)]
    ins = [t.requires_grad_() for t in ins]
    o = fn(*ins)
    grads = torch.autograd.grad(o, ins, do.float() if upcast else do)
    return [o.float(), *(g.float() for g in grads)]


def check_against_reference(shape, dtype, device, token_major=False):
    q, k, v, do = _make(shape, dtype, device, token_major)
    ref = _fwd_bwd(attention_ref, q, k, v, do, upcast=True)  # fp32 math on the rounded inputs
    got = _fwd_bwd(lambda *a: ops.attention(*a, backend="triton"), q, k, v, do)
    names = ("out", "dq", "dk", "dv")
    if dtype == torch.float32:
        rtol, atol = TOL[dtype]
        for name, a, b in zip(names, got, ref):
            torch.testing.assert_close(a, b, rtol=rtol, atol=atol,
                                       msg=lambda m, n=name: f"{n}: {m}")
        return
    plain = _fwd_bwd(_plain, q, k, v, do)  # plain PyTorch math in the low-precision dtype
    for name, a, p, b in zip(names, got, plain, ref):
        err_k = (a - b).abs().max().item()
        err_t = (p - b).abs().max().item()
        assert err_k <= 2 * err_t + _ATOL_LOWP[dtype], (name, err_k, err_t)


# ------------------------------------------------------------------------ CPU (interpreter)
@pytest.mark.triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("D", [32, 64])
@pytest.mark.parametrize("T", [1, 17, 64])
def test_triton_matches_reference(T, D, dtype):
    check_against_reference((1, 2, T, D), dtype, "cpu")


@pytest.mark.triton
@pytest.mark.parametrize("shape", [(2, 1, 33, 40), (1, 1, 9, 128)])
def test_triton_padded_head_dim_and_strided_inputs(shape):
    """D not a power of two (padded, masked) / D = 128; token-contiguous strided q, k, v."""
    check_against_reference(shape, torch.float32, "cpu", token_major=True)


@pytest.mark.triton
def test_triton_logsumexp_and_layout():
    kern = _backend.import_kernels("attention")
    q, k, v, _ = _make((1, 2, 17, 32), torch.float32, "cpu", token_major=True)
    o, lse = kern.attention_fwd(q, k, v, 0.3)
    expected = torch.logsumexp(q @ k.transpose(-1, -2) * 0.3, dim=-1)
    torch.testing.assert_close(lse, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(o, attention_ref(q, k, v, 0.3), rtol=1e-4, atol=1e-4)
    assert o.stride(-2) == 1  # token-contiguous like q: merging heads back to (B, C, T) is a view


def test_auto_on_cpu_uses_reference_and_explicit_errors():
    q, k, v, _ = _make((1, 2, 5, 8), torch.float64, "cpu")
    torch.testing.assert_close(ops.attention(q, k, v), attention_ref(q, k, v))
    if _backend.is_available("triton"):
        with pytest.raises(BackendUnavailableError):  # fp64 has no Triton kernel
            ops.attention(q, k, v, backend="triton")
        big = torch.randn(1, 1, 4, 160)  # D > 128
        with pytest.raises(BackendUnavailableError):
            ops.attention(big, big, big, backend="triton")
    with pytest.raises(ValueError):
        ops.attention(q, k[:, :, :3], v)


# ------------------------------------------------------------------------------------ GPU
def _gpu_compiled():
    if _backend.triton_interpret():
        pytest.skip("TRITON_INTERPRET=1: set MEDSHIFT_TEST_GPU=1 to compile the Triton kernels")


@pytest.mark.cuda
@pytest.mark.triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [
    (2, 16, 256, 32), (4, 8, 1024, 64), (1, 4, 4096, 32), (1, 2, 4096, 64), (3, 2, 1000, 128),
    (2, 3, 77, 40), (1, 1, 1, 64),
])
def test_triton_matches_reference_cuda(shape, dtype):
    _gpu_compiled()
    check_against_reference(shape, dtype, "cuda")
    check_against_reference(shape, dtype, "cuda", token_major=True)


def test_export_resolves_to_reference():
    """While torch.export traces (also under torch.onnx.export), only the reference is offered."""
    import importlib

    mod = importlib.import_module("medshift_fast.ops.attention")
    seen = []

    class M(torch.nn.Module):
        def forward(self, q):
            seen.append(mod.supported_backends(q, q, q))
            return ops.attention(q, q, q)

    q = torch.randn(1, 2, 5, 8)
    assert "triton" in mod.supported_backends(q, q, q)
    ep = torch.export.export(M(), (q,))
    assert seen and all(s == ("reference",) for s in seen)
    assert any("scaled_dot_product_attention" in str(n.target) for n in ep.graph.nodes)


@pytest.mark.triton
def test_triton_under_autocast_runs_in_autocast_dtype():
    q, k, v, _ = _make((1, 2, 17, 32), torch.float32, "cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o = ops.attention(q, k, v, backend="triton")
        r = ops.attention(q, k, v, backend="reference")
    assert o.dtype == r.dtype == torch.bfloat16
    torch.testing.assert_close(o.float(), r.float(), rtol=5e-2, atol=2e-2)
