"""Ray sums through the phantom: C-arm view geometry, an exact analytic projector and a voxel one.

Geometry. A C-arm view is (primary angle alpha: LAO > 0 / RAO < 0, rotation about the patient's
z axis; secondary angle beta: cranial > 0 / caudal < 0, about x). In the AP/PA view (0, 0) the ray
runs posterior -> anterior (+y); image columns follow +x, rows run from +z (top) down. The
(virtual) detector lies in the plane through the isocentre, so ``fov`` is in object mm.
``cone``: rays from a point source at distance ``sod`` from the isocentre; ``parallel``: all
rays parallel to the central ray.

Analytic projector. For a ray x(t) = o + t g and an ellipsoid with Q = R A^-2 R^T the chord is
|g| 2 sqrt(b^2 - a c) / a with a = g'Qg, b = (o - c)'Q g, c = (o - c)'Q(o - c) - 1. In a cone
beam o is the source and g = u e_u + v e_v + sod e_d is linear in the detector point (u, v); in
a parallel beam g = e_d and o is linear in (u, v). Either way a, b, c are quadratic polynomials
in (u, v), evaluated by broadcasting over the pixel grid: a few multiply-adds per pixel and
primitive, only inside the primitive's shadow box. Clip planes cut the [t0, t1] interval.
Computed in float64 (the source is ~700 mm away, the discriminant cancels).

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


def _poly2(k, U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """k[0] U^2 + k[1] V^2 + k[2] U V + k[3] U + k[4] V + k[5] on the grid U (1, w) x V (h, 1)."""
    out = (k[1] * V + k[4]) * V + k[5] + (k[0] * U + k[3]) * U
    return out.addcmul_(V, U, value=float(k[2])) if k[2] != 0.0 else out


def _view_polys(p: Primitive, R: np.ndarray, geom: Geometry):
    """Coefficients (uu, vv, uv, u, v, 1) of a(u, v), b(u, v), c(u, v) for the ray of detector
    point (u, v): cone x = s + t g with g = u e_u + v e_v + sod e_d (t in units of |g|),
    parallel x = u e_u + v e_v + t e_d."""
    Q = p.rot @ np.diag(1.0 / p.axes**2) @ p.rot.T
    eu, ed, ev = R[:, 0], R[:, 1], R[:, 2]
    quu, qvv, quv = eu @ Q @ eu, ev @ Q @ ev, eu @ Q @ ev
    if geom.kind == "cone":
        L = geom.sod
        w = -L * ed - p.center
        a = (quu, qvv, 2 * quv, 2 * L * (eu @ Q @ ed), 2 * L * (ev @ Q @ ed), L * L * (ed @ Q @ ed))
        b = (0.0, 0.0, 0.0, w @ Q @ eu, w @ Q @ ev, L * (w @ Q @ ed))
        c = (0.0, 0.0, 0.0, 0.0, 0.0, w @ Q @ w - 1.0)
    else:
        qc = Q @ p.center
        a = (0.0, 0.0, 0.0, 0.0, 0.0, ed @ Q @ ed)
        b = (0.0, 0.0, 0.0, eu @ Q @ ed, ev @ Q @ ed, -(qc @ ed))
        c = (quu, qvv, 2 * quv, -2 * (qc @ eu), -2 * (qc @ ev), p.center @ qc - 1.0)
    planes = []
    for nrm, h in p.planes:
        if geom.kind == "cone":  # n.s + t n.g <= h
            nd = (0.0, 0.0, 0.0, nrm @ eu, nrm @ ev, geom.sod * (nrm @ ed))
            r = (0.0, 0.0, 0.0, 0.0, 0.0, h + geom.sod * (nrm @ ed))
        else:  # n.o + t n.e_d <= h
            nd = (0.0, 0.0, 0.0, 0.0, 0.0, nrm @ ed)
            r = (0.0, 0.0, 0.0, -(nrm @ eu), -(nrm @ ev), h)
        planes.append((_f(nd), _f(r)))
    return _f(a), _f(b), _f(c), planes


def _f(k) -> tuple[float, ...]:
    return tuple(float(x) for x in k)


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


def line_integrals(prims: list[Primitive], views, n: int, geom: Geometry,
                   cull: bool = True) -> torch.Tensor:
    """Exact line integrals of the two basis materials on an n x n detector.

    a, b, c of the chord formula are quadratic polynomials in the detector coordinates (u, v),
    so each primitive costs a few broadcast multiply-adds over the pixels of its shadow box.

    Args:
        prims: phantom primitives.
        views: sequence of (alpha, beta, du, dv) as for :func:`make_rays`.
        n: detector pixels per side.
        geom: Geometry.
        cull: evaluate each primitive only inside its (conservative) shadow box.

    Returns:
        (V, n, n, 2) float64: [L_soft, L_bone] in mm (density-weighted path lengths), >= 0.
    """
    h = geom.fov / n
    cc = (torch.arange(n, dtype=torch.float64) + 0.5) * h - geom.fov / 2
    out = torch.zeros(len(views), 2, n, n, dtype=torch.float64)
    for vi, (alpha, beta, du, dv) in enumerate(views):
        R = view_frame(alpha, beta)
        U_all, V_all = (cc + du)[None, :], (-cc + dv)[:, None]
        if geom.kind == "cone":
            G_all = torch.sqrt(U_all * U_all + V_all * V_all + geom.sod**2)  # |g|
        for p in prims:
            r0, r1, c0, c1 = _footprint(p, (alpha, beta, du, dv), geom, n) if cull else (0, n,
                                                                                         0, n)
            if r1 <= r0 or c1 <= c0:
                continue
            U, V = U_all[:, c0:c1], V_all[r0:r1]
            ka, kb, kc, planes = _view_polys(p, R, geom)
            a, b, c = _poly2(ka, U, V), _poly2(kb, U, V), _poly2(kc, U, V)
            sq = (b * b).sub_(a * c).clamp_(min=0.0).sqrt_()
            if not planes:
                chord = sq.mul_(2.0).div_(a)
            else:
                t0, t1 = (-b - sq) / a, (sq - b).div_(a)
                for knd, kr in planes:
                    nd, r = _poly2(knd, U, V), _poly2(kr, U, V)
                    tb = r / torch.where(nd == 0, torch.ones_like(nd), nd)
                    t1 = torch.where(nd > 0, torch.minimum(t1, tb), t1)
                    t0 = torch.where(nd < 0, torch.maximum(t0, tb), t0)
                    t1 = torch.where((nd == 0) & (r < 0), t0, t1)
                chord = (t1 - t0).clamp_(min=0.0) * (sq > 0)
            if geom.kind == "cone":
                chord = chord * G_all[r0:r1, c0:c1]
            if p.soft:
                out[vi, 0, r0:r1, c0:c1].add_(chord, alpha=p.soft)
            if p.bone:
                out[vi, 1, r0:r1, c0:c1].add_(chord, alpha=p.bone)
    return out.permute(0, 2, 3, 1).clamp_(min=0.0).contiguous()


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
