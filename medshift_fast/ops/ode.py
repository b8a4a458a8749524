"""Fused classifier-free-guidance combine + solver-stage update, dispatched.

    k = v_uncond + w (v_cond - v_uncond);  x_new = x + h k;  acc_new = (acc or x) + c k

Every fixed-step solver (flow/solvers.py) is a sequence of such stages. The kernels read each
input once and write each output once (the eager reference makes about five passes).

Backends:
    cuda: ``torch.ops.medshift_fast.guided_stage_out`` on CUDA tensors (csrc/cuda/guided_stage.cu,
        16-byte vector loads, grid-stride loop on the current stream).
    triton: ``medshift_fast.kernels.ode`` (CUDA tensors; CPU only under TRITON_INTERPRET=1).
    cpp: the same op on CPU tensors (csrc/cpu/guided_stage.cpp; torch's thread pool). ``auto``
        picks it at every size: it beat the reference even for a single element (measured,
        benchmarks/results/guided_stage_cpu.md).
    reference: ``reference.guided_stage_ref``; also used for mixed dtypes, when inputs need
        gradients under ``auto``, and while compiling/exporting under ``auto``.

Kernels need x, v_cond, v_uncond and acc in one dtype (fp32/fp16/bf16) on one device; any
shape and any strides (non-contiguous inputs are made contiguous first). ``out``/``acc_out`` may
be preallocated buffers of any layout and dtype: contiguous ones of the input dtype that do not
partially overlap an input are written directly (``out=x`` and ``acc_out=acc`` included), others
receive a copy of the result.
"""

from __future__ import annotations

import contextlib
import functools

import torch

from .. import _backend
from ..errors import BackendUnavailableError, MedShiftError
from .reference import guided_stage_ref, guided_velocity_ref

__all__ = ["guided_stage", "guided_velocity", "supported_backends"]

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class _ShapeError(MedShiftError, ValueError):
    """Inputs of different shapes (a MedShiftError that is also a ValueError)."""


def guided_velocity(v_cond: torch.Tensor, v_uncond: torch.Tensor | None, w: float) -> torch.Tensor:
    """v = v_uncond + w (v_cond - v_uncond) (v_cond when v_uncond is None)."""
    return guided_velocity_ref(v_cond, v_uncond, w)


# ------------------------------------------------------------------------------ kernel launchers
@functools.cache
def _ext_op():
    """``torch.ops.medshift_fast.guided_stage_out`` from the built extension, or None."""
    if _backend.extension() is None:
        return None
    try:
        op = torch.ops.medshift_fast.guided_stage_out
    except (AttributeError, RuntimeError):  # an extension built before this op existed
        return None

    def _fake(x, v_cond, v_uncond, acc, w, h, c, x_out, acc_out):  # mutates its outputs only
        return None

    try:  # lets torch.compile / torch.export trace the op
        torch.library.register_fake("medshift_fast::guided_stage_out", _fake)
    except RuntimeError:  # already registered (e.g. the module was reloaded)
        pass
    return op


def _launch(name, x, v_cond, v_uncond, acc, w, h, c, x_out, acc_out) -> None:
    """Run backend ``name`` on contiguous tensors of one dtype, writing x_out (and acc_out)."""
    if name == "triton":
        kern = _backend.import_kernels("ode")
        ctx = torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()
        with ctx:
            kern.guided_stage(x, v_cond, v_uncond, acc, w, h, c, x_out, acc_out)
    else:  # cpp and cuda: one op, routed by device
        _ext_op()(x, v_cond, v_uncond, acc, w, h, c, x_out, acc_out)


