"""Workarounds for Triton 3.6 interpreter bugs, shared by every kernel module (CPU test mode).

``TRITON_INTERPRET=1`` runs the kernels with numpy on the CPU (how CI tests them). Three bugs
of that interpreter are patched here, once, for every module that imports this one; compiled
GPU kernels are never touched:

1. A scalar is a shape-(1,) array and ``int()`` of it fails with numpy >= 2.4, which breaks
   ``range(0, N, BLOCK)`` with a runtime bound (triton-lang/triton#9171, fixed upstream).
2. ``tl.dot`` on bf16 multiplies the raw uint16 storage. bf16 operands are widened to fp32
   first, which is exact: a GPU bf16 MMA also forms exact products with fp32 accumulation.
3. fp32 -> bf16 casts truncate; the GPU rounds to nearest even (done here through torch).
"""

from __future__ import annotations

__all__ = ["patch_interpreter"]


def patch_interpreter() -> None:
    """Install the workarounds (idempotent; a no-op unless called in interpreter mode)."""
    import numpy as np
    import torch
    import triton.language as tl
    from triton.runtime import interpreter

    if getattr(interpreter, "_medshift_patched", False):
        return
    original_patch = interpreter._patch_lang_tensor

    def patch_lang_tensor(tensor, scope):
        original_patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    original_dot = interpreter.InterpreterBuilder.create_dot

    def widen(h):
        if h.dtype == tl.bfloat16:
            data = (h.data.astype(np.uint32) << np.uint32(16)).view(np.float32)
            return interpreter.TensorHandle(data, tl.float32)
        return h

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return original_dot(self, widen(a), widen(b), d, input_precision, max_num_imprecise_acc)

    original_cast = interpreter.InterpreterBuilder.cast_impl

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            data = torch.from_numpy(np.ascontiguousarray(src.data, dtype=np.float32))
            data = data.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
            return interpreter.TensorHandle(data, dst_type.scalar)
        return original_cast(self, src, dst_type)

    interpreter._patch_lang_tensor = patch_lang_tensor
    interpreter.InterpreterBuilder.create_dot = create_dot
    interpreter.InterpreterBuilder.cast_impl = cast_impl
    interpreter._medshift_patched = True
