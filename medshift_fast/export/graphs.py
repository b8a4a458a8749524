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
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .. import ops
from ..errors import MedShiftError
from ..flow.guidance import make_field
from ..flow.solvers import SOLVERS, integrate, nfe

WHATS = ("step", "translate")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
IOS = ("float", "uint16")
FIXED_STEP_SOLVERS = tuple(s for s in SOLVERS if s != "dopri5")
U16_MAX = 65535.0


@dataclass(frozen=True)
class ExportSettings:
    """Fixed settings of one exported engine (validated; round-trips through the sidecar JSON).

    Attributes:
        what: "step" (guided velocity) or "translate" (whole pipeline).
        size: image side S (must be divisible by the U-Net's downsampling factor).
        batch: example / verification batch (and TensorRT's optimal and maximal batch).
        dtype: compute dtype fp32 | fp16 | bf16.
        io: "float" or "uint16" (translate only; step is always float).
        source, target: domain labels (translate).
        tau: translation time in [0, 1] (translate).
        guidance_encode, guidance_decode: CFG scales of the two legs (translate).
        guidance: CFG scale folded into the step graph (step).
        steps: fixed steps per leg (translate).
        solver: euler | midpoint | heun | rk4 (translate; dopri5 is adaptive, not exportable).
    """

    what: str = "translate"
    size: int = 64
    batch: int = 1
    dtype: str = "fp32"
    io: str = "float"
    source: int | None = None
    target: int | None = None
    tau: float = 0.6
    guidance_encode: float = 2.0
    guidance_decode: float = 2.0
    guidance: float = 2.0
    steps: int = 20
    solver: str = "heun"

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

    def nfe(self) -> int:
        """U-Net evaluations in the graph (each a 2B forward when guided)."""
        if self.what == "step" or float(self.tau) == 1.0:
            return 1 if self.what == "step" else 0
        return 2 * nfe(self.solver, int(self.steps))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ExportSettings:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def check_model(model: nn.Module, settings: ExportSettings) -> None:
    """Raise MedShiftError when the settings do not fit the model (labels, size)."""
    k = int(model.num_classes)
    for name in ("source", "target"):
        lab = getattr(settings, name)
        if settings.what == "translate" and not 0 <= int(lab) < k:
            raise MedShiftError(f"{name} label {lab} out of range 0..{k - 1}")
    f = int(getattr(model, "down_factor", 1))
    if settings.size % f:
        raise MedShiftError(f"size {settings.size} must be divisible by {f} for this model")


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
        b = x.shape[0]
        v = self.model(torch.cat([x, x]), torch.cat([t, t]),
                       torch.cat([y, torch.full_like(y, self.null)]))
        return ops.guided_velocity(v[:b].float(), v[b:].float(), self.w)


def uint16_to_unit(u: torch.Tensor) -> torch.Tensor:
    """Raw 16-bit counts -> [-1, 1] float32 (x = u * 2/65535 - 1)."""
    return u.to(torch.float32) * (2.0 / U16_MAX) - 1.0


def unit_to_uint16(y: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float -> uint16 counts, rint((clamp(y) + 1) * 32767.5) (round half to even)."""
    return torch.round((y.clamp(-1.0, 1.0) + 1.0) * (U16_MAX / 2.0)).to(torch.uint16)


class TranslateModule(nn.Module):
    """Pre-processing + encode (1 -> tau, source) + decode (tau -> 1, target) + post-processing."""

    def __init__(self, model: nn.Module, settings: ExportSettings) -> None:
        super().__init__()
        self.model = model
        self.s = settings

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image (B, C, S, S) float32 in [-1, 1] or uint16 -> translated, same shape and dtype."""
        s = self.s
        x = uint16_to_unit(image) if s.io == "uint16" else image.to(torch.float32)
        x = x.to(s.torch_dtype)
        tau = float(s.tau)
        if tau < 1.0:
            b = x.shape[0]
            y_src = torch.full((b,), int(s.source), dtype=torch.long, device=x.device)
            y_tgt = torch.full((b,), int(s.target), dtype=torch.long, device=x.device)
            we, wd = float(s.guidance_encode), float(s.guidance_decode)
            n = int(s.steps)
            z = integrate(make_field(self.model, y_src, we), x, 1.0, tau, n, s.solver, we)
            x = integrate(make_field(self.model, y_tgt, wd), z, tau, 1.0, n, s.solver, wd)
        y = x.to(torch.float32).clamp(-1.0, 1.0)
        return unit_to_uint16(y) if s.io == "uint16" else y


def build_module(model: nn.Module, settings: ExportSettings) -> nn.Module:
    """The eager module for these settings (a dtype-cast copy of ``model``)."""
    check_model(model, settings)
    m = cast_model(model, settings)
    mod = StepModule(m, settings) if settings.what == "step" else TranslateModule(m, settings)
    return mod.eval()


def example_inputs(settings: ExportSettings, num_classes: int, in_channels: int,
                   batch: int | None = None, device: str | torch.device = "cpu",
                   seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Deterministic inputs of the graph's signature (smooth images + noise, valid t and y).

    Args:
        settings: export settings.
        num_classes: K (step labels are drawn from 0..K, the null label included).
        in_channels: C.
        batch: B (default settings.batch).
        device: where to put the tensors.
        seed: generator seed.

    Returns:
        (image,) (B, C, S, S) for translate; (x, t, y) with shapes (B, C, S, S), (B,), (B,)
        for step.
    """
    b = int(batch or settings.batch)
    s = int(settings.size)
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, s), torch.linspace(-1, 1, s), indexing="ij")
    phase = torch.rand(b, in_channels, 1, 1, generator=g) * 6.28
    img = 0.6 * torch.sin(3 * xx + 2 * yy + phase) * torch.cos(2 * yy - xx)
    img = (img + 0.15 * torch.randn(b, in_channels, s, s, generator=g)).clamp(-1, 1)
    if settings.what == "translate":
        return ((unit_to_uint16(img) if settings.io == "uint16" else img).to(device),)
    t = torch.rand(b, generator=g)
    y = torch.randint(0, num_classes + 1, (b,), generator=g)
    return img.to(device), t.to(device), y.to(device)