def _target(buf: torch.Tensor | None, like: torch.Tensor, nbytes: int, reads, writes
            ) -> torch.Tensor:
    """``buf`` itself when the kernel may write it directly, else a fresh contiguous tensor.

    Direct writing needs the input layout and dtype and no partial overlap: a buffer may be
    exactly an input (in place: every element is loaded before it is stored) but must not
    overlap an input shifted, nor another output. ``reads``/``writes`` are (begin, end) spans
    of contiguous tensors on ``like``'s device; every tensor here spans ``nbytes``.
    """
    if (
        buf is None
        or buf.dtype != like.dtype
        or buf.device != like.device
        or buf.shape != like.shape
        or not buf.is_contiguous()
        or buf.requires_grad
    ):
        return torch.empty_like(like, memory_format=torch.contiguous_format)
    b0 = buf.data_ptr()
    b1 = b0 + nbytes
    for r0, r1 in reads:
        if r0 < b1 and b0 < r1 and r0 != b0:
            return torch.empty_like(like, memory_format=torch.contiguous_format)
    for r0, r1 in writes:
        if r0 < b1 and b0 < r1:
            return torch.empty_like(like, memory_format=torch.contiguous_format)
    return buf


def _kernel_stage(name, x, v_cond, v_uncond, w, h, acc, c, out, acc_out, write_acc):
    """Prepare contiguous inputs and outputs, launch, and copy into non-direct buffers."""
    xc, vcc = x.contiguous(), v_cond.contiguous()
    vuc = None if v_uncond is None else v_uncond.contiguous()
    accc = None if acc is None else acc.contiguous()
    nbytes = xc.numel() * xc.element_size()
    reads = [(p, p + nbytes) for p in (t.data_ptr() for t in (xc, vcc, vuc, accc) if t is not None)]
    x_new = _target(out, xc, nbytes, reads, ())
    if write_acc:
        p = x_new.data_ptr()
        acc_new = _target(acc_out, xc, nbytes, reads, [(p, p + nbytes)] if nbytes else [])
    else:
        acc_new = None
    _launch(name, xc, vcc, vuc, accc, float(w), float(h), float(c), x_new, acc_new)
    if out is not None and x_new is not out:
        out.copy_(x_new)
        x_new = out
    if acc_new is not None and acc_out is not None and acc_new is not acc_out:
        acc_out.copy_(acc_new)
        acc_new = acc_out
    return x_new, acc_new


class _GuidedStageFn(torch.autograd.Function):
    """Kernel forward; backward of the linear map (no tensors saved).

    With g_k = h dL/dx_new + c dL/dacc_new: dL/dv_cond = w g_k, dL/dv_uncond = (1 - w) g_k
    (dL/dv_cond = g_k unguided), dL/dx = dL/dx_new (+ dL/dacc_new when acc_new starts from x),
    dL/dacc = dL/dacc_new.
    """

    @staticmethod
    def forward(ctx, x, v_cond, v_uncond, acc, w, h, c, write_acc, name):
        ctx.coef = (float(w), float(h), float(c))
        ctx.flags = (v_uncond is not None, acc is not None, write_acc)
        ctx.dtypes = (x.dtype, v_cond.dtype)
        x_new, acc_new = _kernel_stage(name, x, v_cond, v_uncond, w, h, acc, c, None, None,
                                       write_acc)
        return x_new, acc_new

    @staticmethod
    def backward(ctx, g_x, g_acc):
        w, h, c = ctx.coef
        has_uncond, has_acc, write_acc = ctx.flags
        x_dtype, v_dtype = ctx.dtypes
        g_x = g_x.float() if g_x is not None else None
        g_acc = g_acc.float() if (write_acc and g_acc is not None) else None
        g_k = None
        if g_x is not None:
            g_k = h * g_x
        if g_acc is not None:
            g_k = c * g_acc if g_k is None else g_k + c * g_acc
        d_x = g_x
        if g_acc is not None and not has_acc:
            d_x = g_acc if d_x is None else d_x + g_acc
        d_vc = d_vu = None
        if g_k is not None:
            d_vc = (w * g_k if has_uncond else g_k).to(v_dtype)
            d_vu = ((1.0 - w) * g_k).to(v_dtype) if has_uncond else None
        d_acc = g_acc.to(x_dtype) if (has_acc and g_acc is not None) else None
        d_x = d_x.to(x_dtype) if d_x is not None else None
        return d_x, d_vc, d_vu, d_acc, None, None, None, None, None


# -------------------------------------------------------------------------------- public function
def _compiling() -> bool:
    if torch.compiler.is_compiling():
        return True
    try:
        return bool(torch.onnx.is_in_onnx_export())
    except AttributeError:  # pragma: no cover
        return False


