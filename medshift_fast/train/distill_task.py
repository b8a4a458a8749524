"""The regression tasks of ``medshift distill`` (``oneshot``, ``meanflow``) and the one-call student
loader the adversarial task shares (train/distill.py dispatches).

The methods, their losses and their validation: train/distill.py's docstring and docs/distill.md.
"""

from __future__ import annotations

import json
import math
import types
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import MedShiftError
from ..fileio import load_safetensors, save_safetensors
from ..flow.solvers import nfe
from ..models.codec import copy_autoencoder
from ..models.student import Student, StudentConfig, pseudo_huber
from ..run import load_run, save_run
from ..translate import Translator
from ..translate.settings import TranslationSettings
from .data import IndexStream, open_split, random_crop
from .distill_config import DISTILL_METHODS, DistillConfig  # noqa: F401
from .loop_config import resume_check
from .meanflow import meanflow_loss
from .teacher_pass import TeacherJob, TeacherPass, say
from .trainer import Task, Trainer

__all__ = ["CACHE", "DistillTask", "one_call_student", "pairs_of"]

CACHE = "teacher_cache.safetensors"
_RESUMABLE = frozenset({"out", "steps", "device", "precision", "log_every", "ckpt_every",
                        "keep_ckpts", "val_every", "tensorboard", "resume", "max_nonfinite",
                        "overwrite", "compile", "channels_last",
                        "noise_scale"})  # the recorded default scale: no step's math


