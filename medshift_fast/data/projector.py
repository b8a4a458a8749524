"""Ray sums through the phantom: C-arm view geometry, an exact analytic projector and a voxel one.

Geometry. A C-arm view is (primary angle alpha: LAO > 0 / RAO < 0, rotation about the patient's
z axis; secondary angle beta: cranial > 0 / caudal < 0, about x). In the AP/PA view (0, 0) the ray
runs posterior -> anterior (+y); image columns follow +x, rows run from +z (top) down. The
(virtual) detector lies in the plane through the isocentre, so ``fov`` is in object mm.
``cone``: rays from a point source at distance ``sod`` from the isocentre; ``parallel``: all
rays parallel to the central ray.

Analytic projector. For a ray x(t) = o + t d and an ellipsoid with Q = R A^-2 R^T the chord is
2 sqrt(b^2 - a c) / a with a = d'Qd, b = (o - c)'Q d, c = (o - c)'Q(o - c) - 1. In a cone
beam o is the source (one per view) so a and b are linear in the 9 per-pixel monomials
(d_i d_j, d_i); in a parallel beam d is fixed and b, c are linear in (o_i o_j, o_i, 1). All
primitives and pixels of a view are thus one GEMM (P x 9 by 9 x 2K), then elementwise roots;
clip planes cut the [t0, t1] interval. Computed in float64 (the source is ~700 mm away, the
discriminant cancels).

Voxel projector. ``voxelize`` samples the same phantom on a grid and ``project_volume`` sums
trilinear samples along every ray (``grid_sample``): slower, approximate, but takes any
attenuation volume (a CT, a voxelised surface).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .phantom import Primitive, rotation


@dataclass(frozen=True)
class Geometry:
    """Projection geometry (mm).

    Attributes:
        kind: "cone" or "parallel".
        sod: source-to-isocentre distance (cone beam).
        fov: detector field of view, measured at the isocentre plane.
    """

    kind: str = "cone"
    sod: float = 700.0
    fov: float = 260.0


def view_frame(alpha: float, beta: float) -> np.ndarray:
    """C-arm rotation: columns are the detector u axis, the central-ray direction, the v axis."""
    return rotation(rx=beta) @ rotation(rz=alpha)


def make_rays(views, n: int, geom: Geometry):
    """Per-pixel rays of several views.

    Args:
        views: sequence of (alpha, beta, du, dv): C-arm angles (deg), detector shift (mm).
        n: detector pixels per side (the supersampled size).
        geom: Geometry.

    Returns:
        origins (V, P, 3) float64 (cone: the source repeated), directions (V, P, 3) unit,
        with P = n * n in row-major image order.
    """
    h = geom.fov / n
    c = (np.arange(n) + 0.5) * h - geom.fov / 2
    vv, uu = np.meshgrid(-c, c, indexing="ij")
    O, D = [], []
    for alpha, beta, du, dv in views:
        R = view_frame(alpha, beta)
        pts = (uu.ravel() + du)[:, None] * R[:, 0] + (vv.ravel() + dv)[:, None] * R[:, 2]
        if geom.kind == "cone":
            src = -geom.sod * R[:, 1]
            d = pts - src
            d /= np.linalg.norm(d, axis=1, keepdims=True)
            O.append(np.broadcast_to(src, pts.shape))
            D.append(d)
        elif geom.kind == "parallel":
            O.append(pts)
            D.append(np.broadcast_to(R[:, 1], pts.shape))
        else:
            raise ValueError(f"unknown geometry {geom.kind!r}")
    return torch.from_numpy(np.stack(O)), torch.from_numpy(np.stack(D))


def _quad_monomials(x: torch.Tensor) -> torch.Tensor:
    """(..., 3) -> (..., 10): x_i^2 (3), x_i x_j (3), x_i (3), 1."""
    a, b, c = x.unbind(-1)
    return torch.stack([a * a, b * b, c * c, a * b, a * c, b * c, a, b, c, torch.ones_like(a)],
                       -1)


def _quad_coeffs(Q: np.ndarray, lin: np.ndarray, const: float) -> np.ndarray:
    """Coefficients w with _quad_monomials(x) @ w = x'Qx + lin.x + const."""
    return np.array([Q[0, 0], Q[1, 1], Q[2, 2], 2 * Q[0, 1], 2 * Q[0, 2], 2 * Q[1, 2],
                     lin[0], lin[1], lin[2], const])