def supported_backends(
    x: torch.Tensor,
    v_cond: torch.Tensor,
    v_uncond: torch.Tensor | None = None,
    acc: torch.Tensor | None = None,
) -> tuple[str, ...]:
    """Backends that implement guided_stage for these inputs (before availability/device checks)."""
    tensors = [t for t in (x, v_cond, v_uncond, acc) if t is not None]
    ok = x.dtype in _KERNEL_DTYPES and all(
        t.dtype == x.dtype and t.device == x.device for t in tensors
    )
    if not ok:
        return ("reference",)
    names = ["triton", "reference"]
    if _ext_op() is not None:
        names[:0] = ["cuda", "cpp"]
    return tuple(names)


def guided_stage(
    x: torch.Tensor,
    v_cond: torch.Tensor,
    v_uncond: torch.Tensor | None,
    w: float,
    h: float,
    acc: torch.Tensor | None = None,
    c: float = 0.0,
    out: torch.Tensor | None = None,
    acc_out: torch.Tensor | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One solver stage with classifier-free guidance, fused.

    With k = v_uncond + w (v_cond - v_uncond) (k = v_cond when v_uncond is None):
        x_new = x + h k;   acc_new = (acc if given else x) + c k   (when acc is given or c != 0)

    Args:
        x: (B, ...) state.
        v_cond: (B, ...) conditional velocity.
        v_uncond: (B, ...) unconditional velocity, or None (no guidance).
        w: guidance scale.
        h: step coefficient of x_new.
        acc: (B, ...) accumulator, or None.
        c: accumulator coefficient.
        out: buffer for x_new (may be x), or None to allocate.
        acc_out: buffer for acc_new (may be acc), or None to allocate.
        backend: auto | cuda | triton | cpp | reference (None: the context's backend).

    Returns:
        (x_new, acc_new or None): x_new in x's dtype (``out`` when given), acc_new in acc's dtype
        (x's when acc is None; ``acc_out`` when given). Arithmetic is fp32.

    Raises:
        MedShiftError (also a ValueError): the tensors' shapes differ.
        BackendUnavailableError: an explicitly requested backend cannot run these inputs.
    """
    for name_, t in (("v_cond", v_cond), ("v_uncond", v_uncond), ("acc", acc)):
        if t is not None and t.shape != x.shape:
            raise _ShapeError(
                f"guided_stage: {name_} has shape {tuple(t.shape)} but x has {tuple(x.shape)}; "
                "pass tensors of one shape"
            )
    write_acc = acc is not None or c != 0.0
    preferred = backend if backend is not None else _backend.current_backend()
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, v_cond, v_uncond, acc)
    )
    if (backend is None or preferred == "auto") and (needs_grad or _compiling()):
        supported: tuple[str, ...] = ("reference",)  # the kernels have no autograd
    else:
        supported = supported_backends(x, v_cond, v_uncond, acc)
    if backend in ("cpp", "cuda") and _backend.is_available(backend) and _ext_op() is None:
        raise BackendUnavailableError(
            "guided_stage: the compiled extension predates this op; rebuild it with `make ext`"
        )
    name = _backend.resolve("guided_stage", x.device.type, supported, backend)

    if name == "reference":
        x_new, acc_new = guided_stage_ref(x, v_cond, v_uncond, w, h, acc, c)
        if out is not None:
            out.copy_(x_new)
            x_new = out
        if acc_new is not None and acc_out is not None:
            acc_out.copy_(acc_new)
            acc_new = acc_out
        return x_new, acc_new
    if needs_grad:
        x_new, acc_new = _GuidedStageFn.apply(x, v_cond, v_uncond, acc, w, h, c, write_acc, name)
        if out is not None:
            out.copy_(x_new)
            x_new = out
        if acc_new is not None and acc_out is not None:
            acc_out.copy_(acc_new)
            acc_new = acc_out
        return x_new, acc_new
    return _kernel_stage(name, x, v_cond, v_uncond, w, h, acc, c, out, acc_out, write_acc)
