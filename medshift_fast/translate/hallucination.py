"""Hallucination measure: new compact structures in a translation that its source does not have.

Distribution-matching translators can invent features (Cohen, Luck, Honari, MICCAI 2018: tumours
added or removed by CycleGAN). For one (source, output) pair, :func:`hallucination_stats`:

1. **Same blur, same intensities.** Both images are low-passed by a Gaussian of std ``rho``
   pixels (it takes the bulk of the noise out of the source, and a source and an output of equal
   sharpness stay equal), and the low-passed source is mapped onto the low-passed output's
   intensities by quantile matching (a monotone map f, 256 quantiles): m = f(G_rho * source),
   o = G_rho * output. The identity gives o = m exactly: zero.
2. **Blob detector.** The scale-normalised Laplacian of Gaussian L_σ = σ²∇²G_σ at ``scales``
   (pixels; a blob of radius ~σ√2 answers most at σ), of o and of m; the change is L_σo − L_σm.
   It is band-pass: global intensity and slowly varying changes (scatter, heel) do not answer.
3. **Beyond the noise.** The noise per pixel is hypot(n_src, n_out): n_src is the source's
   noise carried through the intensity map (f applied to the unfiltered source), n_out the
   output's, each the larger of a signal-binned map (robust 1.4826·MAD of Immerkær's second
   difference per bin of the local signal: quantum noise depends on the signal) and a spatial
   one (the local mean absolute residual: clipping and edges). The unit at scale σ is that noise
   times the LoG's gain for ``rho``-low-passed white noise, times max(1, robust std of the
   change in those units) -- correlated noise and dense changes of texture (a translation that
   only adds or removes grain everywhere) raise their own threshold instead of being counted
   blob by blob. A pixel is a candidate when |change| > k units.
4. **New, not changed.** It counts only where the output has a structure (|L_σo| > k units, so
   a structure the output *lost* is not an invention) and the source has none of that sign
   within ``NEAR``·σ (blurring moves a structure's response outwards by about its width): its
   strongest same-sign response there is below ``support`` of the output's, or within the noise
   (< K_NEAR units). Sharpening or blurring an existing edge is not an
   invention; a blob on a smooth anatomical ramp is. Pixels whose filter support reaches a
   clipped plateau of the source (its minimum or maximum value on >= 16 pixels: saturation, no
   noise to judge by) are left out.
5. **Count and area.** The union over scales of the pixels found, grouped into 8-connected
   components: count, area (pixels and fraction of the image) and the largest z (change in
   units).

What it is not: a detector of removed structures (it counts additions), of changes on the
source's existing edges, or of inventions larger than the largest scale; its sensitivity is
measured by ``scripts/metric_numbers.py`` (docs/evaluation.md).

Everything is torch (no SciPy), so ``medshift translate`` can record it per image.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import MedShiftError

SCALES = (1.0, 1.5, 2.0, 3.0)  # LoG scales in pixels (blob radii ~1.4-4.2 px)
K = 4.0  # detection threshold in noise stds
SUPPORT = 0.5  # a response the source has at >= this fraction nearby is not new
K_NEAR = 3.0  # ... unless that source response is within this many noise stds
NEAR = 2.0  # "nearby": within this many σ (blurring moves a structure's response outwards)
RHO = 1.0  # low-pass of the source before the intensity match (pixels)
NOISE_BINS = 16  # signal bins of the local noise map
WINDOW = 4.0  # Gaussian window (pixels) of the spatial noise map


def _gauss_kernels(sigma: float, dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(g, g', g''): the sampled 1-D Gaussian (normalised) and its first and second
    derivatives."""
    r = max(1, math.ceil(4.0 * sigma))
    k = torch.arange(-r, r + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (k / sigma) ** 2)
    g = g / g.sum()
    d1 = -g * k / sigma**2
    d2 = g * (k**2 - sigma**2) / sigma**4
    d2 = d2 - d2.mean()  # zero DC: flat regions answer exactly 0
    return g.to(dtype), d1.to(dtype), d2.to(dtype)


def _sep(x: torch.Tensor, ky: torch.Tensor, kx: torch.Tensor) -> torch.Tensor:
    """Separable 2-D filter of (N, 1, H, W) with reflect padding."""
    ry, rx = ky.numel() // 2, kx.numel() // 2
    h, w = x.shape[-2:]
    mode = "reflect" if ry < h and rx < w else "replicate"
    y = F.pad(x, (rx, rx, ry, ry), mode=mode)
    y = F.conv2d(y, kx.view(1, 1, 1, -1))
    return F.conv2d(y, ky.view(1, 1, -1, 1))


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """G_sigma * x for (N, 1, H, W) (reflect padding)."""
    g, _, _ = _gauss_kernels(sigma, x.dtype)
    return _sep(x, g, g)