def _footprint(p: Primitive, view, geom: Geometry, n: int):
    """Conservative pixel box (r0, r1, c0, c1) of a primitive's shadow (bounding sphere)."""
    R = view_frame(view[0], view[1])
    eu, d0, ev = R[:, 0], R[:, 1], R[:, 2]
    o = -geom.sod * d0 if geom.kind == "cone" else np.zeros(3)
    rad = float(p.axes.max())
    rel = p.center - o
    if geom.kind == "cone":
        depth = rel @ d0
        if depth - rad <= 1e-6:
            return 0, n, 0, n
        scale = geom.sod / depth
        rad_px = rad * geom.sod / (depth - rad)
    else:
        scale, rad_px = 1.0, rad
    h = geom.fov / n
    uc, vc = rel @ eu * scale - view[2], rel @ ev * scale - view[3]
    c0 = int(np.floor((uc - rad_px + geom.fov / 2) / h)) - 1
    c1 = int(np.ceil((uc + rad_px + geom.fov / 2) / h)) + 1
    r0 = int(np.floor((geom.fov / 2 - vc - rad_px) / h)) - 1
    r1 = int(np.ceil((geom.fov / 2 - vc + rad_px) / h)) + 1
    return max(r0, 0), min(r1, n), max(c0, 0), min(c1, n)


def line_integrals(prims: list[Primitive], origins: torch.Tensor, dirs: torch.Tensor,
                   geom: Geometry, views=None) -> torch.Tensor:
    """Exact line integrals of the two basis materials.

    Each primitive is evaluated only inside the (conservative) box of its shadow, so the cost
    is the summed shadow area, not pixels x primitives.

    Args:
        prims: phantom primitives.
        origins, dirs: (V, P, 3) float64 from :func:`make_rays` (P = n * n).
        geom: the Geometry the rays were made with.
        views: the (alpha, beta, du, dv) list given to make_rays (enables the shadow boxes).

    Returns:
        (V, P, 2) float64: [L_soft, L_bone] in mm (density-weighted path lengths), >= 0.
    """
    V, P, _ = origins.shape
    n = int(round(P**0.5))
    out = torch.zeros(V, n, n, 2, dtype=torch.float64)
    for v in range(V):
        if geom.kind == "cone":
            X = _quad_monomials(dirs[v])[:, :9].reshape(n, n, 9)
            s = origins[v, 0].numpy()
        else:
            X = _quad_monomials(origins[v]).reshape(n, n, 10)
            d = dirs[v, 0].numpy()
        for p in prims:
            Q = p.rot @ np.diag(1.0 / p.axes**2) @ p.rot.T
            r0, r1, c0, c1 = (0, n, 0, n) if views is None else _footprint(p, views[v], geom, n)
            if r1 <= r0 or c1 <= c0:
                continue
            Xp = X[r0:r1, c0:c1]
            if geom.kind == "cone":
                rel = s - p.center
                W = np.zeros((9, 2))
                W[:6, 0] = _quad_coeffs(Q, np.zeros(3), 0.0)[:6]  # a = d'Qd
                W[6:9, 1] = Q @ rel  # b = (s - c)'Q d
                ab = Xp @ torch.from_numpy(W)
                a, b = ab[..., 0], ab[..., 1]
                c = float(rel @ Q @ rel - 1.0)
            else:
                Qc = Q @ p.center
                W = np.zeros((10, 2))
                W[:, 0] = _quad_coeffs(Q, -2 * Qc, p.center @ Qc - 1.0)  # c(o)
                W[6:9, 1] = Q @ d
                W[9, 1] = -Qc @ d  # b(o)
                cb = Xp @ torch.from_numpy(W)
                c, b = cb[..., 0], cb[..., 1]
                a = float(d @ Q @ d)
            sq = (b * b - a * c).clamp_(min=0.0).sqrt_()
            if not p.planes:
                chord = sq * (2.0 / a) if isinstance(a, float) else 2.0 * sq / a
            else:
                t0, t1 = (-b - sq) / a, (-b + sq) / a
                for nrm, hh in p.planes:
                    if geom.kind == "cone":
                        nd = Xp[..., 6:9] @ torch.from_numpy(nrm)
                        r = torch.full_like(nd, hh - float(nrm @ s))
                    else:
                        r = hh - Xp[..., 6:9] @ torch.from_numpy(nrm)
                        nd = torch.full_like(r, float(nrm @ d))
                    tb = r / torch.where(nd == 0, torch.ones_like(nd), nd)
                    t1 = torch.where(nd > 0, torch.minimum(t1, tb), t1)
                    t0 = torch.where(nd < 0, torch.maximum(t0, tb), t0)
                    t1 = torch.where((nd == 0) & (r < 0), t0, t1)
                chord = (t1 - t0).clamp_(min=0.0) * (sq > 0)
            out[v, r0:r1, c0:c1] += chord[..., None] * torch.tensor([p.soft, p.bone],
                                                                   dtype=torch.float64)
    return out.reshape(V, P, 2).clamp_(min=0.0)


