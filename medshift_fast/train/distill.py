"""``medshift distill``: a teacher run's whole translation in one (or two) network calls.

The student (``models.student``) starts from the teacher's U-Net and is trained by the shared loop
(``train.trainer``: progress, checkpoints, exact resume, EMA, the non-finite guard):

* ``oneshot`` (default): regression, with the pseudo-Huber loss, onto the teacher's OWN
  translations of the training images -- every requested domain pair, ``taus_per_image`` times
  per image and pair with tau drawn uniformly from [tau_min, tau_max] -- computed once with the
  teacher's settings (guidance, solver, steps; recorded in the student's config) and cached in
  RUN/teacher_cache.safetensors (reused on --resume). Training may use random crops of the
  (source, translation) pairs (the same window for both; the network is fully convolutional).
* ``meanflow``: the average velocity u(z, s, e, y) of the teacher's guided field, trained with
  the MeanFlow identity u = v + (e - s) du/ds (du/ds along the flow, by a Jacobian-vector
  product) at points of the teacher's paths: no translation cache, any tau and pair from one
  model, two calls per translation (one process only: the JVP does not go through DDP).

Validation (both): the mean squared difference between the EMA student's and the teacher's
translations of held-out (val split) images at tau_min, the mid point and tau_max.
"""

from __future__ import annotations

import json
import math
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import MedShiftError
from ..fileio import load_safetensors, save_safetensors
from ..models.codec import copy_autoencoder
from ..models.student import STUDENT_METHODS, Student, StudentConfig, pseudo_huber
from ..run import load_run, save_run
from ..translator import RECIPE, Translator
from .data import IndexStream, open_split, random_crop
from .loop_config import LoopConfig, resume_check
from .trainer import Task, Trainer, run_training

__all__ = ["DistillConfig", "distill"]

CACHE = "teacher_cache.safetensors"
_RESUMABLE = frozenset({"out", "steps", "device", "precision", "log_every", "ckpt_every",
                        "keep_ckpts", "val_every", "tensorboard", "resume", "max_nonfinite",
                        "overwrite", "compile", "channels_last"})


@dataclass(frozen=True, kw_only=True)
class DistillConfig(LoopConfig):
    """``medshift distill``: distil a teacher run's translation into a student (loop fields:
    ``LoopConfig``).

    Attributes:
        teacher: the teacher run directory (``medshift train``).
        out: the student's run directory.
        data: dataset root (default: the one the teacher was trained on).
        pairs: source:target domain pairs, comma-separated (default: all ordered pairs).
        method: oneshot (regression onto the teacher's translations, one call) | meanflow
            (average velocity, two calls).
        tau_min: smallest translation time learned.
        tau_max: largest translation time learned.
        taus_per_image: teacher translations per training image and pair (oneshot).
        max_images: at most this many training images per source domain (default: all).
        guidance_encode: the teacher's encode guidance (default: translator.RECIPE).
        guidance_decode: the teacher's decode guidance (default: translator.RECIPE).
        solver: the teacher's solver (default: translator.RECIPE).
        solver_steps: the teacher's solver steps per leg (default: translator.RECIPE).
        crop: train on random crop x crop windows (default: whole images).
        channels_last: channels_last weights and inputs (oneshot; meanflow runs contiguous:
            forward-mode GroupNorm needs it).
        val_every: validation against the teacher every N steps, best kept in RUN/best (0: off).
        val_images: held-out images per pair for validation.
    """

    teacher: str = ""
    out: str = "runs/student"
    data: str | None = None
    pairs: str | None = None
    method: str = "oneshot"
    tau_min: float = 0.3
    tau_max: float = 0.6
    taus_per_image: int = 2
    max_images: int | None = None
    guidance_encode: float | None = None
    guidance_decode: float | None = None
    solver: str | None = None
    solver_steps: int | None = None
    crop: int | None = None
    steps: int = 2000
    batch_size: int = 16
    lr: float = 3e-4
    warmup_frac: float = 0.05
    ema_decay: float = 0.995
    keep_ckpts: int = 1
    val_every: int = 250
    val_images: int = 6

    def checks(self) -> list[tuple[bool, str]]:
        return super().checks() + [
            (bool(self.teacher), "pass --teacher RUN (a run written by `medshift train`)"),
            (self.method in STUDENT_METHODS, f"method must be one of {STUDENT_METHODS}"),
            (0.0 <= self.tau_min <= self.tau_max < 1.0,
             f"need 0 <= tau_min <= tau_max < 1, got {self.tau_min}..{self.tau_max}"),
            (self.taus_per_image >= 1, "taus_per_image must be >= 1"),
            (self.max_images is None or self.max_images >= 1, "max_images must be >= 1"),
            (self.crop is None or self.crop >= 8, "crop must be >= 8"),
            (self.val_images >= 1, "val_images must be >= 1"),
        ]

    def __post_init__(self) -> None:
        if self.method == "meanflow":
            object.__setattr__(self, "channels_last", False)
        super().__post_init__()

    def teacher_settings(self) -> dict[str, Any]:
        """The teacher's translation settings (None fields: translator.RECIPE)."""
        return {"guidance_encode": RECIPE["guidance_encode"] if self.guidance_encode is None
                else float(self.guidance_encode),
                "guidance_decode": RECIPE["guidance_decode"] if self.guidance_decode is None
                else float(self.guidance_decode),
                "solver": self.solver or RECIPE["solver"],
                "steps": int(self.solver_steps or RECIPE["steps"])}

    @classmethod
    def from_dict(cls, d: dict[str, Any], strict: bool = False) -> DistillConfig:
        return super().from_dict(d, strict)


