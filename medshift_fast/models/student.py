"""Distilled students: a teacher's whole translation in one or two network calls, no guidance.

Two routes, one module (``StudentConfig.method``), and two networks for the one-call route
(``StudentConfig.arch``):

* ``oneshot`` -- G(x, tau, y_src, y_tgt) = x + F(x; emb(tau) + label(y_tgt) + src(y_src)): the
  translated image in ONE evaluation. tau enters through the time embedding, the target label
  through the label embedding, the source label through an added embedding (zero-initialised);
  the output convolution is zero-initialised, so the student starts as the identity (a
  translation keeps the source's layout). Trained by regression on the teacher's own
  translations (train/distill.py).
* ``meanflow`` -- an average-velocity model u(z, s, e, y) (MeanFlow, Geng et al. 2025): the
  teacher's trajectory through z at time s reaches z + (e - s) u at time e. A translation is two
  jumps: encode z_tau = x + (tau - 1) u(x, 1, tau, y_enc) and decode
  y = z_tau + (1 - tau) u(z_tau, tau, 1, y_tgt) -- any tau and any pair from one model. The span
  e - s enters through an added embedding (zero-initialised, so u starts as the teacher's
  velocity, its s = e limit), and a leg embedding tells the encode field (w_enc) from the decode
  field (w_dec). Trained with the MeanFlow identity u = v + (e - s) du/ds on the teacher's
  guided velocity v.

Networks (``arch``): ``unet`` -- the teacher's U-Net (initialised from it; both methods);
``lean`` -- the lean network of ``models.lean`` (one call only; ~20x less arithmetic per pixel,
no attention, no normalisation, a known receptive field; trained from the identity, no teacher
initialisation). A lean student with ``noise_channels > 0`` is *stochastic*: it takes per-pixel
standard-normal noise maps beside the image, G(x, n) = x + F(x, noise * n), drawn per image from
the caller's generator (``Translator.translate(x, generators=...)``; ``medshift translate``
seeds them from --seed and the image's path), so a rerun is byte-identical and another seed
gives another realisation of the texture with the same anatomy. ``noise_scale`` (the config's
default, a translation setting at run time) scales the maps: 0 is the deterministic member.

A one-call student with a *detector texture* (``texture``: a ``models.texture.DetectorNoise``
per target label, ``medshift distill --texture detector``) is stochastic too: its network makes
the noise-free translation c and the target domain's mottle is drawn from the fitted model,
G = c + noise_scale * a(c) (k_sigma * n), from one more noise map n; noise scale 0 gives c.

The teacher's settings (guidance, solver, steps) are recorded in the config: a request outside
what the student learned (another pair, tau outside its range, another solver setting) is a
``MedShiftError`` naming the allowed values.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import MedShiftError
from .lean import LeanConfig, LeanNet
from .texture import DetectorNoise
from .unet import UNet, UNetConfig, timestep_embedding

__all__ = ["STUDENT_ARCHS", "STUDENT_METHODS", "Student", "StudentConfig"]

STUDENT_METHODS = ("oneshot", "meanflow")
STUDENT_ARCHS = ("unet", "lean")
# teacher settings a student is bound to (TranslationSettings fields)
BOUND = ("guidance_encode", "guidance_decode", "steps", "solver")


@dataclass(frozen=True)
class StudentConfig:
    """A distilled student.

    Attributes:
        unet: the network's ``UNetConfig`` (the teacher's) as a dict (arch unet).
        method: oneshot | meanflow.
        pairs: (source, target) label pairs it learned.
        tau_min, tau_max: the translation times it learned.
        teacher: the teacher's translation settings (guidance_encode, guidance_decode, steps,
            solver) and its run.
        arch: unet (the teacher's U-Net) | lean (``models.lean``; oneshot only).
        lean: the ``LeanConfig`` as a dict (arch lean).
        noise_scale: default scale of a stochastic student's noise maps (the translation setting
            ``noise_scale`` overrides it; 0 = deterministic). Ignored by deterministic students.
        texture: {target label (str): ``DetectorNoise.to_dict()``} -- the detector noise added
            to the network's noise-free translation (oneshot only; empty: none).
    """

    unet: dict = dataclasses.field(default_factory=dict)
    method: str = "oneshot"
    pairs: tuple[tuple[int, int], ...] = ()
    tau_min: float = 0.3
    tau_max: float = 0.6
    teacher: dict = dataclasses.field(default_factory=dict)
    arch: str = "unet"
    lean: dict = dataclasses.field(default_factory=dict)
    noise_scale: float = 1.0
    texture: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pairs", tuple((int(a), int(b)) for a, b in self.pairs))
        if self.method not in STUDENT_METHODS:
            raise MedShiftError(f"unknown student method {self.method!r}; choose one of "
                                f"{', '.join(STUDENT_METHODS)}")
        if not 0.0 <= self.tau_min <= self.tau_max < 1.0:
            raise MedShiftError(f"student tau range must satisfy 0 <= tau_min <= tau_max < 1, got "
                                f"{self.tau_min}..{self.tau_max}")
        if self.arch not in STUDENT_ARCHS:
            raise MedShiftError(f"unknown student arch {self.arch!r}; choose one of "
                                f"{', '.join(STUDENT_ARCHS)}")
        if self.arch == "unet" and not self.unet:
            raise MedShiftError("a unet student needs its U-Net config (StudentConfig.unet)")
        if self.arch == "lean":
            if self.method != "oneshot":
                raise MedShiftError("the lean network is a one-call student: method must be "
                                    f"oneshot, got {self.method!r}")
            object.__setattr__(self, "lean", LeanConfig.from_dict(dict(self.lean)).to_dict())
        noise = float(self.noise_scale)
        if not math.isfinite(noise) or noise < 0:
            raise MedShiftError(f"student noise scale must be a finite number >= 0, got "
                                f"{self.noise_scale!r}")
        object.__setattr__(self, "noise_scale", noise)
        if self.texture and self.method != "oneshot":
            raise MedShiftError("a detector texture applies to one-call (oneshot) students")
        object.__setattr__(self, "texture", {str(int(k)): DetectorNoise.from_dict(v).to_dict()
                                             for k, v in dict(self.texture).items()})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["pairs"] = [list(p) for p in self.pairs]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StudentConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class Student(nn.Module):
    """A distilled translator (see the module docstring); ``translate`` is what callers use."""

    is_student = True

    def __init__(self, config: StudentConfig) -> None:
        super().__init__()
        self.config = config
        if config.arch == "lean":
            self.net = LeanNet(LeanConfig.from_dict(config.lean))
            n = self.net
            self.in_channels, self.num_classes, self.down_factor = (n.in_channels,
                                                                    n.num_classes, n.down_factor)
            self.net_noise = n.noise_channels
            self._set_texture(config)
            return
        self.net_noise = 0
        self._set_texture(config)
        self.unet = UNet(UNetConfig(**config.unet))
        u = self.unet
        self.in_channels, self.num_classes, self.down_factor = (u.in_channels, u.num_classes,
                                                                u.down_factor)
        ch = u.config.model_channels
        emb = 4 * ch
        if config.method == "oneshot":
            self.src_emb = nn.Embedding(u.num_classes + 1, emb)
            nn.init.zeros_(self.src_emb.weight)
        else:
            self.span_mlp = nn.Sequential(nn.Linear(ch, emb), nn.SiLU(), nn.Linear(emb, emb))
            nn.init.zeros_(self.span_mlp[2].weight)
            nn.init.zeros_(self.span_mlp[2].bias)
            self.leg_emb = nn.Embedding(2, emb)
            nn.init.zeros_(self.leg_emb.weight)

    def _set_texture(self, config: StudentConfig) -> None:
        """The detector noise models per target label; ``noise_channels`` counts every noise
        map the student takes (its network's, then one for the texture)."""
        self.textures = {int(k): DetectorNoise.from_dict(v) for k, v in config.texture.items()}
        self.noise_channels = self.net_noise + (1 if self.textures else 0)

    def texture_noise(self, clean: torch.Tensor, n: torch.Tensor,
                      y_tgt: torch.Tensor) -> torch.Tensor:
        """The detector noise of each image's target domain for the noise-free translations
        ``clean`` (B, C, H, W) from standard-normal maps ``n`` (B, 1, H, W) (zero for a target
        without a model; masks, not branches, so it traces)."""
        out = torch.zeros_like(clean)
        for g, model in self.textures.items():
            m = (y_tgt == g).to(clean.dtype).view(-1, 1, 1, 1)
            out = out + m * model.noise(clean, n)
        return out

    @property
    def calls(self) -> int:
        """Network evaluations per translation."""
        return 1 if self.config.method == "oneshot" else 2

    @property
    def stochastic(self) -> bool:
        """Whether the student takes noise maps (a lean student with noise_channels > 0, or a
        detector texture)."""
        return self.noise_channels > 0

    @property
    def halo(self) -> int | None:
        """The farthest input pixel that can change an output pixel (lean; None: the U-Net,
        whose attention and GroupNorm make it global)."""
        if self.config.arch != "lean":
            return None
        return max([self.net.halo, *(t.radius for t in self.textures.values())])

    def draw_noise(self, shape: tuple[int, ...], generator=None, device=None,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
        """Standard-normal noise maps (B, noise_channels, H, W) for images of ``shape``
        (B, C, H, W), drawn on the CPU from ``generator`` (a ``torch.Generator`` or the
        per-image ``flow.solvers.PerSampleGenerators``); None for a deterministic student."""
        if not self.stochastic:
            return None
        from ..flow.solvers import randn

        b, _, h, w = (int(v) for v in shape)
        return randn((b, self.noise_channels, h, w), generator).to(device=device, dtype=dtype)

    # ------------------------------------------------------------------------------ networks
    def forward(self, *args):
        """oneshot: (x, tau, y_src, y_tgt[, noise]) -> G; meanflow: (z, s, e, y, leg) -> u."""
        if self.config.method == "oneshot":
            return self.oneshot(*args)
        return self.average_velocity(*args)

    def init_from_teacher(self, teacher: UNet) -> None:
        """Copy the teacher's U-Net; a one-shot student's output convolution starts at zero.
        A lean student keeps its own initialisation (the identity map)."""
        if self.config.arch == "lean":
            return
        self.unet.load_state_dict(teacher.state_dict())
        if self.config.method == "oneshot":
            with torch.no_grad():
                for p in self.unet.out[-1].parameters():
                    p.zero_()

    def oneshot(self, x: torch.Tensor, tau: torch.Tensor, y_src: torch.Tensor,
                y_tgt: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """G(x, tau, y_src, y_tgt[, noise]): (B, C, H, W) model-space sources -> translations.

        ``noise``: (B, noise_channels, H, W) noise maps, already scaled (stochastic students;
        None = zeros, the deterministic member).
        """
        if self.config.arch == "lean":
            if noise is not None and self.net_noise == 0:
                noise = None
            elif noise is not None:
                noise = noise[:, :self.net_noise]
            return x + self.net(x, tau, y_src, y_tgt, noise)
        return x + self.unet(x, tau, y_tgt, self.src_emb(y_src))

    def average_velocity(self, z: torch.Tensor, s: torch.Tensor, e: torch.Tensor,
                         y: torch.Tensor, leg: torch.Tensor) -> torch.Tensor:
        """u(z, s, e, y): the mean velocity from time s (where the trajectory is at z) to e."""
        span = timestep_embedding(e - s, self.unet.config.model_channels).to(z.dtype)
        return self.unet(z, s, y, self.span_mlp(span) + self.leg_emb(leg))

    def encode_label(self, y_src: torch.Tensor) -> torch.Tensor:
        """The label of the encode field: the null label when the teacher encoded with w = 0."""
        if float(self.config.teacher.get("guidance_encode", 1.0)) == 0.0:
            return torch.full_like(y_src, self.num_classes)
        return y_src

    def translate(self, z: torch.Tensor, tau: float, y_src: torch.Tensor,
                  y_tgt: torch.Tensor, noise: torch.Tensor | None = None,
                  noise_scale: float | None = None) -> torch.Tensor:
        """The whole translation of model-space images z (B, C, h, w) at time tau.

        Args:
            noise: (B, noise_channels, h, w) standard-normal maps (``draw_noise``) of a
                stochastic student; None: the deterministic member (zeros).
            noise_scale: their scale (default: the config's ``noise_scale``).
        """
        b = z.shape[0]
        t = torch.full((b,), float(tau), device=z.device, dtype=torch.float32)
        if self.config.method == "oneshot":
            if noise is not None and self.stochastic:
                scale = self.config.noise_scale if noise_scale is None else float(noise_scale)
                noise = noise.to(z.dtype)
                out = self.oneshot(z, t, y_src, y_tgt, noise * scale)
                if self.textures and scale != 0:
                    out = out + scale * self.texture_noise(out, noise[:, -1:], y_tgt)
                return out
            return self.oneshot(z, t, y_src, y_tgt)
        one = torch.ones_like(t)
        enc = torch.zeros(b, dtype=torch.long, device=z.device)
        zt = z + (t - 1.0).view(-1, 1, 1, 1).to(z.dtype) * self.average_velocity(
            z, one, t, self.encode_label(y_src), enc)
        return zt + (1.0 - t).view(-1, 1, 1, 1).to(z.dtype) * self.average_velocity(
            zt, t, one, y_tgt, enc + 1)

    # ----------------------------------------------------------------------------- requests
    def defaults(self) -> dict[str, Any]:
        """The Translator settings a request to this student may omit (the teacher's)."""
        d = {k: self.config.teacher[k] for k in BOUND if k in self.config.teacher}
        if self.stochastic:
            d["noise_scale"] = self.config.noise_scale
        return d

    @property
    def tau_range(self) -> tuple[float, float]:
        """The translation times it learned (the Translator's default tau is clamped to it)."""
        return float(self.config.tau_min), float(self.config.tau_max)

    def check_request(self, s, domains=None) -> None:
        """Refuse (MedShiftError, naming the allowed values) what the student did not learn.

        Args:
            s: the requested ``TranslationSettings``.
            domains: domain names (index = label) to name the pairs with.
        """
        cfg, eps = self.config, 1e-6

        def name(i):
            return domains[i] if domains is not None else str(i)

        if cfg.pairs and (s.source, s.target) not in cfg.pairs:
            known = ", ".join(f"{name(a)} -> {name(b)}" for a, b in cfg.pairs)
            raise MedShiftError(f"this distilled student never learned {name(s.source)} -> "
                                f"{name(s.target)}; it knows {known}; distil it for that pair "
                                "(--pairs) or use the teacher run")
        if not cfg.tau_min - eps <= s.tau <= cfg.tau_max + eps:
            raise MedShiftError(f"this distilled student learned tau in [{cfg.tau_min:g}, "
                                f"{cfg.tau_max:g}], not {s.tau:g}; choose a tau in that range or "
                                "translate with the teacher run")
        for k in BOUND:
            want = cfg.teacher.get(k)
            if want is not None and getattr(s, k) != want:
                raise MedShiftError(f"{k}={getattr(s, k)!r} does not apply to a distilled student: "
                                    f"it reproduces its teacher's {k}={want!r} in {self.calls} "
                                    "network call(s); leave it out (or pass "
                                    f"{k}={want!r})")
        noise = getattr(s, "noise_scale", None)
        if noise is not None and not self.stochastic:
            raise MedShiftError(f"noise_scale={noise:g} does not apply to this student: it is "
                                "deterministic (no noise input); leave it out, or use a "
                                "student distilled with --noise-channels 1")
        if s.method != "medshift" or s.decode != "ode":
            raise MedShiftError("a distilled student reproduces the ODE translation only (no "
                                "sdedit, no SDE decode); use the teacher run for those")

    def extra_repr(self) -> str:
        c = self.config
        return (f"arch={c.arch}, method={c.method}, calls={self.calls}, tau=[{c.tau_min:g}, "
                f"{c.tau_max:g}], pairs={len(c.pairs)}, stochastic={self.stochastic}")


def pseudo_huber(pred: torch.Tensor, target: torch.Tensor, c: float | None = None) -> torch.Tensor:
    """sqrt(||pred - target||^2 + c^2) - c per sample, averaged (Song & Dhariwal 2023's loss;
    c = 0.00054 sqrt(d) by default, d the number of elements of one sample)."""
    d = pred[0].numel()
    c = 0.00054 * math.sqrt(d) if c is None else float(c)
    diff = (pred.float() - target.float()).flatten(1)
    return (torch.sqrt(diff.pow(2).sum(1) + c * c) - c).mean()
