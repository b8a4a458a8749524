"""The U-Net self-attention block, dispatched, with optional fusions on the Triton path.

    h = GroupNorm(x);  qkv = W_qkv h + b_qkv;  o = softmax(q k^T / sqrt(D)) v per head;
    out = x + W_proj o + b_proj

for x (B, C, H, W) over T = H W tokens. qkv's 3C channels are ordered (3, heads, D)
(``qkv_layout="3hd"``: q = qkv[:, :C], split into heads) or (heads, 3, D) (``"h3d"``, the
"legacy" order of guided-diffusion / torchcfm's QKVAttentionLegacy). Heads are strided views of
qkv, never copies.

Backends:
    reference: the eager block with torch ops and SDPA (the CPU path and the export path).
    triton (picked by ``auto`` for CUDA tensors): the eager block with the Triton flash attention
        (``ops.attention``), plus the fusions named in ``fuse``:
        "norm": GroupNorm statistics by a Triton reduction, and the normalisation applied in the
            qkv GEMM's operand prologue (the normalised activation never exists in memory; the
            backward recomputes it).
        "proj": the output projection as a Triton GEMM whose epilogue adds the bias and the
            residual x.
    The default is no fusion (``DEFAULT_FUSE``): no GPU benchmark has yet shown that either
    fusion pays, so the choice is unverified (see benchmarks/bench_attention.py).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from .. import _backend
from .attention import _device_ctx, _exporting, attention

__all__ = ["attention_block", "attention_block_ref", "DEFAULT_FUSE", "FUSIONS"]

FUSIONS = ("norm", "proj")
DEFAULT_FUSE: tuple[str, ...] = ()  # unverified on a GPU: keep the simplest path
QKV_LAYOUTS = ("3hd", "h3d")
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ------------------------------------------------------------------------------------ helpers
def _split_heads(qkv: torch.Tensor, num_heads: int, layout: str):
    """(B, 3C, T) -> q, k, v, each a (B, heads, T, D) strided view (token-contiguous)."""
    B, C3, T = qkv.shape
    d = C3 // (3 * num_heads)
    if layout == "3hd":
        parts = qkv.view(B, 3, num_heads, d, T).unbind(1)
    else:
        parts = qkv.view(B, num_heads, 3, d, T).unbind(2)
    return tuple(p.transpose(-1, -2) for p in parts)


def _merge_heads(o: torch.Tensor) -> torch.Tensor:
    """(B, heads, T, D) -> (B, C, T); a view when o is token-contiguous."""
    B, nh, T, d = o.shape
    return o.transpose(-1, -2).reshape(B, nh * d, T)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    dev = x.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return x.dtype


def _parse_fuse(fuse: str | Iterable[str] | None) -> tuple[str, ...]:
    if fuse is None:
        return DEFAULT_FUSE
    if isinstance(fuse, str):
        fuse = {"none": (), "all": FUSIONS}.get(fuse, (fuse,))
    out = tuple(dict.fromkeys(fuse))
    bad = [f for f in out if f not in FUSIONS]
    if bad:
        raise ValueError(f"attention_block: unknown fusion(s) {bad}; choose from {FUSIONS}")
    return out


# ---------------------------------------------------------------------------------- reference
def _conv1x1_weight(w: torch.Tensor, cout: int, cin: int) -> torch.Tensor:
    """A (cout, cin) or (cout, cin, 1, 1) weight as a 1x1 conv kernel. 4-D weights (nn.Conv2d's)
    pass through untouched, so exporters never see a reshape built from activation shapes."""
    return w if w.dim() == 4 else w.reshape(cout, cin, 1, 1)


def attention_block_ref(
    x, norm_weight, norm_bias, num_groups, qkv_weight, qkv_bias, proj_weight, proj_bias,
    num_heads, eps=1e-5, qkv_layout="3hd", attn_backend="reference",
) -> torch.Tensor:
    """Eager block: GroupNorm -> 1x1 conv -> attention -> 1x1 conv -> + x (standard ops only).

    Args: as :func:`attention_block`; ``attn_backend`` is passed to ``ops.attention``.

    Returns:
        (B, C, H, W) tensor.
    """
    B, C, H, W = x.shape
    h = F.group_norm(x, num_groups, norm_weight, norm_bias, eps)
    qkv = F.conv2d(h, _conv1x1_weight(qkv_weight, 3 * C, C), qkv_bias)
    q, k, v = _split_heads(qkv.reshape(B, 3 * C, H * W), num_heads, qkv_layout)
    o = attention(q, k, v, backend=attn_backend)
    o = _merge_heads(o).reshape(B, C, H, W)
    return x + F.conv2d(o, _conv1x1_weight(proj_weight, C, C), proj_bias)


# --------------------------------------------------------------------------- fused pieces (Triton)
class _NormQKV(torch.autograd.Function):
    """qkv = W (GroupNorm(x)) + b with the normalisation in the GEMM prologue.

    Backward recomputes GroupNorm(x) (fp32) instead of having stored it.
    """

    @staticmethod
    def forward(ctx, x, gamma, beta, weight, bias, num_groups, eps, cdt):
        kb = _backend.import_kernels("attention_block")
        B, C, T = x.shape
        with _device_ctx(x):
            mean, rstd = kb.group_stats(x, num_groups, eps)
            cg = C // num_groups
            a = rstd.repeat_interleave(cg, 1)
            if gamma is not None:
                a = a * gamma.float()
            s = -mean.repeat_interleave(cg, 1) * a
            if beta is not None:
                s = s + beta.float()
            qkv = kb.conv1x1(weight.to(cdt), x, scale=a, shift=s, bias=bias, out_dtype=cdt)
        ctx.save_for_backward(x, gamma, beta, weight, bias)
        ctx.num_groups, ctx.eps, ctx.cdt = num_groups, eps, cdt
        return qkv

    @staticmethod
    def backward(ctx, dqkv):
        x, gamma, beta, weight, bias = ctx.saved_tensors
        cdt = ctx.cdt
        g = dqkv.to(cdt)
        with torch.enable_grad():
            xd = x.detach().requires_grad_(ctx.needs_input_grad[0])
            gd = None if gamma is None else gamma.detach().requires_grad_(ctx.needs_input_grad[1])
            bd = None if beta is None else beta.detach().requires_grad_(ctx.needs_input_grad[2])
            gd32 = None if gd is None else gd.float()
            bd32 = None if bd is None else bd.float()
            h = F.group_norm(xd.float(), ctx.num_groups, gd32, bd32, ctx.eps).to(cdt)
        dw = torch.einsum("bot,bct->oc", g, h.detach()).to(weight.dtype)
        db = None if bias is None else dqkv.sum((0, 2), dtype=torch.float32).to(bias.dtype)
        dx = dgamma = dbeta = None
        wanted = [t for t in (xd, gd, bd) if t is not None and t.requires_grad]
        if wanted:
            dh = torch.matmul(weight.to(cdt).t(), g)
            grads = iter(torch.autograd.grad(h, wanted, dh))
            dx = next(grads) if xd.requires_grad else None
            dgamma = next(grads) if gd is not None and gd.requires_grad else None
            dbeta = next(grads) if bd is not None and bd.requires_grad else None
        return dx, dgamma, dbeta, dw, db, None, None, None


class _ProjResidual(torch.autograd.Function):
    """out = x + W o + b with bias and residual added in the GEMM epilogue."""

    @staticmethod
    def forward(ctx, o, weight, bias, x, cdt):
        kb = _backend.import_kernels("attention_block")
        with _device_ctx(x):
            out = kb.conv1x1(weight.to(cdt), o, bias=bias, residual=x,
                             out_dtype=torch.promote_types(cdt, x.dtype))
        ctx.save_for_backward(o, weight, bias)
        ctx.cdt, ctx.x_dtype = cdt, x.dtype
        return out

    @staticmethod
    def backward(ctx, dout):
        o, weight, bias = ctx.saved_tensors
        g = dout.to(ctx.cdt)
        do = torch.matmul(weight.to(ctx.cdt).t(), g).to(o.dtype)
        dw = torch.einsum("bot,bct->oc", g, o.to(ctx.cdt)).to(weight.dtype)
        db = None if bias is None else dout.sum((0, 2), dtype=torch.float32).to(bias.dtype)
        return do, dw, db, dout.to(ctx.x_dtype), None


def _attention_block_triton(
    x, norm_weight, norm_bias, num_groups, qkv_weight, qkv_bias, proj_weight, proj_bias,
    num_heads, eps, qkv_layout, fuse,
) -> torch.Tensor:
    B, C, H, W = x.shape
    T = H * W
    cdt = _compute_dtype(x)
    x3 = x.reshape(B, C, T)
    if "norm" in fuse:
        qkv = _NormQKV.apply(x3, norm_weight, norm_bias, qkv_weight.reshape(3 * C, C), qkv_bias,
                             num_groups, eps, cdt)
    else:
        h = F.group_norm(x, num_groups, norm_weight, norm_bias, eps)
        qkv = F.conv2d(h, _conv1x1_weight(qkv_weight, 3 * C, C), qkv_bias).reshape(B, 3 * C, T)
    q, k, v = _split_heads(qkv, num_heads, qkv_layout)
    o = _merge_heads(attention(q, k, v, backend="triton"))
    if "proj" in fuse:
        out = _ProjResidual.apply(o, proj_weight.reshape(C, C), proj_bias, x3, cdt)
        return out.reshape(B, C, H, W)
    return x + F.conv2d(o.reshape(B, C, H, W), _conv1x1_weight(proj_weight, C, C), proj_bias)


# -------------------------------------------------------------------------------- public function
def attention_block(
    x: torch.Tensor,
    norm_weight: torch.Tensor | None,
    norm_bias: torch.Tensor | None,
    num_groups: int,
    qkv_weight: torch.Tensor,
    qkv_bias: torch.Tensor | None,
    proj_weight: torch.Tensor,
    proj_bias: torch.Tensor | None,
    num_heads: int,
    eps: float = 1e-5,
    backend: str | None = None,
    *,
    fuse: str | Iterable[str] | None = None,
    qkv_layout: str = "3hd",
) -> torch.Tensor:
    """U-Net self-attention block ``x + proj(attention(qkv(GroupNorm(x))))``.

    Args:
        x: (B, C, H, W) activations.
        norm_weight, norm_bias: (C,) GroupNorm affine (or None).
        num_groups: GroupNorm groups (divides C).
        qkv_weight: (3C, C) or (3C, C, 1) or (3C, C, 1, 1); qkv_bias: (3C,) or None.
        proj_weight: (C, C) or (C, C, 1) or (C, C, 1, 1); proj_bias: (C,) or None.
        num_heads: heads (divides C; head dim D = C / num_heads <= 128 for the Triton path).
        eps: GroupNorm epsilon.
        backend: reference | triton | auto (None: the context's backend).
        fuse: fusions for the Triton path, a subset of ("norm", "proj"), "all" or "none";
            None means DEFAULT_FUSE. Ignored when ``auto`` resolves to the reference.
        qkv_layout: "3hd" (q, k, v blocks of C channels, each split into heads) or "h3d"
            (per head: its q, k, v).

    Returns:
        (B, C, H, W) tensor (x's dtype, or the autocast dtype promoted with it).

    Raises:
        ValueError: inconsistent shapes, unknown fusion or layout, or fusions asked for with
            the reference backend.
        BackendUnavailableError: an explicitly requested backend cannot run these inputs.
    """
    if x.dim() != 4:
        raise ValueError(f"attention_block: x must be (B, C, H, W), got {tuple(x.shape)}")
    C = x.shape[1]
    if num_groups <= 0 or C % num_groups or num_heads <= 0 or C % num_heads:
        raise ValueError(
            f"attention_block: channels {C} must be divisible by num_groups ({num_groups}) "
            f"and num_heads ({num_heads})"
        )
    if qkv_weight.numel() != 3 * C * C or proj_weight.numel() != C * C:
        raise ValueError(
            f"attention_block: expected qkv_weight with {3 * C}x{C} and proj_weight with {C}x{C} "
            f"entries, got {tuple(qkv_weight.shape)} and {tuple(proj_weight.shape)}"
        )
    if qkv_layout not in QKV_LAYOUTS:
        raise ValueError(f"attention_block: qkv_layout must be one of {QKV_LAYOUTS}")
    fusions = _parse_fuse(fuse)
    ok = x.dtype in _DTYPES and C // num_heads <= 128 and not _exporting()
    supported = ("triton", "reference") if ok else ("reference",)
    name = _backend.resolve("attention_block", x.device.type, supported, backend)
    args = (x, norm_weight, norm_bias, num_groups, qkv_weight, qkv_bias, proj_weight, proj_bias,
            num_heads, eps)
    if name == "reference":
        explicit = backend is not None or _backend.current_backend() != "auto"
        if explicit and fuse is not None and fusions:
            raise ValueError("attention_block: fusions run only on the triton backend")
        return attention_block_ref(*args, qkv_layout=qkv_layout, attn_backend="reference")
    return _attention_block_triton(*args, qkv_layout, fusions)