def _pairs(spec: str | None, domains: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    k = len(domains)
    if not spec or spec.strip().lower() == "all":
        return tuple((a, b) for a in range(k) for b in range(k) if a != b)
    out = []
    for item in filter(None, (p.strip() for p in spec.split(","))):
        if ":" not in item:
            raise MedShiftError(f"bad pair {item!r}: use SOURCE:TARGET domain names, "
                                "comma-separated")
        a, b = (s.strip() for s in item.split(":", 1))
        for d in (a, b):
            if d not in domains:
                raise MedShiftError(f"unknown domain {d!r} in --pairs; the teacher knows "
                                    f"{', '.join(domains)}")
        if a == b:
            raise MedShiftError(f"pair {item!r} translates a domain to itself")
        out.append((domains.index(a), domains.index(b)))
    return tuple(dict.fromkeys(out))


class DistillTask(Task):
    """The student, its data (the teacher's translations or paths) and the loss."""

    desc = "distill"

    def __init__(self, cfg: DistillConfig, progress: bool = True) -> None:
        self.cfg, self.progress = cfg, progress

    # ------------------------------------------------------------------------------ set-up
    def setup(self, tr: Trainer) -> None:
        cfg = self.cfg
        if cfg.method == "meanflow" and tr.dist.enabled:
            raise MedShiftError("meanflow distillation runs in one process (its Jacobian-vector "
                                "product does not go through DDP); use --method oneshot")
        self.teacher = t = load_run(cfg.teacher, device=tr.device)
        if t.kind != "flow":
            raise MedShiftError(f"{cfg.teacher} is a distilled student; distil a flow run")
        self.domains = t.domains
        self.pairs = _pairs(cfg.pairs, t.domains)
        self.settings = cfg.teacher_settings()
        data = cfg.data or t.train.get("data")
        if not data:
            raise MedShiftError("the teacher run records no dataset; pass --data ROOT")
        view = types.SimpleNamespace(data=data, image_size=t.image_size, domains=t.domains,
                                     domain_map=t.train.get("domain_map"), skip_bad=False,
                                     resize=t.train.get("resize", "crop"))
        self.data_root = data
        train = open_split(view, "train")
        x, y = train.to_tensors()
        val = open_split(view, "val", t.domains) or train
        xv, yv = val.to_tensors()
        enc = t.codec.encode
        self.x = torch.cat([enc(x[k:k + 64].to(tr.device)).float().cpu()
                            for k in range(0, x.shape[0], 64)])
        self.y = y
        self.val = self._val_set(tr, xv, yv)
        if cfg.method == "oneshot":
            self.cache = self._cache(tr)
            n = self.cache["x"].shape[0]
        else:
            n = self.x.shape[0]
        self.stream = IndexStream(n, cfg.micro_batch, cfg.seed)

    def _translator(self, src: int, tgt: int, tau: float) -> Translator:
        return Translator(self.teacher, src, tgt, tau=tau, mode="fused", batch_size=16,
                          **self.settings)

    @torch.no_grad()
    def _teacher_translate(self, z: torch.Tensor, src: int, tgt: int, tau: float) -> torch.Tensor:
        """The teacher's translation of model-space images (batches of 16 on the device)."""
        tr = self._translator(src, tgt, tau)
        dev = self.teacher.device
        outs = []
        for k in range(0, z.shape[0], 16):
            zb = z[k:k + 16].to(dev, tr.dtype)
            outs.append(tr.sampler(tuple(zb.shape)).translate(zb, check_finite=False).float()
                        .cpu())
        return torch.cat(outs)

    def _val_set(self, tr: Trainer, xv: torch.Tensor, yv: torch.Tensor) -> dict:
        cfg = self.cfg
        taus = sorted({cfg.tau_min, (cfg.tau_min + cfg.tau_max) / 2, cfg.tau_max})
        rows: dict[str, list] = {"x": [], "t": [], "s": [], "g": [], "tau": []}
        for src, tgt in self.pairs:
            xs = xv[yv == src][:cfg.val_images]
            if xs.shape[0] == 0:
                continue
            z = self.teacher.codec.encode(xs.to(tr.device)).float().cpu()
            for tau in taus:
                rows["x"].append(z)
                rows["t"].append(self._teacher_translate(z, src, tgt, tau))
                rows["s"].append(torch.full((z.shape[0],), src))
                rows["g"].append(torch.full((z.shape[0],), tgt))
                rows["tau"].append(torch.full((z.shape[0],), tau))
        if not rows["x"]:
            raise MedShiftError("no validation images for the requested pairs")
        return {k: torch.cat(v) for k, v in rows.items()}

    def _cache_meta(self) -> dict[str, str]:
        from ..fileio import sha256_file

        t = self.teacher
        return {"teacher_weights_sha256": sha256_file(Path(t.path) / "model.safetensors"),
                "settings": json.dumps(self.settings, sort_keys=True),
                "pairs": json.dumps(self.pairs), "tau": f"{self.cfg.tau_min},{self.cfg.tau_max}",
                "taus_per_image": str(self.cfg.taus_per_image),
                "max_images": str(self.cfg.max_images), "seed": str(self.cfg.seed),
                "data": str(self.data_root)}

    def _cache(self, tr: Trainer) -> dict[str, torch.Tensor]:
        """The teacher's translations of the training images (computed once, then reused)."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        path = Path(cfg.out) / CACHE
        meta = self._cache_meta()
        if path.is_file():
            tensors, saved = load_safetensors(path, "teacher cache")
            if all(saved.get(k) == v for k, v in meta.items()):
                self.cache_info = {"items": int(tensors["x"].shape[0]),
                                   "seconds": float(saved.get("seconds", "nan"))}
                return tensors
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(cfg.seed + 7_919)
        jobs = []
        for src, tgt in self.pairs:
            idx = torch.nonzero(self.y == src).flatten()[:cfg.max_images]
            for _ in range(cfg.taus_per_image):
                taus = cfg.tau_min + (cfg.tau_max - cfg.tau_min) * torch.rand(len(idx),
                                                                            generator=g)
                jobs += [(int(i), src, tgt, float(tau)) for i, tau in zip(idx, taus)]
        rows: dict[str, list] = {"x": [], "t": [], "s": [], "g": [], "tau": []}
        bar = tqdm(total=len(jobs), desc="teacher translations", unit="img",
                   disable=not (tr.dist.is_main and self.progress))
        # one translation per job: each has its own tau (the Sampler is per settings)
        for i, src, tgt, tau in jobs:
            z = self.x[i:i + 1]
            rows["x"].append(z)
            rows["t"].append(self._teacher_translate(z, src, tgt, tau))
            rows["s"].append(torch.tensor([src]))
            rows["g"].append(torch.tensor([tgt]))
            rows["tau"].append(torch.tensor([tau]))
            bar.update(1)
        bar.close()
        cache = {k: torch.cat(v) for k, v in rows.items()}
        seconds = time.perf_counter() - t0
        self.cache_info = {"items": len(jobs), "seconds": seconds}
        if tr.dist.is_main:
            save_safetensors(path, cache, {**meta, "seconds": f"{seconds:.1f}"})
        return cache

    def build_model(self, tr: Trainer) -> Student:
        t = self.teacher
        scfg = StudentConfig(unet=t.model.config.to_dict(), method=self.cfg.method,
                             pairs=self.pairs, tau_min=self.cfg.tau_min,
                             tau_max=self.cfg.tau_max,
                             teacher={**self.settings, "run": str(t.path)})
        self.student_cfg = scfg
        st = Student(scfg)
        st.init_from_teacher(t.model)
        s = self.x.shape[-1]
        if self.cfg.crop is not None and (self.cfg.crop > s or self.cfg.crop % st.down_factor):
            raise MedShiftError(f"crop {self.cfg.crop} must be at most the model-space size {s} "
                                f"and divisible by {st.down_factor}")
        return st

    # ------------------------------------------------------------------------------ one step
    def batch(self, tr: Trainer, m: int):
        idx = self.stream.rank_batch(m, tr.dist)
        if self.cfg.method == "oneshot":
            c = self.cache
            return tuple(c[k][idx].to(tr.device) for k in ("x", "t", "s", "g", "tau"))
        return self.x[idx].to(tr.device), self.y[idx].to(tr.device)

    def _crop_pair(self, tr: Trainer, a: torch.Tensor, b: torch.Tensor):
        crop = self.cfg.crop
        if crop is None or crop >= a.shape[-1]:
            return a, b
        both = random_crop(torch.cat([a, b], 1), crop, tr.gen, tr.dist)  # one window for both
        return both[:, :a.shape[1]], both[:, a.shape[1]:]

    def loss(self, tr: Trainer, fwd, batch) -> torch.Tensor:
        if self.cfg.method == "meanflow":
            return self._meanflow_loss(tr, batch)
        x, target, ys, yt, tau = batch
        x, target = self._crop_pair(tr, x, target)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with tr.autocast():
            pred = fwd(x, tau, ys, yt)  # Student.forward = oneshot (through DDP / compile)
        return pseudo_huber(pred, target)

    def _meanflow_loss(self, tr: Trainer, batch) -> torch.Tensor:
        """The MeanFlow identity u = v + (e - s) du/ds with the teacher's guided velocity v."""
        from ..flow.guidance import make_field
        from ..ops import guided_velocity

        x1, y_img = batch
        cfg, st, dev = self.cfg, tr.model, tr.device
        b = x1.shape[0]
        g = tr.gen
        srcs = torch.tensor(sorted({a for a, _ in self.pairs}))
        tgts = torch.tensor(sorted({c for _, c in self.pairs}))
        leg = (torch.rand(b, generator=g) < 0.5).long()  # 1 = decode leg, 0 = encode leg
        tau = cfg.tau_min + (cfg.tau_max - cfg.tau_min) * torch.rand(b, generator=g)
        diag = torch.rand(b, generator=g) < 0.25  # s = e: plain flow matching on the teacher
        y_tgt = tgts[torch.randint(0, len(tgts), (b,), generator=g)]
        y_src = srcs[torch.randint(0, len(srcs), (b,), generator=g)]
        # encode: from s = 1 (the image itself) to e = tau; decode: from s = tau to e = 1
        s = torch.where(leg == 1, tau, torch.ones(b))
        e = torch.where(leg == 1, torch.ones(b), tau)
        e = torch.where(diag, s, e)
        x1 = self._crop_pair(tr, x1, x1)[0]
        x0 = torch.randn(x1.shape, generator=g).to(dev, x1.dtype)
        sb = s.to(dev).view(-1, 1, 1, 1).to(x1.dtype)
        z = sb * x1 + (1.0 - sb) * x0
        w_enc, w_dec = self.settings["guidance_encode"], self.settings["guidance_decode"]
        y_enc = st.encode_label(y_src.to(dev))
        y_field = torch.where(leg.to(dev) == 1, y_tgt.to(dev), y_enc)
        del y_img
        with torch.no_grad():  # the teacher's guided velocity at (z, s), per leg's guidance
            v = torch.empty_like(z)
            for lg, w in ((0, w_enc), (1, w_dec)):
                m = (leg == lg).to(dev)
                if bool(m.any()):
                    vc, vu = make_field(self.teacher.model, y_field[m], w)(z[m], s.to(dev)[m])
                    v[m] = guided_velocity(vc, vu, w).to(z.dtype)
        s_d, e_d, lg_d = s.to(dev), e.to(dev), leg.to(dev)

        def u_fn(zz, ss):
            return st.average_velocity(zz, ss, e_d, y_field, lg_d)

        with tr.autocast():
            u, dudt = torch.func.jvp(u_fn, (z, s_d), (v, torch.ones_like(s_d)))
        target = (v + (e_d - s_d).view(-1, 1, 1, 1) * dudt).detach()
        return F.mse_loss(u.float(), target.float())

    @torch.no_grad()
    def validate(self, tr: Trainer) -> float:
        st, v, dev = tr.ema.module.eval(), self.val, tr.device
        total, n = 0.0, 0
        for k in range(v["x"].shape[0]):
            pred = st.translate(v["x"][k:k + 1].to(dev), float(v["tau"][k]),
                                v["s"][k:k + 1].to(dev), v["g"][k:k + 1].to(dev))
            total += float(F.mse_loss(pred.float().cpu(), v["t"][k:k + 1], reduction="sum"))
            n += pred.numel()
        return total / max(n, 1)

    # ---------------------------------------------------------------------------- checkpoints
    def save(self, tr: Trainer, run_dir: Path) -> None:
        t = self.teacher
        train_dict = {**self.cfg.to_dict(), "image_size": t.image_size,
                      "dataset": str(self.data_root)}
        extra = {"step": tr.step, "latent": t.codec.reference(), "teacher": str(t.path),
                 "best_val": None if math.isinf(tr.best_val) else tr.best_val,
                 "teacher_cache": getattr(self, "cache_info", None)}
        save_run(run_dir, train_dict, self.student_cfg.to_dict(), self.domains,
                 tr.ema.state_dict(), tr.model.state_dict(), tr.training_state(), extra=extra,
                 kind="student")
        copy_autoencoder(t.codec, run_dir)

    def check_resume(self, tr: Trainer, src: Path) -> None:
        saved = json.loads((src / "config.json").read_text()).get("train", {})
        resume_check(saved, self.cfg, _RESUMABLE)


def distill(cfg: DistillConfig, progress: bool = True) -> Path:
    """Distil ``cfg.teacher`` into ``cfg.out``; returns the student's run directory."""
    from .flow import check_fresh_out

    check_fresh_out(cfg)
    return run_training(cfg, DistillTask(cfg, progress), progress)

