"""A procedural 3-D skull phantom made of (optionally plane-clipped) ellipsoids.

The attenuation volume is a sum of primitives, each an ellipsoid with additive densities for two
basis materials: soft tissue (water, 1.0 g/cm^3 per unit) and cortical bone (ICRU-44,
1.92 g/cm^3 per unit). Shells (scalp, the skull's outer table / diploe / inner table, the maxilla)
are nested ellipsoids with opposite signs, like the Shepp-Logan phantom; air cavities subtract
the soft tissue they displace. Two materials suffice for a polychromatic beam: per ray only the
two line integrals L_soft and L_bone are needed, whatever the number of energy bins.

World frame (mm): x = patient left -> right, y = posterior -> anterior, z = inferior -> superior;
the skull centre is near the origin (the C-arm isocentre).

Per-subject variation (a numpy Generator): head size and shape, table/diploe thickness, sinus
sizes (frontal sinus sometimes absent), orbit position, jaw shape, missing teeth, spine curve,
diploic lacunae.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Primitive:
    """An ellipsoid {x : |A^-1 R^T (x - c)| <= 1} intersected with half-spaces n.x <= h.

    Attributes:
        center: (3,) mm.
        axes: (3,) semi-axes in mm.
        rot: (3, 3) rotation; its columns are the ellipsoid's axes in world coordinates.
        soft: added soft-tissue density (units of water).
        bone: added bone density (units of cortical bone).
        planes: list of (n (3,), h) half-spaces n.x <= h (at most 2).
        name: for debugging / the phantom summary.
    """

    center: np.ndarray
    axes: np.ndarray
    rot: np.ndarray
    soft: float
    bone: float
    planes: list = field(default_factory=list)
    name: str = ""


def rotation(rx: float = 0.0, ry: float = 0.0, rz: float = 0.0) -> np.ndarray:
    """R = Rz(rz) Ry(ry) Rx(rx), angles in degrees."""
    ax, ay, az = np.deg2rad([rx, ry, rz])
    rxm = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    rym = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rzm = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rzm @ rym @ rxm


def _p(center, axes, soft=0.0, bone=0.0, rot=None, planes=(), name=""):
    return Primitive(np.asarray(center, float), np.asarray(axes, float),
                     np.eye(3) if rot is None else np.asarray(rot, float), float(soft),
                     float(bone), [(np.asarray(n, float), float(h)) for n, h in planes], name)


def sample_anatomy(rng: np.random.Generator) -> dict:
    """Draw one subject's anatomical parameters (all in mm / degrees / fractions)."""
    u = rng.uniform
    s = u(0.92, 1.08)
    return {
        "scale": s,
        "skull_axes": [70 * s * u(0.95, 1.05), 92 * s * u(0.95, 1.05), 76 * s * u(0.95, 1.05)],
        "scalp": u(4.0, 7.0),
        "t_outer": u(1.5, 2.5),
        "t_diploe": u(2.0, 5.0),
        "t_inner": u(1.0, 2.0),
        "diploe_bone": u(0.35, 0.55),
        "frontal_sinus": [0.0 if u() < 0.15 else u(8, 16), u(4, 7), u(8, 14)],
        "maxillary_sinus": [u(11, 16), u(13, 18), u(13, 19)],
        "sphenoid_sinus": u(8, 13),
        "orbit_sep": u(28, 34),
        "jaw_width": u(0.66, 0.78),
        "jaw_tilt": u(-22, -10),
        "missing_teeth": sorted(rng.choice(16, size=int(rng.integers(0, 4)), replace=False)
                                .tolist()),
        "spine_curve": u(-6, 6),
        "petrous_angle": u(38, 50),
        "lacunae": [[u(-1, 1), u(-1, 1), u(0.0, 1.0), u(2, 5)] for _ in range(8)],
    }