def log_response(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Scale-normalised Laplacian of Gaussian σ²(∂²_x + ∂²_y)(G_σ * x) of (N, 1, H, W)."""
    g, _, d2 = _gauss_kernels(sigma, x.dtype)
    return sigma**2 * (_sep(x, g, d2) + _sep(x, d2, g))


def log_white_gain(sigma: float, rho: float = 0.0) -> float:
    """‖σ²∇²G_σ * G_rho‖₂: the std of :func:`log_response` of ``rho``-low-passed unit white
    noise (away from borders)."""
    r = math.ceil(4.0 * sigma) + math.ceil(4.0 * rho) + 2
    delta = torch.zeros(1, 1, 2 * r + 1, 2 * r + 1, dtype=torch.float64)
    delta[..., r, r] = 1.0
    x = gaussian_blur(delta, rho) if rho > 0 else delta
    return float(log_response(x, sigma).square().sum().sqrt())


class _Spectrum:
    """An (H, W) image's reflect-padded 2-D real FFT, so that many separable symmetric filters
    cost one inverse FFT each: the same result as :func:`_sep` with reflect padding (the pad
    covers every kernel's radius, so nothing wraps around), ~4x cheaper than direct 1-D
    convolutions on a megapixel image."""

    def __init__(self, x: torch.Tensor, pad: int):
        h, w = x.shape
        mode = "reflect" if pad < min(h, w) else "replicate"
        xp = F.pad(x.view(1, 1, h, w), (pad, pad, pad, pad), mode=mode)[0, 0]
        self.size, self.pad, self.hw = tuple(xp.shape), pad, (h, w)
        self.f = torch.fft.rfft2(xp)

    def transfer(self, terms) -> torch.Tensor:
        """Sum over (ky, kx) of the transfer function of ky ⊗ kx: (n_y, n_x // 2 + 1)."""
        ny, nx = self.size
        return sum(_transfer1d(ky, ny, False)[:, None] * _transfer1d(kx, nx, True)[None, :]
                   for ky, kx in terms)

    def apply(self, transfer: torch.Tensor) -> torch.Tensor:
        """The filtered (H, W) image."""
        y = torch.fft.irfft2(self.f * transfer.to(self.f.real.dtype), s=self.size)
        (h, w), p = self.hw, self.pad
        return y[p:p + h, p:p + w]


def _transfer1d(k: torch.Tensor, n: int, half: bool) -> torch.Tensor:
    """DFT (length n, real: k is symmetric) of a centred odd-length kernel; the first
    n // 2 + 1 bins when ``half`` (the rfft axis)."""
    r = k.numel() // 2
    if r >= n:
        raise MedShiftError(f"a kernel of radius {r} does not fit a padded axis of {n}")
    buf = torch.zeros(n, dtype=torch.float64)
    buf[:r + 1] = k[r:].double()
    if r:
        buf[n - r:] = k[:r].double()
    t = torch.fft.fft(buf).real
    return t[:n // 2 + 1] if half else t


def _log_terms(sigma: float) -> list:
    """The separable terms of σ²∇²G_σ."""
    g, _, d2 = _gauss_kernels(sigma, torch.float64)
    return [(g, sigma**2 * d2), (sigma**2 * d2, g)]


def _blur_terms(sigma: float) -> list:
    g, _, _ = _gauss_kernels(sigma, torch.float64)
    return [(g, g)]


def _box_max(x: torch.Tensor, r: int) -> torch.Tensor:
    """The maximum of (H, W) ``x`` over the (2r + 1)² box around each pixel (separable: rows,
    then columns, each a batch of 1-D pools -- the CPU pools a batch in parallel and a single
    2-D plane on one thread, ~20x slower)."""
    h, w = x.shape
    k = 2 * r + 1
    y = F.max_pool1d(x.reshape(h, 1, w), k, 1, r).view(h, w).t().contiguous()
    return F.max_pool1d(y.view(w, 1, h), k, 1, r).view(w, h).t()


def _robust_std(v: torch.Tensor) -> float:
    v = v.flatten()
    if v.numel() > 1_000_000:  # the MAD of a strided subsample is as good and O(n) cheaper
        v = v[:: v.numel() // 1_000_000 + 1]
    med = v.median()
    return 1.4826 * float((v - med).abs().median())


def _plateaus(x: torch.Tensor, min_pixels: int = 16) -> torch.Tensor:
    """(H, W) bool: pixels at the image's minimum or maximum value when at least ``min_pixels``
    share it (a clipped or saturated plateau, where the noise is cut off)."""
    out = torch.zeros(x.shape, dtype=torch.bool)
    for v in (x.min(), x.max()):
        eq = x == v
        if int(eq.sum()) >= min_pixels:
            out |= eq
    return out


def second_difference(x: torch.Tensor) -> torch.Tensor:
    """Immerkær's noise residual ([1, −2, 1]ᵀ ⊗ [1, −2, 1]) * x / 6 on the valid grid.

    Args:
        x: (N, 1, H, W) images (H, W >= 3).

    Returns:
        (N, 1, H − 2, W − 2): white noise of std s gives std s (the kernel's norm is 6);
        anything affine along x or along y gives 0.
    """
    d2 = torch.tensor([1.0, -2.0, 1.0], device=x.device, dtype=x.dtype)
    return F.conv2d(x, torch.outer(d2, d2).view(1, 1, 3, 3)) / 6.0


def binned_std(r: np.ndarray, s: np.ndarray, edges: np.ndarray):
    """Robust std (1.4826·MAD) of residuals ``r`` binned by signal ``s``.

    Args:
        r: (P,) residuals.
        s: (P,) signal of the same pixels.
        edges: (B + 1,) increasing edges; values outside them fall in no bin.

    Returns:
        (std, median signal, count), each (B,) (nan where a bin is empty).
    """
    idx = np.searchsorted(edges, s, side="right") - 1
    idx[s == edges[-1]] = len(edges) - 2
    nb = len(edges) - 1
    std, sig, cnt = np.full(nb, np.nan), np.full(nb, np.nan), np.zeros(nb, dtype=np.int64)
    order = np.argsort(idx, kind="stable")
    bounds = np.searchsorted(idx[order], np.arange(nb + 1))
    for b in range(nb):
        sel = order[bounds[b]:bounds[b + 1]]
        cnt[b] = sel.size
        if sel.size:
            rb = r[sel]
            std[b] = 1.4826 * float(np.median(np.abs(rb - np.median(rb))))
            sig[b] = float(np.median(s[sel]))
    return std, sig, cnt


def _diff2(x: torch.Tensor) -> torch.Tensor:
    """:func:`second_difference` of (1, 1, H, W), replicate-padded back to (H, W)."""
    return F.pad(second_difference(x), (1, 1, 1, 1), mode="replicate")[0, 0]


def local_noise(residuals: list[torch.Tensor], signal: torch.Tensor, bins: int = NOISE_BINS,
                max_pixels: int = 262_144) -> torch.Tensor:
    """A per-pixel noise std map: the largest robust std of the ``residuals`` in the pixel's
    signal bin (equal-count bins of ``signal``), interpolated between bin centres.

    Args:
        residuals: (H, W) noise residuals (e.g. :func:`_diff2`) of the images compared.
        signal: (H, W) local signal that the noise depends on.
        bins: signal bins.
        max_pixels: estimate the bins on a strided subsample of at most this many pixels.

    Returns:
        (H, W) noise std (at least 1e-9), in the dtype of ``signal``.
    """
    step = signal.numel() // max_pixels + 1
    s = signal.flatten()[::step].numpy()
    edges = np.quantile(s, np.linspace(0.0, 1.0, bins + 1))
    edges = np.maximum.accumulate(edges + np.arange(bins + 1) * 1e-12)
    table, centre = None, None
    for r in residuals:
        std, sig, _ = binned_std(r.flatten()[::step].numpy(), s, edges)
        table = std if table is None else np.fmax(table, std)
        centre = sig if centre is None else centre
    ok = np.isfinite(table) & np.isfinite(centre)
    if not ok.any():
        return torch.full(signal.shape, 1e-9, dtype=signal.dtype)
    return _interp(signal, centre[ok], table[ok]).clamp_min(1e-9)


def _interp(x: torch.Tensor, xp: np.ndarray, fp: np.ndarray) -> torch.Tensor:
    """``np.interp(x, xp, fp)`` in torch (parallel), returned in ``x``'s dtype: linear between
    the points, the end values outside them. In float64 like NumPy: points that differ only in
    the 12th digit (``quantile_match``'s strictly increasing quantiles of a clipped plateau)
    must stay distinct."""
    xp_c = torch.from_numpy(np.ascontiguousarray(xp, dtype=np.float64))
    fp_c = torch.from_numpy(np.ascontiguousarray(fp, dtype=np.float64))
    if xp_c.numel() == 1:
        return torch.full(x.shape, float(fp_c[0]), dtype=x.dtype)
    xd = x.to(torch.float64).contiguous()
    i = torch.searchsorted(xp_c, xd, right=True).clamp(1, xp_c.numel() - 1)
    x0, x1, y0, y1 = xp_c[i - 1], xp_c[i], fp_c[i - 1], fp_c[i]
    span = x1 - x0
    t = torch.where(span > 0, (xd - x0) / torch.where(span > 0, span, 1), 0).clamp(0, 1)
    return (y0 + t * (y1 - y0)).to(x.dtype)


def _spatial_noise(residuals: list[torch.Tensor], pad: int,
                   window: float = WINDOW) -> torch.Tensor:
    """The noise std around each pixel: sqrt(π/2)·(G_window * |r|) (the mean absolute residual
    of Gaussian noise is std·sqrt(2/π)), the largest over ``residuals``. Edges and clipped
    regions make it locally larger or smaller than the signal-binned map: it catches both."""
    out = None
    for r in residuals:
        spec = _Spectrum(r.abs(), pad)
        v = math.sqrt(math.pi / 2) * spec.apply(spec.transfer(_blur_terms(window)))
        out = v if out is None else torch.maximum(out, v)
    return out


def quantile_match(a: torch.Tensor, b: torch.Tensor, levels: int = 256) -> torch.Tensor:
    """Map the intensities of ``a`` onto those of ``b`` (monotone, piecewise linear through
    ``levels`` matching quantiles)."""
    q = np.linspace(0.0, 1.0, levels)
    step_a, step_b = a.numel() // 262_144 + 1, b.numel() // 262_144 + 1  # subsample big ones
    qa = np.quantile(a.double().flatten()[::step_a].numpy(), q)
    qb = np.quantile(b.double().flatten()[::step_b].numpy(), q)
    qa = qa + np.arange(levels) * 1e-12  # strictly increasing for interp on flat runs
    return _interp(a, qa, qb)


def label_components(mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """8-connected components of a (H, W) bool mask by label propagation (torch only).

    Returns:
        ((H, W) int64 labels, 0 = background; number of components).
    """
    if not bool(mask.any()):
        return torch.zeros(mask.shape, dtype=torch.int64), 0
    h, w = mask.shape
    m = mask.view(1, 1, h, w)
    lab = torch.arange(1, h * w + 1, dtype=torch.float64).view(1, 1, h, w) * m
    while True:  # each pass spreads the largest label one pixel; stops when nothing changes
        new = F.max_pool2d(lab, 3, stride=1, padding=1) * m
        if torch.equal(new, lab):
            break
        lab = new
    lab = lab.view(h, w).to(torch.int64)
    n = int(torch.unique(lab[mask]).numel())
    return lab, n


def _as_image(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    t = t.detach().cpu()
    while t.dim() > 2 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 2:
        raise MedShiftError(f"hallucination_stats: {name} must be one grayscale image (H, W) or "
                            f"(1, 1, H, W), got shape {tuple(t.shape)}")
    if min(t.shape) < 8:
        raise MedShiftError(f"hallucination_stats: {name} of {tuple(t.shape)} pixels is too "
                            "small (needs at least 8 x 8)")
    t = t.float()  # float32 filtering: ~10x faster than float64, and exact enough for noise
    if not bool(torch.isfinite(t).all()):
        raise MedShiftError(f"hallucination_stats: {name} contains NaN or Inf")
    return t


def hallucination_stats(source, output, *, scales=SCALES, k: float = K,
                        support: float = SUPPORT, rho: float = RHO) -> dict:
    """New compact structures in ``output`` that ``source`` does not have beyond its noise.

    Args:
        source: (H, W) (or (1, 1, H, W)) source image, tensor or array, any intensity scale.
        output: its translation, same shape.
        scales: LoG scales in pixels.
        k: detection threshold in noise stds.
        support: a blob is new only where the source's strongest same-sign response within
            ~σ is below this fraction of the output's.
        rho: low-pass std of the source before the intensity match (pixels; 0: none).

    Returns:
        {"count": int, "area_px": int, "area_fraction": float, "max_z": float,
         "source_noise": float (median local noise of the matched source, output units),
         "k": k} — see the module docstring.
    """
    hit, max_z, noise = hallucination_mask(source, output, scales=scales, k=k,
                                           support=support, rho=rho)
    _, count = label_components(hit)
    area = int(hit.sum())
    return {"count": count, "area_px": area, "area_fraction": area / float(hit.numel()),
            "max_z": max_z, "source_noise": noise, "k": float(k)}


def hallucination_mask(source, output, *, scales=SCALES, k: float = K,
                       support: float = SUPPORT, rho: float = RHO):
    """The pixels :func:`hallucination_stats` counts (same arguments).

    Returns:
        ((H, W) bool mask of the detected pixels, the largest z, the median local noise of the
        matched source in output units).
    """
    s, o = _as_image(source, "source"), _as_image(output, "output")
    if s.shape != o.shape:
        raise MedShiftError(f"hallucination_stats: source {tuple(s.shape)} and output "
                            f"{tuple(o.shape)} must have the same shape")
    if not scales or any(not (sc > 0) for sc in scales) or not (k > 0 and 0 < support <= 1):
        raise MedShiftError(f"hallucination_stats: scales and k must be > 0 and support in "
                            f"(0, 1], got {scales}, k={k}, support={support}")
    h, w = s.shape
    pad = max(math.ceil(4 * max(scales)) + math.ceil(4 * rho), math.ceil(4 * WINDOW)) + 2
    s_spec, o_spec = _Spectrum(s, pad), _Spectrum(o, pad)
    g_rho = o_spec.transfer(_blur_terms(rho)) if rho > 0 else 1.0
    s_lp = s_spec.apply(g_rho).view(1, 1, h, w) if rho > 0 else s.view(1, 1, h, w)
    o_lp = o_spec.apply(g_rho).view(1, 1, h, w) if rho > 0 else o.view(1, 1, h, w)
    m = quantile_match(s_lp, o_lp)  # the low-passed source in the output's intensities
    m_spec = _Spectrum(m[0, 0], pad)
    r_src = _diff2(quantile_match(s.view(1, 1, h, w), o_lp))  # the source's noise, mapped
    r_out = _diff2(o.view(1, 1, h, w))
    n_src = torch.maximum(local_noise([r_src], m[0, 0]), _spatial_noise([r_src], pad))
    n_out = torch.maximum(local_noise([r_out], m[0, 0]), _spatial_noise([r_out], pad))
    noise = torch.hypot(n_src, n_out)  # the two images' noises are independent
    clipped = _plateaus(s).float()
    hit = torch.zeros(h, w, dtype=torch.bool)
    max_z = 0.0
    for sc in scales:
        t_log = m_spec.transfer(_log_terms(sc))
        l_o, l_m = o_spec.apply(t_log * g_rho), m_spec.apply(t_log)
        unit = log_white_gain(sc, rho) * noise
        unit = unit * max(1.0, _robust_std((l_o - l_m) / unit))  # see the module docstring
        z = (l_o - l_m).abs() / unit
        rad = max(1, math.ceil(NEAR * sc))
        sign = torch.sign(l_o)
        near = torch.maximum(  # the source's strongest same-sign response nearby
            _box_max(l_m, rad) * (sign > 0), _box_max(-l_m, rad) * (sign < 0))
        # new: the output has a structure there (not only lost one), and the source has none
        # of that sign nearby -- below ``support`` of it, or within its noise (< K_NEAR units)
        new = (l_o.abs() > k * unit) & ((near < support * l_o.abs()) | (near < K_NEAR * unit))
        r2 = math.ceil(2 * sc)  # the LoG's support reaches a clipped plateau: no noise to judge
        new &= _box_max(clipped, r2) == 0
        z = torch.where(new, z, torch.zeros_like(z))
        max_z = max(max_z, float(z.max()))
        hit |= z > k
    return hit, max_z, float(n_src.median())


def hallucination_batch(sources: torch.Tensor, outputs: torch.Tensor, **kwargs) -> list[dict]:
    """:func:`hallucination_stats` of every pair of two (N, 1, H, W) batches."""
    if sources.shape != outputs.shape or sources.dim() != 4:
        raise MedShiftError(f"need two (N, 1, H, W) batches of the same shape, got "
                            f"{tuple(sources.shape)} and {tuple(outputs.shape)}")
    return [hallucination_stats(sources[i], outputs[i], **kwargs)
            for i in range(sources.shape[0])]