def voxelize(prims: list[Primitive], n: int, extent: float) -> torch.Tensor:
    """Sample the phantom's densities at the centres of an n^3 grid over [-extent/2, extent/2]^3.

    Returns:
        (2, n, n, n) float32 volume indexed [material, z, y, x] (soft, bone densities).
    """
    h = extent / n
    c = (torch.arange(n, dtype=torch.float64) + 0.5) * h - extent / 2
    vol = torch.zeros(2, n, n, n, dtype=torch.float64)
    for p in prims:
        r = float(p.axes.max())
        lo = np.clip(np.floor((p.center - r + extent / 2) / h).astype(int), 0, n)
        hi = np.clip(np.ceil((p.center + r + extent / 2) / h).astype(int) + 1, 0, n)
        if np.any(hi <= lo):
            continue
        z, y, x = torch.meshgrid(c[lo[2]:hi[2]], c[lo[1]:hi[1]], c[lo[0]:hi[0]], indexing="ij")
        pts = torch.stack([x, y, z], -1)
        M = torch.from_numpy(np.diag(1.0 / p.axes) @ p.rot.T)
        loc = (pts - torch.from_numpy(p.center)) @ M.T
        inside = (loc * loc).sum(-1) <= 1.0
        for nrm, hh in p.planes:
            inside &= pts @ torch.from_numpy(nrm) <= hh
        blk = vol[:, lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]
        blk[0] += p.soft * inside
        blk[1] += p.bone * inside
    return vol.float()


def project_volume(vol: torch.Tensor, extent: float, origins: torch.Tensor, dirs: torch.Tensor,
                   n_steps: int = 256) -> torch.Tensor:
    """Ray sums through a voxel volume by trilinear sampling (batched over views and pixels).

    Args:
        vol: (C, Z, Y, X) attenuation / density volume centred on the isocentre.
        extent: side of the (cubic) volume in mm.
        origins, dirs: (V, P, 3) rays as from :func:`make_rays`.
        n_steps: samples per ray across the volume's bounding sphere.

    Returns:
        (V, P, C) float32 line integrals (units of vol x mm).
    """
    radius = extent * 3**0.5 / 2
    o, d = origins.float(), dirs.float()
    tc = -(o * d).sum(-1, keepdim=True)  # ray parameter of the point closest to the isocentre
    t = torch.linspace(-radius, radius, n_steps + 1)
    t = (t[:-1] + t[1:]) / 2
    dt = float(2 * radius / n_steps)
    V, P, _ = o.shape
    out = torch.empty(V, P, vol.shape[0])
    for v in range(V):
        pts = o[v, :, None] + (tc[v, :, None] + t[None, :, None]) * d[v, :, None]  # (P, S, 3)
        grid = (pts / (extent / 2)).reshape(1, 1, P, n_steps, 3)
        smp = F.grid_sample(vol[None], grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False)  # (1, C, 1, P, S)
        out[v] = smp[0, :, 0].sum(-1).T * dt
    return out
