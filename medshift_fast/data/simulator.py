"""The built-in X-DigiSkull-like dataset: ``simulate(out, subjects, views, size, seed)``.

For every subject (a random skull phantom, :mod:`.phantom`) and C-arm view the two material line
integrals are computed once (:mod:`.projector`) and rendered in all five domains
(:mod:`.physics`), so the five images of a view are pixel-aligned. Output::

    OUT/<domain>/s000_v00.png   16-bit grayscale, [-1, 1] -> [0, 65535]
    OUT/labels/s000_v00.tif     the view's ground truth, the same for every domain (bone and
                                soft-tissue line integrals in mm, bone mask: data/labels.py)
    OUT/manifest.csv            path, domain, subject, view_id, split (split by subject), labels
    OUT/simulator.json          every parameter (config, tables, views, per-subject anatomy,
                                the label channels and their units)

The same config (seed included) gives byte-identical files: the phantom and all noise come from
numpy Generators keyed by (seed, subject, view, domain), and the geometry runs in float64.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from ..errors import MedShiftError
from ..fileio import atomic_write_text, check_output_folder, folder_entries
from . import physics
from .dataset import DOMAINS, MANIFEST, SPLITS
from .io import write_png16
from .labels import LABELS_DIR, simulator_labels, write_labels
from .phantom import build_phantom, sample_anatomy, summary
from .projector import Geometry, line_integrals

# Neuro-interventional C-arm positions: (name, primary angle LAO+/RAO-, secondary CRAN+/CAUD-)
BASE_VIEWS = (
    ("pa", 0.0, 0.0), ("lat", 90.0, 0.0), ("lao30", 30.0, 0.0), ("rao30", -30.0, 0.0),
    ("pa_caud20", 0.0, -20.0), ("towne", 0.0, 30.0), ("lao60", 60.0, 0.0),
    ("lat_cran15", 90.0, 15.0), ("rao45_caud10", -45.0, -10.0), ("lao15_cran20", 15.0, 20.0),
)
SIM_JSON = "simulator.json"


@dataclass(frozen=True)
class SimConfig:
    """Every parameter of the simulator (saved to simulator.json).

    Attributes:
        subjects, views, size, seed: dataset shape; views beyond the 10 standard C-arm
            positions get random angles.
        domains: which of DOMAINS to render.
        geometry: "cone" or "parallel"; sod / fov in mm (fov at the isocentre).
        supersample: sub-pixels per side (0: 2 up to 128 px, else 1).
        center_v_mm: detector centre height; pose_jitter_deg / _mm: per subject-view pose noise.
        synthetic_*: monochromatic energy (keV), LUT window on p, LUT gamma, Gaussian noise std
            per synthetic domain (image units).
        photons: real_* dose, expected photons per output pixel of an open field.
        focal_blur_px / detector_blur_px: Gaussian sigmas (output pixels) before / after noise.
        scatter_amplitude, scatter_sigma_mm: scatter-kernel amplitude and width.
        electronic_noise: detector read noise (photon-count units); heel: anode heel fraction.
        real_window: window on the real log signal p.
        split: train/val/test fractions (by subject).
    """

    subjects: int = 10
    views: int = 6
    size: int = 64
    seed: int = 0
    domains: tuple = DOMAINS
    geometry: str = "cone"
    sod: float = 700.0
    fov: float = 230.0
    supersample: int = 0
    center_v_mm: float = 0.0
    pose_jitter_deg: float = 3.0
    pose_jitter_mm: float = 4.0
    synthetic_kev: float = 50.0
    synthetic_window: tuple = (0.0, 6.5)
    synthetic_gamma: float = 0.8
    synthetic_noise: dict = field(
        default_factory=lambda: {"synthetic_low": 0.03, "synthetic_high": 0.008})
    photons: dict = field(
        default_factory=lambda: {"real_low": 1500.0, "real_normal": 5000.0,
                                 "real_exposure": 20000.0})
    focal_blur_px: float = 0.6
    detector_blur_px: float = 0.5
    scatter_amplitude: float = 0.1
    scatter_sigma_mm: float = 30.0
    electronic_noise: float = 2.0
    heel: float = 0.1
    real_window: tuple = (-0.45, 5.5)
    split: tuple = (0.7, 0.15, 0.15)

    def __post_init__(self):
        def bad(msg):
            raise MedShiftError(f"simulate: {msg}")

        for name in ("subjects", "views", "size"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < 1:
                bad(f"--{name} must be a positive integer, got {v!r}")
        if self.size < 8 or self.size > 4096:
            bad(f"--size must be between 8 and 4096 pixels, got {self.size}")
        if self.seed < 0:
            bad(f"--seed must be >= 0, got {self.seed}")
        object.__setattr__(self, "domains", tuple(self.domains))
        unknown = [d for d in self.domains if d not in DOMAINS]
        if unknown or not self.domains or len(set(self.domains)) != len(self.domains):
            bad(f"bad domain list {', '.join(self.domains) or '(empty)'}; choose from "
                f"{', '.join(DOMAINS)}")
        if self.geometry not in ("cone", "parallel"):
            bad(f"--geometry must be 'cone' or 'parallel', got {self.geometry!r}")
        for d in self.domains:
            if d.startswith("real") and not self.photons.get(d, 0) > 0:
                bad(f"photons for {d} must be > 0")
        if not self.supersample >= 0 or self.fov <= 0 or self.sod <= self.fov:
            bad("need supersample >= 0, fov > 0 and sod > fov")
        if len(self.split) != 3 or min(self.split) < 0 or sum(self.split) <= 0:
            bad(f"split fractions must be three non-negative numbers, got {self.split}")

    @property
    def ss(self) -> int:
        return self.supersample or (2 if self.size <= 128 else 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> SimConfig:
        names = {f.name for f in fields(cls)}
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
        return cls(**kw)


def view_angles(cfg: SimConfig) -> list[tuple[str, float, float]]:
    """The cfg.views (name, alpha, beta) C-arm positions, same for every subject."""
    out = list(BASE_VIEWS[: cfg.views])
    rng = np.random.default_rng([cfg.seed, 1001])
    for i in range(len(out), cfg.views):
        out.append((f"rand{i}", round(float(rng.uniform(-90, 90)), 2),
                    round(float(rng.uniform(-30, 30)), 2)))
    return out


def subject_splits(cfg: SimConfig) -> list[str]:
    """Split of each subject: shuffled, ~cfg.split fractions, every split non-empty if n >= 3."""
    n = cfg.subjects
    fr = np.asarray(cfg.split, dtype=float) / sum(cfg.split)
    if n >= 3:
        n_val = max(1, int(round(fr[1] * n))) if fr[1] > 0 else 0
        n_test = max(1, int(round(fr[2] * n))) if fr[2] > 0 else 0
        n_val, n_test = min(n_val, n - 2), min(n_test, n - 1 - min(n_val, n - 2))
    else:
        n_val, n_test = (1 if n == 2 else 0), 0
    labels = ["val"] * n_val + ["test"] * n_test + ["train"] * (n - n_val - n_test)
    perm = np.random.default_rng([cfg.seed, 1002]).permutation(n)
    out = [""] * n
    for lab, i in zip(labels, perm):
        out[int(i)] = lab
    return out


def subject_views(cfg: SimConfig, subject: int) -> list[tuple[float, float, float, float]]:
    """(alpha, beta, du, dv) of each view for one subject, with its pose jitter."""
    rng = np.random.default_rng([cfg.seed, subject, 1003])
    out = []
    for _, a, b in view_angles(cfg):
        ja, jb = rng.uniform(-cfg.pose_jitter_deg, cfg.pose_jitter_deg, 2)
        du, dv = rng.uniform(-cfg.pose_jitter_mm, cfg.pose_jitter_mm, 2)
        out.append((a + ja, b + jb, du, dv + cfg.center_v_mm))
    return out


def subject_line_integrals(cfg: SimConfig, subject: int):
    """Anatomy and (V, ss*S, ss*S, 2) float64 material line integrals of one subject."""
    anatomy = sample_anatomy(np.random.default_rng([cfg.seed, subject, 1004]))
    prims = build_phantom(anatomy)
    geom = Geometry(cfg.geometry, cfg.sod, cfg.fov)
    views = subject_views(cfg, subject)
    L = line_integrals(prims, views, cfg.size * cfg.ss, geom)
    return anatomy, prims, L


def render_domains(L_ss, cfg: SimConfig, seeds=None) -> dict:
    """Render one view's line integrals in every domain of cfg.

    Args:
        L_ss: (ss*S, ss*S, 2) line integrals.
        cfg: SimConfig.
        seeds: list of ints keying the noise streams, e.g. [seed, subject, view]; None renders
            the noise-free expectation.

    Returns:
        {domain: (S, S) float64 image in [-1, 1]}.
    """
    out, phi = {}, None
    for dom in cfg.domains:
        rng = None if seeds is None else np.random.default_rng([*seeds, DOMAINS.index(dom)])
        if dom.startswith("synthetic"):
            std = float(cfg.synthetic_noise.get(dom, 0.0))
            out[dom] = physics.synthetic_image(L_ss, cfg.ss, cfg, std, rng)
        else:
            if phi is None:
                phi = physics.real_fluence(L_ss, cfg.ss, cfg)
            out[dom] = physics.real_image(phi, float(cfg.photons[dom]), cfg, rng)
    return out


def render_subject(cfg: SimConfig, subject: int, noise: bool = True) -> dict:
    """All views of one subject in every domain: {domain: (V, S, S) float64}, no disk I/O."""
    import torch

    _, _, L = subject_line_integrals(cfg, subject)
    per_view = [render_domains(L[v], cfg, [cfg.seed, subject, v] if noise else None)
                for v in range(L.shape[0])]
    return {d: torch.stack([pv[d] for pv in per_view]) for d in cfg.domains}


def label_meta() -> dict:
    """What the label files hold (simulator.json's "labels" entry)."""
    from . import labels as lab

    return {"folder": LABELS_DIR, "format": "float32 planar TIFF (channels, S, S)",
            "channels": list(lab.CHANNELS), "units": dict(lab.UNITS),
            "bone_mask_mm": lab.BONE_MASK_MM}


def subject_labels(cfg: SimConfig, subject: int, L=None):
    """(V, 3, S, S) float32 labels of one subject's views (``data.labels.CHANNELS``)."""
    if L is None:
        _, _, L = subject_line_integrals(cfg, subject)
    return np.stack([simulator_labels(L[v], cfg.ss) for v in range(L.shape[0])])


def image_fingerprint(root) -> dict[str, str]:
    """SHA-256 of a simulated dataset's simulator.json and manifest.csv as they describe the
    images: without the labels (the ``labels`` entry and column, added later than the images'
    definition), so a dataset with labels has the fingerprint of the same images without."""
    import hashlib

    root = Path(root)
    meta = json.loads((root / SIM_JSON).read_text())
    meta.pop("labels", None)
    sim = json.dumps(meta, indent=1, sort_keys=True, default=float) + "\n"
    with open(root / MANIFEST, newline="") as fh:
        rows = list(csv.DictReader(fh))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(IMAGE_COLUMNS)
    w.writerows([[r.get(c, "") for c in IMAGE_COLUMNS] for r in rows])
    return {SIM_JSON: hashlib.sha256(sim.encode()).hexdigest(),
            MANIFEST: hashlib.sha256(buf.getvalue().encode()).hexdigest()}


def _atomic_text(path: Path, text: str) -> None:
    atomic_write_text(path, text)


_OWN_PNG = re.compile(r"s\d+_v\d+\.png")
_OWN_LABEL = re.compile(r"s\d+_v\d+\.tif")
IMAGE_COLUMNS = ("path", "domain", "subject", "view_id", "split")


def _is_previous(out: Path) -> bool:
    """Whether ``out`` holds only what ``simulate`` writes (a dataset, or one cut short)."""
    for name in folder_entries(out):
        p = out / name
        if name in (MANIFEST, SIM_JSON):
            if not p.is_file():
                return False
        elif name == LABELS_DIR:
            if not p.is_dir() or not all(_OWN_LABEL.fullmatch(f) for f in folder_entries(p)):
                return False
        elif name not in DOMAINS or not p.is_dir() or \
                not all(_OWN_PNG.fullmatch(f) for f in folder_entries(p)):
            return False
    return True


def _prepare_out(out: Path, cfg: SimConfig, overwrite: bool) -> None:
    """The output-safety rule (fileio.check_output_folder): a new or empty folder, or a previous
    dataset with ``overwrite`` (then removed first); any other non-empty folder is refused."""
    if check_output_folder(out, command="simulate", is_previous=_is_previous,
                           overwrite=overwrite):
        for d in (*DOMAINS, LABELS_DIR):  # only what a previous simulate wrote (_is_previous)
            if (out / d).is_dir():
                shutil.rmtree(out / d)
        for p in (out / MANIFEST, out / SIM_JSON):
            if p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def simulate(out, subjects: int = 10, views: int = 6, size: int = 64, seed: int = 0,
             progress: bool = True, overwrite: bool = False, **params) -> Path:
    """Write an X-DigiSkull-like five-domain dataset (see module docstring).

    Args:
        out: output folder (created).
        subjects, views, size, seed: dataset shape and seed.
        progress: show a tqdm progress bar (stderr).
        overwrite: replace a dataset a previous ``simulate`` wrote in ``out`` (a folder
            holding anything else is refused even then: fileio.check_output_folder).
        **params: any other SimConfig field (e.g. geometry="parallel", domains=(...)).

    Returns:
        The output folder.
    """
    try:
        cfg = SimConfig(subjects=subjects, views=views, size=size, seed=seed, **params)
    except TypeError as exc:
        raise MedShiftError(f"simulate: {exc}") from None
    out = Path(out)
    _prepare_out(out, cfg, overwrite)
    splits = subject_splits(cfg)
    vnames = view_angles(cfg)
    rows, subj_meta = [], []
    for d in (*cfg.domains, LABELS_DIR):
        (out / d).mkdir(exist_ok=True)
    import torch
    from tqdm import tqdm

    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small ops: intra-op threads only add overhead (and oversubscribe)
    bar = tqdm(total=cfg.subjects * cfg.views * (len(cfg.domains) + 1), unit="file",
               desc="simulate", disable=not progress, dynamic_ncols=True)
    # PNG encoding releases the GIL: a small writer pool overlaps it with the rendering
    pool = ThreadPoolExecutor(max_workers=2)
    pending: list = []
    try:
        for s in range(cfg.subjects):
            anatomy, prims, L = subject_line_integrals(cfg, s)
            sid = f"s{s:03d}"
            subj_meta.append({"subject": sid, "split": splits[s], "anatomy": anatomy,
                              "views": [list(map(float, v)) for v in subject_views(cfg, s)],
                              "primitives": summary(prims)})
            for v in range(cfg.views):
                imgs = render_domains(L[v], cfg, [cfg.seed, s, v])
                vid = f"{sid}_v{v:02d}"
                lab = f"{LABELS_DIR}/{vid}.tif"
                pending.append(pool.submit(write_labels, out / lab,
                                           simulator_labels(L[v], cfg.ss), vid))
                for d in cfg.domains:
                    rel = f"{d}/{vid}.png"
                    pending.append(pool.submit(write_png16, out / rel, imgs[d], 1))
                    rows.append((rel, d, sid, vid, splits[s], lab))
                while len(pending) > 4 * (len(cfg.domains) + 1):
                    pending.pop(0).result()
                    bar.update(1)
        for f in pending:
            f.result()
            bar.update(1)
    finally:
        pool.shutdown(wait=True)
        bar.close()
        torch.set_num_threads(n_threads)
    order = {d: i for i, d in enumerate(cfg.domains)}
    rows.sort(key=lambda r: (order[r[1]], r[3]))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow((*IMAGE_COLUMNS, "labels"))
    w.writerows(rows)
    meta = {
        "generator": "medshift_fast.data.simulate",
        "config": cfg.to_dict(),
        "supersample_used": cfg.ss,
        "splits": list(SPLITS),
        "views": [{"index": i, "name": n, "alpha": a, "beta": b}
                  for i, (n, a, b) in enumerate(vnames)],
        "tables": {"energies_kev": physics.ENERGIES_KEV, "mu_rho_water": physics.MU_RHO_WATER,
                   "mu_rho_bone": physics.MU_RHO_BONE, "rho_water": physics.RHO_WATER,
                   "rho_bone": physics.RHO_BONE, "spectrum_weights": physics.SPECTRUM_WEIGHTS,
                   "source": "NIST XCOM (water, ICRU-44 cortical bone)"},
        "subjects": subj_meta,
        "labels": label_meta(),
    }
    _atomic_text(out / SIM_JSON, json.dumps(meta, indent=1, sort_keys=True, default=float) + "\n")
    _atomic_text(out / MANIFEST, buf.getvalue())
    return out


@dataclass(frozen=True, kw_only=True)
class SimulateOptions:
    """``medshift simulate``: render a procedural skull phantom per subject at several C-arm
    views in the five domains (16-bit PNG) with manifest.csv and simulator.json.

    Attributes:
        out: output folder.
        subjects: number of phantoms.
        views: C-arm views per subject.
        size: image side in pixels.
        seed: RNG seed (the same seed gives identical files).
        geometry: cone | parallel beam.
        domains: comma-separated subset of the five domains (default: all).
        supersample: sub-pixels per side (0 = auto: 2 up to 128 px, else 1).
        overwrite: replace a dataset a previous simulate wrote in out (a non-empty folder
            holding anything else is refused, even with --overwrite).
        progress: show a progress bar.
    """

    out: str
    subjects: int = 10
    views: int = 6
    size: int = 64
    seed: int = 0
    geometry: str = "cone"
    domains: tuple[str, ...] | None = None
    supersample: int = 0
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.domains is not None:
            unknown = [d for d in self.domains if d not in DOMAINS]
            if unknown:
                raise MedShiftError(f"unknown domain(s) {', '.join(unknown)}; choose from "
                                    f"{', '.join(DOMAINS)}")


def simulate_options(opts: SimulateOptions) -> tuple[Path, int]:
    """Run :func:`simulate` for ``opts``; returns (folder, number of images written)."""
    kw = {"domains": tuple(opts.domains)} if opts.domains else {}
    out = simulate(opts.out, subjects=opts.subjects, views=opts.views, size=opts.size,
                   seed=opts.seed, progress=opts.progress, overwrite=opts.overwrite,
                   geometry=opts.geometry, supersample=opts.supersample, **kw)
    return out, opts.subjects * opts.views * len(opts.domains or DOMAINS)
