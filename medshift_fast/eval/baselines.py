"""Classical baselines a user would pick instead of a learned translation: Gaussian blur, total
variation and BM3D, each with one parameter tuned on the validation split.

``CLASSICAL`` is the one list that ``medshift evaluate``, the demo and the figures use. Each
baseline filters every image on its own (no learning, nothing shared across images):

* Gaussian: ``scipy.ndimage.gaussian_filter`` (reflect borders); parameter sigma in pixels.
* TV: ``skimage.restoration.denoise_tv_chambolle`` on the image mapped to [0, 1]; parameter
  weight (larger = smoother).
* BM3D: ``bm3d.bm3d`` (the BM3D authors' package) on the image mapped to [0, 1], one thread (the
  package's multi-threaded aggregation is not bit-reproducible); parameter sigma_psd, the white
  noise std it assumes, in [0, 1] units.

Tuning (:func:`tune`): every value of the baseline's fixed, log-spaced grid is applied to at most
``tune_images`` source images of the *tuning split* (validation; never the test split) and scored
  * when the dataset has pixel-aligned views (the simulator's view ids): mean PSNR against the
    aligned true target images of the same split (higher is better);
  * otherwise (unpaired data): the NPS distance to the target domain's images of that split
    (lower is better).
The best value wins (the first one on a tie); a winner at an end of the grid extends it
geometrically past that end (at most ``MAX_GRID_EXTENSIONS`` values, within the parameter's
``bounds``) so that the optimum is inside the curve; the whole curve is recorded. Everything is
deterministic. BM3D costs about a second per 128-px image on one CPU core, so its grid is short
and it is tuned on at most ``BM3D_TUNE_IMAGES`` images.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import MedShiftError

BM3D_TUNE_IMAGES = 6
MAX_GRID_EXTENSIONS = 6  # values added past an end of the grid when the winner sits there


def _gaussian(u: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(u, sigma, mode="reflect")


def _tv(u: np.ndarray, weight: float) -> np.ndarray:
    from skimage.restoration import denoise_tv_chambolle

    return denoise_tv_chambolle(u, weight=weight, channel_axis=None)


def _bm3d(u: np.ndarray, sigma_psd: float) -> np.ndarray:
    try:
        import bm3d
    except ImportError:
        raise MedShiftError("the BM3D baseline needs the bm3d package: pip install bm3d (or leave "
                            "it out: --classical gaussian,tv)") from None
    profile = bm3d.BM3DProfile()
    profile.num_threads = 1  # the package's threaded aggregation is not bit-reproducible
    return bm3d.bm3d(u, sigma_psd=sigma_psd, profile=profile)


@dataclass(frozen=True)
class Classical:
    """One classical baseline with its single parameter.

    Attributes:
        key: short name used in ``--classical`` ("gaussian", "tv", "bm3d").
        label: display name.
        param: display name of the parameter.
        unit: unit shown after the value ("" for none).
        grid: the values tried first when tuning (log-spaced).
        filter: (H, W) float64 image in [0, 1], value -> filtered image.
        max_tune_images: cap on tuning images for this baseline (None: ``tune_images``).
        bounds: the parameter's meaningful range: a winner at an end of ``grid`` extends the
            grid geometrically past that end, within these bounds (``tune``).
    """

    key: str
    label: str
    param: str
    unit: str
    grid: tuple[float, ...]
    filter: Callable[[np.ndarray, float], np.ndarray]
    max_tune_images: int | None = None
    bounds: tuple[float, float] = (0.0, float("inf"))

    def name(self, value: float) -> str:
        """Row name, e.g. "TV (weight 0.02)"."""
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.label} ({self.param} {value:g}{unit})"

    def apply(self, x: torch.Tensor, value: float) -> torch.Tensor:
        """Filter a batch.

        Args:
            x: (N, 1, H, W) images in [-1, 1].
            value: the parameter.

        Returns:
            (N, 1, H, W) float32 in [-1, 1] (mapped to [0, 1] for the library and back).
        """
        if x.dim() != 4 or x.shape[1] != 1:
            raise MedShiftError(f"{self.label} needs (N, 1, H, W) images, got {tuple(x.shape)}")
        u = (x[:, 0].detach().cpu().double().numpy() + 1.0) * 0.5
        out = np.stack([np.asarray(self.filter(v, float(value)), dtype=np.float64) for v in u])
        return torch.from_numpy(out * 2.0 - 1.0).float().unsqueeze(1).clamp_(-1.0, 1.0)


CLASSICAL: tuple[Classical, ...] = (
    Classical("gaussian", "Gaussian", "σ", "px", (0.35, 0.5, 0.7, 1.0, 1.4, 2.0, 2.8), _gaussian,
              bounds=(0.1, 16.0)),
    Classical("tv", "TV", "weight", "", (0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32), _tv,
              bounds=(1e-4, 10.0)),
    Classical("bm3d", "BM3D", "σ_psd", "", (0.005, 0.01, 0.02, 0.04, 0.08, 0.16), _bm3d,
              max_tune_images=BM3D_TUNE_IMAGES, bounds=(1e-3, 1.0)),
)
BY_KEY = {b.key: b for b in CLASSICAL}


def parse_classical(spec: str | None) -> tuple[Classical, ...]:
    """``"gaussian,tv,bm3d"`` -> the baselines, in ``CLASSICAL`` order; "none" or "" -> ()."""
    keys = [k.strip().lower() for k in (spec or "").split(",") if k.strip()]
    if keys in ([], ["none"]):
        return ()
    unknown = [k for k in keys if k not in BY_KEY]
    if unknown:
        raise MedShiftError(f"unknown classical baseline(s) {', '.join(unknown)}; choose from "
                            f"{', '.join(BY_KEY)} (comma-separated) or none")
    return tuple(b for b in CLASSICAL if b.key in keys)


@dataclass
class Tuned:
    """A baseline with its tuned parameter.

    Attributes:
        baseline: the :class:`Classical`.
        value: the chosen parameter.
        objective: "psnr_tgt" (maximised) or "nps_dist" (minimised).
        curve: [(value, objective score)] over the grid.
        n_images: tuning images used.
        split: the split they came from.
        seconds: tuning time.
        at_edge: the winner is the first or last grid value (the optimum may lie outside).
        against: what the objective compared with.
        paths: the source files the tuning read.
    """

    baseline: Classical
    value: float
    objective: str
    curve: list[tuple[float, float]] = field(default_factory=list)
    n_images: int = 0
    split: str = ""
    seconds: float = 0.0
    at_edge: bool = False
    against: str = ""
    paths: list[str] = field(default_factory=list)

    @property
    def method(self) -> str:
        return self.baseline.name(self.value)

    def translate(self, x: torch.Tensor) -> torch.Tensor:
        return self.baseline.apply(x, self.value)

    def to_dict(self) -> dict:
        return {"method": self.method, "baseline": self.baseline.key,
                "param": self.baseline.param, "value": self.value,
                "objective": self.objective, "split": self.split, "n_images": self.n_images,
                "against": self.against, "curve": [[v, round(s, 6)] for v, s in self.curve],
                "at_grid_edge": self.at_edge, "tune_seconds": round(self.seconds, 3)}


def tune(baseline: Classical, x_src: torch.Tensor, *, target: torch.Tensor | None = None,
         nps_ref=None, split: str = "val") -> Tuned:
    """Pick the baseline's parameter on tuning images (see the module docstring).

    Args:
        baseline: the :class:`Classical` to tune.
        x_src: (N, 1, H, W) source images of the tuning split (already capped).
        target: (N, 1, H, W) their pixel-aligned true targets, or None (unpaired data).
        nps_ref: the target domain's :class:`~medshift_fast.eval.physics.NPS` (or images) of the
            tuning split, used when ``target`` is None.
        split: name of the split, recorded.

    Returns:
        :class:`Tuned` with the winner and the objective curve.
    """
    from .image import psnr
    from .physics import nps_distance

    if target is None and nps_ref is None:
        raise MedShiftError("tuning needs aligned targets or a target-domain NPS reference")
    if target is not None and target.shape != x_src.shape:
        raise MedShiftError(f"tuning targets {tuple(target.shape)} do not match the sources "
                            f"{tuple(x_src.shape)}")
    cap = baseline.max_tune_images
    if cap is not None and x_src.shape[0] > cap:  # spread over the capped set
        idx = sorted({round(k * (x_src.shape[0] - 1) / max(1, cap - 1)) for k in range(cap)})
        x_src = x_src[idx]
        target = target[idx] if target is not None else None
    t0 = time.perf_counter()

    def score(v: float) -> float:
        y = baseline.apply(x_src, v)
        if target is not None:
            s = float(psnr(y, target))
            return s if np.isfinite(s) else 99.0
        return float(nps_distance(y, nps_ref))

    sign = 1.0 if target is not None else -1.0  # maximise PSNR, minimise the NPS distance
    curve = [(float(v), score(v)) for v in baseline.grid]
    lo, hi = baseline.bounds
    for _ in range(MAX_GRID_EXTENSIONS):  # a winner at an end: extend the grid past that end
        best = max(range(len(curve)), key=lambda k: (sign * curve[k][1], -k))
        if best == len(curve) - 1 and curve[-1][0] * curve[-1][0] / curve[-2][0] <= hi:
            v = curve[-1][0] * curve[-1][0] / curve[-2][0]
            curve.append((v, score(v)))
        elif best == 0 and curve[0][0] * curve[0][0] / curve[1][0] >= lo:
            v = curve[0][0] * curve[0][0] / curve[1][0]
            curve.insert(0, (v, score(v)))
        else:
            break
    best = max(range(len(curve)), key=lambda k: (sign * curve[k][1], -k))
    return Tuned(baseline, curve[best][0], "psnr_tgt" if target is not None else "nps_dist",
                 curve, int(x_src.shape[0]), split, time.perf_counter() - t0,
                 best in (0, len(curve) - 1))


def tune_all(baselines: tuple[Classical, ...], data, source: str, target: str, *, split: str,
             size: int | None, max_images: int, domain_map=None, reference=None,
             progress: bool = False) -> list[Tuned]:
    """Load the tuning split once and tune every baseline on it.

    Only images of ``split`` are read (the test split is never touched: the file list is
    filtered by split before anything is decoded).

    Args:
        baselines: from :func:`parse_classical`.
        data: dataset root.
        source, target: domain names.
        split: the tuning split (validation).
        size: image side the run works at.
        max_images: source images used for tuning.
        domain_map: the run's folder -> domain map.
        reference: fallback NPS reference (e.g. the evaluation's reference split) when the target
            domain has no images in ``split`` and the data are unpaired.
        progress: print one line per baseline.
    """
    from . import _data
    from .physics import noise_power_spectrum

    if not baselines:
        return []
    if split == "test":
        raise MedShiftError("classical baselines are never tuned on the test split; pass "
                            "--tune-split val (or another held-out split)")
    _data.check_split_has(data, source, split, domain_map, "to tune the classical baselines",
                          "pass --tune-split with a split that has images, or --classical none")
    src = _data.load_domain(data, source, split, size, max_images, domain_map)
    gt, nps_ref, against = None, None, ""
    if _data.count_split(data, target, split, domain_map):
        tgt = _data.load_domain(data, target, split, size, None, domain_map)
        gt = _data.align(src, tgt)
        against = (f"the aligned true {target} views ({split})" if gt is not None else
                   f"the NPS of {tgt.x.shape[0]} {target} {split} images")
        if gt is None:
            nps_ref = noise_power_spectrum(tgt.x)
    if gt is None and nps_ref is None:
        if reference is None:
            raise MedShiftError(f"no {target!r} images in split {split!r} to tune the classical "
                                "baselines against; pass --tune-split or --classical none")
        nps_ref, against = reference, f"the NPS of the {target} reference set"
    out = []
    for b in baselines:
        t = tune(b, src.x, target=gt, nps_ref=nps_ref, split=split)
        t.against, t.paths = against, list(src.paths)
        out.append(t)
        if progress:
            curve = ", ".join(f"{v:g}: {s:.2f}" for v, s in t.curve)
            print(f"  tuned {b.label} on {t.n_images} {split} images ({t.objective}) -> "
                  f"{b.param} {t.value:g} in {t.seconds:.1f} s [{curve}]", flush=True)
    return out
