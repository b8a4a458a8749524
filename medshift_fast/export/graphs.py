"""What gets exported: the guided velocity ``step`` and the unrolled ``translate`` pipeline.

Both are plain ``nn.Module`` wrappers around the U-Net that reuse the library's own solver code
(``flow.solvers.integrate`` + ``flow.guidance.make_field``), so the eager module IS the reference
an exported engine is verified against.

I/O contract (also written into every engine's JSON sidecar):

* ``step``: inputs ``x`` (B, C, S, S) float32 in model space, ``t`` (B,) float32 in [0, 1],
  ``y`` (B,) int64 domain labels (0..K-1, or K = null); output ``v`` (B, C, S, S) float32, the
  guided velocity v = v_uncond + w (v_cond - v_uncond) from one 2B forward with labels [y, null]
  (w = 1: one plain B forward).
* ``translate``: input ``image`` (B, C, S, S); output ``translated`` of the same shape and
  dtype. ``io="float"``: float32 in [-1, 1] (values outside are used as given). ``io="uint16"``:
  raw 16-bit frames, mapped in-graph by x = u * 2/65535 - 1 (as ``data.read_image`` maps a
  16-bit PNG) and back by rint((clamp(y, -1, 1) + 1) * 32767.5) (as ``data.to_uint16``). The
  output is always clamped to [-1, 1] before any back-mapping. Encode runs from t = 1 to tau
  with the source label, decode from tau to 1 with the target label, ``steps`` fixed steps per
  leg; tau = 1 is the identity (plus the clamp).

``dtype`` (fp32 | fp16 | bf16) is the compute dtype of the network and of the ODE state between
stages; the solver arithmetic is fp32 (as ``ops.guided_stage``) and the I/O dtypes above do not
change with it.

Latent-mode runs (``medshift train --latent RUN_AE``): the U-Net works on autoencoder latents
(z_c, S/f, S/f). Pass the run's codec (``LoadedRun.codec``) and ``translate`` keeps the pixel I/O
above: image -> z = scale (mean(q(z|x)) - shift) (the posterior mean, fp32) -> the encode/decode
ODE in latent space (U-Net in the compute dtype) -> D(z / scale + shift) clamped to [-1, 1]
(fp32) -> output; ``settings.size`` is the PIXEL size S and must be divisible by f (tau = 1 is
then the autoencoder round trip). ``step`` stays in latent space: x and v are
(B, z_c, S/f, S/f). The autoencoder is a deep-copied fp32 submodule (``LatentCodec``) whatever
the compute dtype. Only the package's own autoencoder (codec kind ``medshift``) is exportable.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .. import ops
from ..errors import MedShiftError
from ..flow.solvers import FIXED_SOLVERS, nfe
from ..translate.settings import DEFAULTS, TranslationSettings
from ..translate.translator import pipeline, uint16_to_unit, unit_to_uint16

WHATS = ("step", "translate")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
IOS = ("float", "uint16")
FIXED_STEP_SOLVERS = FIXED_SOLVERS


@dataclass(frozen=True)
class ExportSettings:
    """Fixed settings of one exported engine (validated; round-trips through the sidecar JSON).

    Attributes:
        what: "step" (guided velocity) or "translate" (whole pipeline).
        size: image side S in pixels (must be divisible by the U-Net's downsampling factor;
            latent-mode runs: by the autoencoder's factor f, and S / f by the U-Net's).
        batch: example / verification batch (and TensorRT's optimal and maximal batch).
        dtype: compute dtype fp32 | fp16 | bf16.
        io: "float" or "uint16" (translate only; step is always float).
        source, target: domain labels (translate).
        tau: translation time in [0, 1] (translate).
        guidance_encode, guidance_decode: CFG scales of the two legs (translate).
        guidance: CFG scale folded into the step graph (step).
        steps: fixed steps per leg (translate).
        solver: euler | midpoint | heun | rk4 (translate; dopri5 is adaptive, not exportable).
        noise_scale: a stochastic distilled student's noise scale (translate; None: the
            student's own). Its translate graph takes the standard-normal noise maps as a
            second input ``noise`` (scaled in the graph; zeros: the deterministic member).
        dynamic: free height and width (multiples of the network's factor; ``size`` is then
            the traced and verified side): the translate graph of a one-step student as a tile
            engine (``export.student_engine``).
    """

    what: str = "translate"
    size: int = 64
    batch: int = 1
    dtype: str = "fp32"
    io: str = "float"
    source: int | None = None
    target: int | None = None
    tau: float = DEFAULTS["tau"]  # every translation default: TranslationSettings'
    guidance_encode: float = DEFAULTS["guidance_encode"]
    guidance_decode: float = DEFAULTS["guidance_decode"]
    guidance: float = DEFAULTS["guidance_decode"]
    steps: int = DEFAULTS["steps"]
    solver: str = DEFAULTS["solver"]
    noise_scale: float | None = None
    dynamic: bool = False

    def __post_init__(self) -> None:
        if self.what not in WHATS:
            raise MedShiftError(f"unknown export graph {self.what!r}; choose step or translate")
        if self.dtype not in DTYPES:
            raise MedShiftError(f"unknown dtype {self.dtype!r}; choose fp32, fp16 or bf16")
        if self.io not in IOS:
            raise MedShiftError(f"unknown io {self.io!r}; choose float or uint16")
        if self.what == "step" and self.io != "float":
            raise MedShiftError("the step graph has float I/O only; drop --io uint16")
        if int(self.size) < 1 or int(self.batch) < 1:
            raise MedShiftError(f"size and batch must be >= 1 (got {self.size}, {self.batch})")
        if self.what == "translate":
            if self.source is None or self.target is None:
                raise MedShiftError("a translate export needs --source and --target domains")
            if not 0.0 <= float(self.tau) <= 1.0:
                raise MedShiftError(f"tau must be in [0, 1], got {self.tau}")
            if int(self.steps) < 1:
                raise MedShiftError(f"steps must be >= 1, got {self.steps}")
            if self.solver not in FIXED_STEP_SOLVERS:
                raise MedShiftError(
                    f"solver {self.solver!r} cannot be unrolled into a fixed graph; choose one of "
                    f"{', '.join(FIXED_STEP_SOLVERS)} (dopri5 is adaptive)"
                )

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def nfe(self, model: nn.Module | None = None) -> int:
        """U-Net evaluations in the graph (each a 2B forward when guided); a distilled student
        (``model``) makes its own number of calls."""
        if model is not None and getattr(model, "is_student", False):
            return int(model.calls) if self.what == "translate" else 0
        if self.what == "step" or float(self.tau) == 1.0:
            return 1 if self.what == "step" else 0
        return 2 * nfe(self.solver, int(self.steps))

    def to_dict(self) -> dict:
        return asdict(self)

    def translation(self) -> TranslationSettings:
        """The Translator description this translate graph computes."""
        return TranslationSettings(int(self.source), int(self.target), tau=float(self.tau),
                                   guidance_encode=float(self.guidance_encode),
                                   guidance_decode=float(self.guidance_decode),
                                   steps=int(self.steps), solver=self.solver,
                                   noise_scale=self.noise_scale)

    @classmethod
    def from_translator(cls, translator, what: str = "translate", size: int | None = None,
                        batch: int = 1, dtype: str = "fp32", io: str = "float",
                        guidance: float | None = None, dynamic: bool = False
                        ) -> ExportSettings:
        """Export settings of a :class:`medshift_fast.translate.Translator`'s description.

        Args:
            translator: the Translator (its run gives the default size).
            what: "translate" (its whole pipeline) or "step" (the guided velocity with
                ``guidance``, default its decode guidance).
            size, batch, dtype, io, dynamic: as the fields of the same name.
        """
        s = translator.settings
        if s.method != "medshift" or s.decode != "ode":
            raise MedShiftError(f"only the ODE translation can be exported (method "
                                f"{s.method!r}, decode {s.decode!r})")
        size = int(size or translator.run.image_size or 0)
        return cls(what=what, size=size, batch=batch, dtype=dtype, io=io,
                   source=s.source if what == "translate" else None,
                   target=s.target if what == "translate" else None, tau=s.tau,
                   guidance_encode=s.guidance_encode, guidance_decode=s.guidance_decode,
                   guidance=s.guidance_decode if guidance is None else guidance,
                   steps=s.steps, solver=s.solver,
                   noise_scale=s.noise_scale if what == "translate" else None,
                   dynamic=bool(dynamic))

    @classmethod
    def from_dict(cls, d: dict) -> ExportSettings:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def export_codec(codec) -> object | None:
    """The codec to export with, or None in pixel mode; MedShiftError for an unexportable one.

    Args:
        codec: None, a ``models.codec`` codec (``LoadedRun.codec``) or a ``LatentCodec``.
    """
    kind = getattr(codec, "kind", "pixel") if codec is not None else "pixel"
    if kind == "pixel":
        return None
    if isinstance(codec, LatentCodec):
        return codec
    if kind == "diffusers":
        raise MedShiftError(
            "export of diffusers-latent runs is not supported: a diffusers AutoencoderKL has not "
            "been verified to export (ONNX / torch.export) on this project's machines. Translate "
            "with `medshift translate` / deploy.FrameTranslator instead, or train the package's "
            "own autoencoder (`medshift train-autoencoder`) and retrain with --latent RUN_AE")
    if kind != "medshift" or not isinstance(getattr(codec, "module", None), nn.Module):
        raise MedShiftError(f"cannot export a run with latent codec kind {kind!r}; only the "
                            "package's own autoencoder (--latent RUN_AE) is exportable")
    return codec


def _factor(codec) -> int:
    return int(codec.factor) if codec is not None else 1


def _codec_image_channels(codec) -> int:
    if isinstance(codec, LatentCodec):
        return codec.image_channels
    cfg = getattr(codec.module, "config", None)
    return int(getattr(cfg, "in_channels", getattr(codec, "in_channels", 1)))


def image_channels(model: nn.Module, codec=None) -> int:
    """Channels of a pixel image: the autoencoder's input (latent mode) or the U-Net's."""
    codec = export_codec(codec)
    return int(model.in_channels) if codec is None else _codec_image_channels(codec)


def io_layout(model: nn.Module, settings: ExportSettings, codec=None) -> tuple[int, int]:
    """(channels, side) of the graph's image tensors: pixels for translate, model space for step.

    Pixel mode: (C, S). Latent mode: translate (C_img, S), step (z_c, S / f).
    """
    codec = export_codec(codec)
    if settings.what == "translate":
        return image_channels(model, codec), int(settings.size)
    return int(model.in_channels), model_size(settings, codec)


def model_size(settings: ExportSettings, codec=None) -> int:
    """Side of the U-Net's input: settings.size, or settings.size / f in latent mode."""
    return int(settings.size) // _factor(export_codec(codec))


def check_model(model: nn.Module, settings: ExportSettings, codec=None) -> None:
    """Raise MedShiftError when the settings do not fit the model (labels, size, codec)."""
    codec = export_codec(codec)
    k = int(model.num_classes)
    for name in ("source", "target"):
        lab = getattr(settings, name)
        if settings.what == "translate" and not 0 <= int(lab) < k:
            raise MedShiftError(f"{name} label {lab} out of range 0..{k - 1}")
    size = int(settings.size)
    if codec is not None:
        fa = _factor(codec)
        if size % fa:
            raise MedShiftError(
                f"size {size} must be divisible by the autoencoder's downsampling factor {fa} "
                f"(this is a latent-mode run: --size is the pixel size, the U-Net sees "
                f"size / {fa}); pick e.g. --size {max(fa, size // fa * fa)}")
        if int(codec.channels) != int(model.in_channels):
            raise MedShiftError(f"the autoencoder has {codec.channels} latent channels but the "
                                f"U-Net takes {model.in_channels}: this codec is not the run's")
        size //= fa
    f = int(getattr(model, "down_factor", 1))
    if size % f:
        what = (f"size {size}" if codec is None else
                f"latent size {size} (size {settings.size} / {_factor(codec)})")
        raise MedShiftError(f"{what} must be divisible by {f} for this model")
    if settings.dynamic and (settings.what != "translate" or codec is not None
                             or not getattr(model, "is_student", False)):
        raise MedShiftError("a graph of free height and width (dynamic) is exported for a "
                            "pixel-space one-step student's translation only")


def noise_channels(model: nn.Module, settings: ExportSettings) -> int:
    """Noise maps a stochastic student's translate graph takes as its second input (0: none,
    also for its deterministic member, ``noise_scale`` 0)."""
    if settings.what != "translate" or not getattr(model, "stochastic", False):
        return 0
    scale = model.config.noise_scale if settings.noise_scale is None else settings.noise_scale
    return int(model.noise_channels) if scale != 0 else 0


def cast_model(model: nn.Module, settings: ExportSettings) -> nn.Module:
    """A copy of the model in the compute dtype (the caller's model is left untouched)."""
    m = copy.deepcopy(model).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m.to(settings.torch_dtype)


class StepModule(nn.Module):
    """Guided velocity v(x, t, y) with the guidance scale folded in (one 2B forward)."""

    def __init__(self, model: nn.Module, settings: ExportSettings) -> None:
        super().__init__()
        self.model = model
        self.w = float(settings.guidance)
        self.null = int(model.num_classes)
        self.dtype = settings.torch_dtype

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x (B, C, S, S) float32, t (B,) float32, y (B,) int64 -> v (B, C, S, S) float32."""
        x = x.to(self.dtype)
        t = t.to(torch.float32)
        if self.w == 1.0:
            return self.model(x, t, y).to(torch.float32)
        if self.w == 0.0:  # the unconditional field: a B forward with the null label
            return self.model(x, t, torch.full_like(y, self.null)).to(torch.float32)
        b = x.shape[0]
        v = self.model(torch.cat([x, x]), torch.cat([t, t]),
                       torch.cat([y, torch.full_like(y, self.null)]))
        return ops.guided_velocity(v[:b].float(), v[b:].float(), self.w)


class LatentCodec(nn.Module):
    """A run's autoencoder as an fp32 submodule (deep copy, eval mode, no gradients).

    ``encode``: x (B, C_img, S, S) -> z = scale (mean(q(z|x)) - shift), (B, z_c, S/f, S/f).
    ``decode``: z -> D(z / scale + shift) clamped to [-1, 1], (B, C_img, S, S). The same
    arithmetic as ``models.codec.AutoencoderCodec`` (which the run translates with eagerly).
    """

    kind = "medshift"

    def __init__(self, codec) -> None:
        super().__init__()
        codec = export_codec(codec)
        if codec is None:
            raise MedShiftError("LatentCodec needs a latent-mode codec, got pixel mode")
        self.image_channels = _codec_image_channels(codec)
        ae = codec.ae if isinstance(codec, LatentCodec) else codec.module
        self.ae = copy.deepcopy(ae).float().eval()
        for p in self.ae.parameters():
            p.requires_grad_(False)
        self.scale, self.shift = float(codec.scale), float(getattr(codec, "shift", 0.0))
        self.factor, self.channels = int(codec.factor), int(codec.channels)
        self.ref = codec.reference() if hasattr(codec, "reference") else None

    def reference(self) -> dict | None:
        return self.ref

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C_img, S, S) float32 -> scaled posterior mean (B, z_c, S/f, S/f) float32."""
        return (self.ae.encode(x)[0] - self.shift) * self.scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, z_c, S/f, S/f) float32 -> image (B, C_img, S, S) float32 in [-1, 1]."""
        return self.ae.decode(z / self.scale + self.shift).clamp(-1.0, 1.0)


class TranslateModule(nn.Module):
    """Pre-processing + [codec encode] + encode (1 -> tau, source) + decode (tau -> 1, target)
    + [codec decode] + post-processing (the codec steps only for a latent-mode run)."""

    def __init__(self, model: nn.Module, settings: ExportSettings,
                 codec: LatentCodec | None = None) -> None:
        super().__init__()
        self.model = model
        self.codec = codec
        self.s = settings
        self.translation = settings.translation()

    def forward(self, image: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """image (B, C, S, S) float32 in [-1, 1] or uint16 -> translated, same shape and dtype.
        ``noise``: a stochastic student's standard-normal maps (B, N, S, S) (None: zeros, the
        deterministic member)."""
        s = self.s
        x = uint16_to_unit(image) if s.io == "uint16" else image.to(torch.float32)
        if noise is None and getattr(self.model, "stochastic", False):
            noise = torch.zeros((x.shape[0], int(self.model.noise_channels), *x.shape[2:]),
                                dtype=x.dtype, device=x.device)
        # the Translator's own pipeline: fp32 codec, the flow in the compute dtype, clamp
        y = pipeline(self.model, self.codec, x, self.translation, s.torch_dtype, noise=noise)
        return unit_to_uint16(y) if s.io == "uint16" else y


def build_module(model: nn.Module, settings: ExportSettings, codec=None) -> nn.Module:
    """The eager module for these settings (a dtype-cast copy of ``model``).

    Args:
        model: the U-Net.
        settings: export settings.
        codec: the run's codec (latent mode; None or a pixel codec otherwise). ``translate``
            gets it as an fp32 ``LatentCodec`` submodule on the U-Net's device; ``step`` works
            in latent space and does not need it.
    """
    check_model(model, settings, codec)
    codec = export_codec(codec)
    m = cast_model(model, settings)
    if settings.what == "step":
        if getattr(model, "is_student", False):
            raise MedShiftError("a distilled student has no velocity field to export; export "
                                "--what translate (or the teacher run's step graph)")
        return StepModule(m, settings).eval()
    lc = None
    if codec is not None:
        lc = LatentCodec(codec).to(next(model.parameters()).device)
    return TranslateModule(m, settings, lc).eval()


def example_inputs(settings: ExportSettings, num_classes: int, in_channels: int,
                   batch: int | None = None, device: str | torch.device = "cpu",
                   seed: int = 0, size: int | tuple[int, int] | None = None,
                   noise_channels: int = 0) -> tuple[torch.Tensor, ...]:
    """Deterministic inputs of the graph's signature (smooth images + noise, valid t and y).

    Args:
        settings: export settings.
        num_classes: K (step labels are drawn from 0..K, the null label included).
        in_channels: C (of the graph's image tensors, see ``io_layout``).
        batch: B (default settings.batch).
        device: where to put the tensors.
        seed: generator seed.
        size: S of the graph's image tensors (default settings.size; a latent run's step
            graph takes settings.size / f, see ``io_layout``), or (H, W) (a dynamic graph).
        noise_channels: a stochastic student's noise maps (``noise_channels``): translate then
            returns (image, noise).

    Returns:
        (image,) (B, C, S, S) for translate (and noise (B, N, S, S) for a stochastic student);
        (x, t, y) with shapes (B, C, S, S), (B,), (B,) for step.
    """
    b = int(batch or settings.batch)
    hs, ws = (int(size[0]), int(size[1])) if isinstance(size, tuple) else (
        int(size or settings.size),) * 2
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, hs), torch.linspace(-1, 1, ws), indexing="ij")
    phase = torch.rand(b, in_channels, 1, 1, generator=g) * 6.28
    img = 0.6 * torch.sin(3 * xx + 2 * yy + phase) * torch.cos(2 * yy - xx)
    img = (img + 0.15 * torch.randn(b, in_channels, hs, ws, generator=g)).clamp(-1, 1)
    if settings.what == "translate":
        img = (unit_to_uint16(img) if settings.io == "uint16" else img).to(device)
        if noise_channels:
            return img, torch.randn(b, int(noise_channels), hs, ws, generator=g).to(device)
        return (img,)
    t = torch.rand(b, generator=g)
    y = torch.randint(0, num_classes + 1, (b,), generator=g)
    return img.to(device), t.to(device), y.to(device)