def pairs_of(spec: str | None, domains: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    """The (source, target) labels of ``--pairs`` (required when the teacher knows more than two
    domains: every pair multiplies the teacher pass, and a student learns only the ones asked)."""
    k = len(domains)
    if not spec and k > 2:
        raise MedShiftError(
            f"pass --pairs SOURCE:TARGET[,...]: the teacher knows {k} domains "
            f"({', '.join(domains)}), and a student learns only the translations it is asked "
            f"for, each costing its own teacher pass (e.g. --pairs {domains[0]}:{domains[-1]}; "
            f"--pairs all = all {k * (k - 1)} ordered pairs, {k * (k - 1)}x the work of one)")
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
        """Task hook: load the teacher, the data, the teacher cache and the validation pairs."""
        cfg = self.cfg
        if cfg.method == "meanflow" and tr.dist.enabled:
            raise MedShiftError("meanflow distillation runs in one process (its Jacobian-vector "
                                "product does not go through DDP); use --method oneshot")
        self.teacher = t = load_run(cfg.teacher, device=tr.device)
        if t.kind != "flow":
            raise MedShiftError(f"{cfg.teacher} is a distilled student; distil a flow run")
        self.domains = t.domains
        self.pairs = pairs_of(cfg.pairs, t.domains)
        self.settings = cfg.teacher_settings()
        data = cfg.data or t.train.get("data")
        if not data:
            raise MedShiftError("the teacher run records no dataset; pass --data ROOT")
        view = types.SimpleNamespace(data=data, image_size=t.image_size, domains=t.domains,
                                     domain_map=t.train.get("domain_map"), skip_bad=False,
                                     resize=t.train.get("resize", "crop"))
        self.data_root = data
        self.anchor = self._load_anchor(tr)
        train = open_split(view, "train")
        x, y = train.to_tensors()
        val = open_split(view, "val", t.domains) or train
        xv, yv = val.to_tensors()
        enc = t.codec.encode
        self.x = torch.cat([enc(x[k:k + 64].to(tr.device)).float().cpu()
                            for k in range(0, x.shape[0], 64)])
        self.y = y
        self._jobs: list[TeacherJob] = []  # the teacher pass: cache and validation targets
        self.val = self._val_set(tr, xv, yv)
        self.stream = IndexStream(self._items(tr), cfg.micro_batch, cfg.seed)
        self._teacher_pass(tr)

    def _load_anchor(self, tr: Trainer) -> Student | None:
        """The ``anchor_run`` one-call student (frozen), checked to cover the pairs and taus."""
        cfg = self.cfg
        if not cfg.anchor_run:
            return None
        anchor = one_call_student(cfg.anchor_run, "--anchor-run", None, tr.device, self.domains)
        anchor.requires_grad_(False).eval()
        a = anchor.config
        missing = [p for p in self.pairs if a.pairs and p not in a.pairs]
        if missing or a.tau_min > cfg.tau_min + 1e-9 or a.tau_max < cfg.tau_max - 1e-9:
            raise MedShiftError(f"--anchor-run {cfg.anchor_run} learned pairs {list(a.pairs)} "
                                f"at tau {a.tau_min:g}..{a.tau_max:g}; this run needs "
                                f"{list(self.pairs)} at {cfg.tau_min:g}..{cfg.tau_max:g}")
        return anchor

    def _items(self, tr: Trainer) -> int:
        """How many items the data stream draws from: the teacher cache's, every (training
        image, pair) with an anchor run (its translations on the fly), or the images."""
        cfg = self.cfg
        if cfg.method == "meanflow":
            return self.x.shape[0]
        if self.anchor is not None and not cfg.anchor_cache:
            jobs = [(int(i), src, tgt) for src, tgt in self.pairs
                    for i in torch.nonzero(self.y == src).flatten()[:cfg.max_images]]
            self.jobs = torch.tensor(jobs, dtype=torch.long)
            return len(jobs)
        self.cache = self._cache(tr)
        return self.cache["x"].shape[0]

    @torch.no_grad()
    def _reference(self, z: torch.Tensor, src: int, tgt: int, tau: float) -> torch.Tensor:
        """What the student is compared with: the anchor run's translation (its deterministic
        member), or the teacher's."""
        if self.anchor is None:
            return self._teacher_translate(z, src, tgt, tau)
        dev, b = next(self.anchor.parameters()).device, z.shape[0]
        s, g = (torch.full((b,), v, device=dev) for v in (src, tgt))
        return torch.cat([self.anchor.translate(z[k:k + 16].to(dev), tau, s[k:k + 16],
                                                g[k:k + 16]).float().cpu()
                          for k in range(0, b, 16)])

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

    VAL_TEACHER = True  # validation compares with the teacher's translations ("t")

    def _val_set(self, tr: Trainer, xv: torch.Tensor, yv: torch.Tensor) -> dict:
        """Held-out sources per pair and tau (and the teacher's translations of them)."""
        cfg = self.cfg
        taus = sorted({cfg.tau_min, (cfg.tau_min + cfg.tau_max) / 2, cfg.tau_max})
        rows: dict[str, list] = {"x": [], "s": [], "g": [], "tau": []}
        for src, tgt in self.pairs:
            xs = xv[yv == src][:cfg.val_images]
            if xs.shape[0] == 0:
                continue
            z = self.teacher.codec.encode(xs.to(tr.device)).float().cpu()
            for tau in taus:
                rows["x"].append(z)
                if self.VAL_TEACHER:  # the teacher's translation: by the teacher pass
                    self._jobs.append(TeacherJob("val", z, src, tgt, tau))
                rows["s"].append(torch.full((z.shape[0],), src))
                rows["g"].append(torch.full((z.shape[0],), tgt))
                rows["tau"].append(torch.full((z.shape[0],), tau))
        if not rows["x"]:
            raise MedShiftError("no validation images for the requested pairs")
        return {k: torch.cat(v) for k, v in rows.items() if v}

    def _cache_meta(self) -> dict[str, str]:
        from ..fileio import sha256_file

        t = self.teacher
        anchor = ({"anchor_weights_sha256": sha256_file(Path(self.cfg.anchor_run)
                                                         / "model.safetensors")}
                  if self.anchor is not None else {})
        return {**anchor,
                "teacher_weights_sha256": sha256_file(Path(t.path) / "model.safetensors"),
                "settings": json.dumps(self.settings, sort_keys=True),
                "pairs": json.dumps(self.pairs), "tau": f"{self.cfg.tau_min},{self.cfg.tau_max}",
                "taus_per_image": str(self.cfg.taus_per_image),
                "max_images": str(self.cfg.max_images), "seed": str(self.cfg.seed),
                "data": str(self.data_root), "val_images": str(self.cfg.val_images),
                "val_teacher": str(self.VAL_TEACHER), "format": "2"}

    def _cache(self, tr: Trainer) -> dict[str, torch.Tensor]:
        """The cache's sources, labels and taus; their teacher translations ("t") come from the
        teacher pass, or from RUN/teacher_cache.safetensors when it holds these settings'."""
        cfg = self.cfg
        path = Path(cfg.out) / CACHE
        meta = self._cache_meta()
        if path.is_file():
            tensors, saved = load_safetensors(path, "teacher cache")
            if all(saved.get(k) == v for k, v in meta.items()):
                self.cache_info = {"items": int(tensors["x"].shape[0]),
                                   "seconds": float(saved.get("seconds", "nan"))}
                if "val_t" in tensors:
                    self._jobs = [j for j in self._jobs if j.kind != "val"]
                    self.val["t"] = tensors.pop("val_t")
                self._cache_loaded = str(path)
                return tensors
        g = torch.Generator().manual_seed(cfg.seed + 7_919)
        rows: dict[str, list] = {"x": [], "s": [], "g": [], "tau": []}
        jobs = []
        for src, tgt in self.pairs:
            idx = torch.nonzero(self.y == src).flatten()[:cfg.max_images]
            for _ in range(cfg.taus_per_image):
                taus = cfg.tau_min + (cfg.tau_max - cfg.tau_min) * torch.rand(len(idx),
                                                                            generator=g)
                for i, tau in zip(idx, taus):  # one translation per job: each has its own tau
                    z = self.x[int(i):int(i) + 1]
                    jobs.append(TeacherJob("cache", z, src, tgt, float(tau)))
                    rows["x"].append(z)
                    rows["s"].append(torch.tensor([src]))
                    rows["g"].append(torch.tensor([tgt]))
                    rows["tau"].append(torch.tensor([float(tau)]))
        self._jobs = jobs + self._jobs  # the cache first, then the validation targets
        return {k: torch.cat(v) for k, v in rows.items()}

    def _teacher_pass(self, tr: Trainer) -> None:
        """Run the teacher pass (train/teacher_pass.py: plan, progress, resumable) and fill the
        cache's and the validation set's teacher translations."""
        cfg = self.cfg
        names = [f"{self.domains[a]}->{self.domains[b]}" for a, b in self.pairs]
        taus = f"tau in [{cfg.tau_min:g}, {cfg.tau_max:g}]"
        if getattr(self, "cache", None) is not None and "t" not in self.cache:
            taus += f" ({cfg.taus_per_image} draw(s) per training image)"
        if self.VAL_TEACHER:
            vt = sorted(set(self.val["tau"].tolist()))
            taus += f", validated at tau {', '.join(f'{v:g}' for v in vt)}"
        describe = f"{len(names)} pair(s) {', '.join(names)}; {taus}"
        if self.anchor is not None:  # the references are the anchor run's, one call each
            describe += f"; references by --anchor-run {cfg.anchor_run}"
        if not self._jobs:
            say(f"plan: {describe}; teacher translations reused from "
                f"{getattr(self, '_cache_loaded', CACHE)}")
            return
        s = TranslationSettings(0, 1, **self.settings)
        calls = 1 if self.anchor is not None else None if s.solver == "dopri5" else nfe(
            s.solver, s.steps) * sum(1 if w in (0.0, 1.0) else 2
                                     for w in (s.guidance_encode, s.guidance_decode))
        tp = TeacherPass(self._jobs, self._reference, Path(cfg.out),
                         {**self._cache_meta(), "what": "teacher pass"},
                         writer=tr.dist.is_main, progress=tr.dist.is_main and self.progress,
                         calls=calls)
        outs = tp.run(describe)
        by_kind = {k: [o for j, o in zip(self._jobs, outs) if j.kind == k] for k in
                   ("cache", "val")}
        if by_kind["val"]:
            self.val["t"] = torch.cat(by_kind["val"])
        if by_kind["cache"]:
            self.cache["t"] = torch.cat(by_kind["cache"])
            self.cache_info = {"items": int(self.cache["x"].shape[0]), "seconds": tp.seconds}
            if tr.dist.is_main:
                extra = {"val_t": self.val["t"]} if "t" in self.val else {}
                save_safetensors(Path(cfg.out) / CACHE, {**self.cache, **extra},
                                 {**self._cache_meta(), "seconds": f"{tp.seconds:.1f}"})
        tp.finish()
        self._jobs = []

    def build_model(self, tr: Trainer) -> Student:
        """Task hook: the student, initialised from the teacher's U-Net (or ``--init``)."""
        t = self.teacher
        cfg = self.cfg
        method = "meanflow" if cfg.method == "meanflow" else "oneshot"
        net = ({"lean": cfg.lean_config(t.model.in_channels, t.model.num_classes).to_dict()}
               if cfg.arch == "lean" else {"unet": t.model.config.to_dict()})
        scfg = StudentConfig(method=method, pairs=self.pairs, tau_min=cfg.tau_min,
                             tau_max=cfg.tau_max, teacher={**self.settings, "run": str(t.path)},
                             arch=cfg.arch, noise_scale=cfg.noise_scale,
                             texture=getattr(self, "texture", {}), **net)
        self.student_cfg = scfg
        st = Student(scfg)
        st.init_from_teacher(t.model)
        if self.cfg.init:
            _init_from(st, self.cfg.init)
        s = self.x.shape[-1]
        if self.cfg.crop is not None and (self.cfg.crop > s or self.cfg.crop % st.down_factor):
            raise MedShiftError(f"crop {self.cfg.crop} must be at most the model-space size {s} "
                                f"and divisible by {st.down_factor}")
        return st

    # ------------------------------------------------------------------------------ one step
    def batch(self, tr: Trainer, m: int):
        """Task hook: (x, target, y_src, y_tgt, tau) from the teacher cache; target None with
        an anchor run (``_pair`` computes it for the crop) and tau drawn per item; (x, y) for
        meanflow."""
        idx = self.stream.rank_batch(m, tr.dist)
        if self.cfg.method == "meanflow":
            return self.x[idx].to(tr.device), self.y[idx].to(tr.device)
        if self.anchor is None or self.cfg.anchor_cache:
            c = self.cache
            return tuple(c[k][idx].to(tr.device) for k in ("x", "t", "s", "g", "tau"))
        b, info, cfg = idx.shape[0], tr.dist, self.cfg
        u = torch.rand(b * info.world, generator=tr.gen)[info.rank * b:(info.rank + 1) * b]
        tau = cfg.tau_min + (cfg.tau_max - cfg.tau_min) * u
        j = self.jobs[idx]
        return (self.x[j[:, 0]].to(tr.device), None, j[:, 1].to(tr.device),
                j[:, 2].to(tr.device), tau.to(tr.device))

    def _crop_pair(self, tr: Trainer, a: torch.Tensor, b: torch.Tensor):
        crop = self.cfg.crop
        if crop is None or crop >= a.shape[-1]:
            return a, b
        both = random_crop(torch.cat([a, b], 1), crop, tr.gen, tr.dist)  # one window for both
        return both[:, :a.shape[1]], both[:, a.shape[1]:]

    def _pair(self, tr: Trainer, x, target, ys, yt, tau):
        """The (source, target) crops of a batch: the target is the cached translation, or
        the anchor run's translation of the source's crop."""
        if target is not None:
            return self._crop_pair(tr, x, target)
        x = self._crop_pair(tr, x, x)[0]
        with torch.no_grad():
            return x, self.anchor(x, tau, ys, yt)

    def loss(self, tr: Trainer, fwd, batch) -> torch.Tensor:
        """Task hook: regression on the teacher's translation (oneshot) or the MeanFlow loss."""
        if self.cfg.method == "meanflow":
            return meanflow_loss(self, tr, batch)
        x, target, ys, yt, tau = batch
        x, target = self._pair(tr, x, target, ys, yt, tau)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with tr.autocast():
            pred = fwd(x, tau, ys, yt)  # Student.forward = oneshot (through DDP / compile)
        return pseudo_huber(pred, target)

    @torch.no_grad()
    def validate(self, tr: Trainer) -> float:
        """Task hook: MSE of the EMA student against the teacher on held-out pairs."""
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
        """Task hook: the student run (config with the teacher's settings, weights, state)."""
        t = self.teacher
        train_dict = {**self.cfg.to_dict(), "image_size": t.image_size,
                      "dataset": str(self.data_root)}
        extra = {"step": tr.step, "latent": t.codec.reference(), "teacher": str(t.path),
                 "best_val": None if math.isinf(tr.best_val) else tr.best_val,
                 "teacher_cache": getattr(self, "cache_info", None),
                 "learned": t.config.get("learned")}  # the teacher's scale and intensity rule
        save_run(run_dir, train_dict, self.student_cfg.to_dict(), self.domains,
                 tr.ema.state_dict(), tr.model.state_dict(), tr.training_state(), extra=extra,
                 kind="student")
        copy_autoencoder(t.codec, run_dir)

    def check_resume(self, tr: Trainer, src: Path) -> None:
        """Task hook: refuse to resume a run distilled with incompatible settings."""
        saved = json.loads((src / "config.json").read_text()).get("train", {})
        resume_check(saved, self.cfg, _RESUMABLE)


def one_call_student(path: str, flag: str, like: StudentConfig | None, device=None,
                     domains: tuple[str, ...] | None = None) -> Student:
    """The network of a one-call student run (MedShiftError if it is not one).

    Args:
        like: the network it must have (arch and its config), or None for any one-call
            student (an anchor).
        domains: the domains it must know, in label order (None: unchecked).
    """
    run = load_run(path, device=device)
    m = run.model
    if run.kind != "student" or m.config.method != "oneshot":
        raise MedShiftError(f"{flag} {path}: not a one-call student run (it is a {run.kind} "
                            f"run{'' if run.kind != 'student' else ', ' + m.config.method}); "
                            "pass a run written by `medshift distill --method oneshot`")
    if domains is not None and tuple(run.domains) != tuple(domains):
        raise MedShiftError(f"{flag} {path}: it knows the domains {list(run.domains)}, this "
                            f"run {list(domains)}; pass a student of the same teacher")
    if like is not None:
        got, want = _network(m.config), _network(like)
        if got != want:
            raise MedShiftError(f"{flag} {path}: its network differs from this run's "
                                f"({got} vs {want}); pass --arch and the network flags of "
                                "that run, or start from scratch")
    return m


def _network(c: StudentConfig) -> tuple:
    """(arch, the network's config) of a student config, comparable."""
    from ..models.lean import LeanConfig
    from ..models.unet import UNetConfig

    if c.arch == "lean":
        return "lean", LeanConfig.from_dict(c.lean).to_dict()
    return "unet", UNetConfig(**c.unet).to_dict()


def _init_from(st: Student, path: str) -> None:
    """Load a one-call student run's (EMA) weights into ``st`` (same network, same domains).

    A lean network may start from a lean run that differs only in its noise maps (e.g. a
    stochastic student from a deterministic one): the stem's inputs of noise maps the run did
    not have start at zero, so the start computes exactly the run's translation.
    """
    src = one_call_student(path, "--init", None)
    got, want = _network(src.config), _network(st.config)
    sd = src.state_dict()
    if got != want:
        same = (got[0] == want[0] == "lean"
                and {**got[1], "noise_channels": 0} == {**want[1], "noise_channels": 0})
        if not same:
            raise MedShiftError(f"--init {path}: its network differs from this run's ({got} vs "
                                f"{want}); pass --arch and the network flags of that run")
        w = sd["net.stem.weight"]
        r2 = int(want[1]["unshuffle"]) ** 2
        keep = (int(want[1]["in_channels"]) + min(int(got[1]["noise_channels"]),
                                                  int(want[1]["noise_channels"]))) * r2
        new = w.new_zeros(st.net.stem.weight.shape)
        new[:, :keep] = w[:, :keep]
        sd["net.stem.weight"] = new
    st.load_state_dict(sd)