def build_phantom(an: dict) -> list[Primitive]:
    """Primitives of one subject's head from ``sample_anatomy`` parameters."""
    s = an["scale"]
    ax, ay, az = an["skull_axes"]
    c0 = np.array([0.0, -5.0 * s, 25.0 * s])
    zc = c0[2]
    P = []
    # scalp + skull vault: shells as nested ellipsoids (outer table / diploe / inner table / brain)
    sc = an["scalp"]
    P.append(_p(c0, [ax + sc, ay + sc, az + sc], soft=1.0, name="scalp"))
    t1, t2, t3, fd = an["t_outer"], an["t_diploe"], an["t_inner"], an["diploe_bone"]
    P.append(_p(c0, [ax, ay, az], soft=-1.0, bone=1.0, name="outer_table"))
    P.append(_p(c0, [ax - t1, ay - t1, az - t1], soft=1 - fd, bone=fd - 1.0, name="diploe"))
    d = t1 + t2
    P.append(_p(c0, [ax - d, ay - d, az - d], soft=fd - 1, bone=1.0 - fd, name="inner_table"))
    d += t3
    P.append(_p(c0, [ax - d, ay - d, az - d], soft=1.04, bone=-1.0, name="brain"))
    # diploic lacunae: low-density pockets inside the vault (per-subject texture)
    for i, (fx, fy, fz, r) in enumerate(an["lacunae"]):
        dirv = np.array([fx, fy, fz + 0.3])
        dirv /= np.linalg.norm(dirv)
        rr = np.array([ax, ay, az]) - t1 - t2 / 2
        pos = c0 + dirv / np.sqrt(np.sum((dirv / rr) ** 2))
        P.append(_p(pos, [r, r, r * 0.6], soft=0.4 * fd, bone=-0.4 * fd, name=f"lacuna{i}"))
    # skull base: petrous ridges (dense), clivus/sella, orbital roofs
    pa = an["petrous_angle"]
    zb = zc - 0.42 * az
    for side in (-1, 1):
        P.append(_p([side * 0.32 * ax, -0.12 * ay, zb], [30 * s, 7 * s, 8 * s], soft=-1.04,
                    bone=1.1, rot=rotation(rz=side * pa), name="petrous"))
    P.append(_p([0, 0.05 * ay, zb - 4], [9 * s, 18 * s, 10 * s], soft=-0.5, bone=0.6,
                rot=rotation(rx=-35), name="clivus"))
    P.append(_p([0, 0.55 * ay, zc - 0.30 * az], [0.55 * ax, 0.32 * ay, 3.0], soft=-1.04,
                bone=0.8, rot=rotation(rx=-12), name="orbital_roof"))
    # face soft tissue (below the brain) and facial skeleton
    zf = zc - 0.95 * az
    P.append(_p([0, 0.50 * ay, zf], [0.78 * ax, 0.55 * ay, 0.62 * az], soft=1.0,
                planes=[((0, 0, 1), zc - 0.35 * az)], name="face"))
    P.append(_p([0, 0.62 * ay, zf - 5], [0.52 * ax, 0.34 * ay, 0.36 * az], soft=-1.0, bone=0.9,
                planes=[((0, 0, 1), zc - 0.4 * az)], name="maxilla"))
    P.append(_p([0, 0.62 * ay, zf - 5], [0.52 * ax - 3, 0.34 * ay - 3, 0.36 * az - 3], soft=1.0,
                bone=-0.9, planes=[((0, 0, 1), zc - 0.4 * az)], name="maxilla_in"))
    ms = an["maxillary_sinus"]
    for side in (-1, 1):
        P.append(_p([side * 20 * s, 0.64 * ay, zf + 4], ms, soft=-1.0, name="maxillary_sinus"))
    P.append(_p([0, 0.78 * ay, zf + 8], [7 * s, 22 * s, 22 * s], soft=-1.0, name="nasal_cavity"))
    sp = an["sphenoid_sinus"]
    P.append(_p([0, 0.18 * ay, zc - 0.62 * az], [sp, sp, 0.8 * sp], soft=-1.04, name="sphenoid"))
    fs = an["frontal_sinus"]
    if fs[0] > 0:
        # an air pocket behind the frontal bone, above the orbits (absent in ~15 % of people)
        y_fs = ay - (t1 + t2 + t3) - fs[1]
        P.append(_p([0, y_fs, zc - 0.15 * az], fs, soft=-1.04, name="frontal_sinus"))
    osep = an["orbit_sep"] * s
    for side in (-1, 1):
        oc = [side * osep, 0.80 * ay, zc - 0.48 * az]
        P.append(_p(oc, [17 * s, 16 * s, 16 * s], soft=-1.0, bone=1.0, name="orbit_rim",
                    planes=[((0, -1, 0), -(0.80 * ay - 6))]))
        P.append(_p(oc, [15 * s, 14 * s, 14 * s], soft=1.0, bone=-1.0, name="orbit_rim_in",
                    planes=[((0, -1, 0), -(0.80 * ay - 6))]))
        P.append(_p([side * 0.80 * ax, 0.40 * ay, zc - 0.72 * az], [5 * s, 26 * s, 5 * s],
                    soft=-1.0, bone=0.9, name="zygomatic_arch"))
    # mandible: U-shaped band (outer minus inner ellipsoid, anterior part) + rami
    jw, jt = an["jaw_width"], an["jaw_tilt"]
    zm = zc - 1.45 * az
    jr = rotation(rx=jt)
    cut = [((0, -1, 0), -(0.05 * ay))]
    mc = [0, 0.08 * ay, zm]
    P.append(_p(mc, [jw * ax, 0.78 * ay, 14 * s], soft=-1.0, bone=1.0, rot=jr, planes=cut,
                name="mandible"))
    P.append(_p(mc, [jw * ax - 9, 0.78 * ay - 9, 14 * s], soft=1.0, bone=-1.0, rot=jr,
                planes=cut, name="mandible_in"))
    for side in (-1, 1):
        P.append(_p([side * (jw * ax - 5), 0.02 * ay, zm + 30 * s], [5 * s, 13 * s, 32 * s],
                    soft=-1.0, bone=0.9, rot=rotation(rx=-12), name="ramus"))
    # teeth: 8 per arch along the dental arch, a few missing per subject
    zo = zm + 22 * s
    k = 0
    for arch, dz in (("upper", 8.0), ("lower", -8.0)):
        for i in range(8):
            frac = (i + 0.5) / 8 * 2 - 1  # -1..1 left to right along the arch
            th = frac * np.pi / 2 * 0.85
            if k not in an["missing_teeth"]:
                pos = [jw * ax * 0.78 * np.sin(th), 0.08 * ay + 0.70 * ay * np.cos(th), zo + dz]
                big = 1.0 + 0.5 * abs(frac)  # molars are larger
                P.append(_p(pos, [3.2 * big, 3.6 * big, 8.0], soft=-1.0, bone=1.45,
                            rot=rotation(rz=-np.rad2deg(th)), name=f"tooth_{arch}"))
            k += 1
    # neck, airway and cervical spine (C1-C5) with a per-subject lordosis
    zn = zc - 1.2 * az
    P.append(_p([0, -0.12 * ay, zn - 60], [0.58 * ax, 0.55 * ay, 95 * s], soft=1.0,
                planes=[((0, 0, 1), zc - 0.75 * az)], name="neck"))
    P.append(_p([0, 0.12 * ay, zn - 40], [7 * s, 9 * s, 55 * s], soft=-1.0,
                planes=[((0, 0, 1), zc - 0.78 * az)], name="airway"))
    curve = an["spine_curve"]
    ys = -0.12 * ay
    P.append(_p([0, ys, zn + 8], [4.5 * s, 4.5 * s, 10 * s], soft=-1.0, bone=0.8, name="dens"))
    for i in range(5):
        zv = zn - 6 - i * 17 * s
        yv = ys + curve * np.sin(np.pi * (i + 0.5) / 5)
        P.append(_p([0, yv, zv], [11 * s, 9 * s, 7 * s], soft=-1.0, bone=0.7,
                    name=f"vertebra{i}"))
        P.append(_p([0, yv - 26 * s, zv - 3], [4 * s, 13 * s, 5 * s], soft=-1.0, bone=0.9,
                    rot=rotation(rx=-20), name=f"spinous{i}"))
    return P


def summary(prims: list[Primitive]) -> dict:
    """Counts per primitive name (what went into the phantom)."""
    out: dict[str, int] = {}
    for p in prims:
        out[p.name] = out.get(p.name, 0) + 1
    return out
