"""The one Translator: fixed settings + an execution mode + the run's codec + pixel I/O.

Every consumer translates through it: ``medshift translate`` (``translate.files``), ``medshift
evaluate``, the demo, ``deploy.FrameTranslator`` (a fixed-shape streaming wrapper) and ``medshift
export`` (which builds its graph from ``Translator.settings`` and ``pipeline``). Its settings
are one ``TranslationSettings`` (``translate.settings``: the only home of their defaults).

    pixels (B, C, H, W) in [-1, 1]  --codec.encode-->  model space
        --encode 1 -> tau (source label, w_enc) + decode tau -> 1 (target label, w_dec)-->
    model space  --codec.decode, clamp to [-1, 1]-->  pixels

Methods: ``medshift`` (the ODE translation above; ``decode="sde"`` decodes with the stochastic
bridge instead, see ``flow.translate.sde_decode``), ``sdedit`` (the SDEdit-style baseline:
noise the source to tau along the path with a fresh x_0, then decode). A distilled run
(``kind == "student"``) does the whole translation in one network call.

Execution modes (the same numbers, to the fp32 tolerance table):

* ``eager``: ``flow.translate`` (solvers.integrate) -- every solver, dopri5 included;
* ``fused``: the preallocated ``flow.sampler.Sampler`` (fused guided stages, no allocations);
* ``compiled``: the Sampler with the forward through ``torch.compile`` and Inductor freezing
  (a static batch: inputs are chunked to ``batch_size`` and the last chunk is padded);
* ``cuda_graph``: the Sampler's whole loop captured as one CUDA graph (CUDA only).

A one-step student has no solver loop: its network runs through an execution engine
(``engine``: eager, channels_last, compile, cuda_graph, onnx; ``auto`` the fastest measured, bf16
where the hardware has it natively and the check holds -- ``translate.engine``).

Native resolution: the translator holds a :class:`~medshift_fast.translate.native.NativePlanner`
(``translator.native``): tiles blended with a smooth window for images larger than the trained
tile, a memory plan before any work, degenerate-shape checks, and what the run learned (working
scale, intensity rule) for file inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import MedShiftError
from ..flow.solvers import FIXED_SOLVERS, PerSampleGenerators
from . import memory
from .checks import check_unit_range
from .intensity import DEFAULT_MODE
from .native import MAX_ASPECT, NativePlanner
from .pipeline import (  # noqa: F401 - the public helpers keep their old home
    DEFAULT,
    U16_MAX,
    UNIT_FIX,
    _Default,
    _generator,
    as_image_batch,
    pipeline,
    translate_model_space,
    uint16_to_unit,
    unit_to_uint16,
)
from .settings import DEFAULTS, ENGINES, MODES, TranslationSettings, resolve

__all__ = ["DEFAULT", "MAX_ASPECT", "Translator", "pipeline", "translate_model_space",
           "uint16_to_unit", "unit_to_uint16"]


class Translator:
    """Translate pixel images between two domains of a run with fixed settings.

    Args:
        run: a loaded run (``run.load_run``), a run directory, or a bare velocity model
            (labels are then ints).
        source, target: domain names (or label ints).
        tau, guidance_encode, guidance_decode, steps, solver, method, decode, sde_noise, seed,
            noise_scale: see :class:`TranslationSettings`; None takes the run's default (the
            settings' defaults; a distilled student's teacher settings, tau range and noise
            scale).
        mode: eager | fused | compiled | cuda_graph (module docstring).
        device: where the network runs (default: where the run is).
        bf16: bf16 autocast of the forward (fused/compiled/cuda_graph modes; a one-step
            student's engine). None (default): False for a flow run; for a student, bf16 where
            the hardware has it natively and the quality check holds (``translate.engine``).
        channels_last: channels_last network weights (fused/compiled/cuda_graph modes).
        engine: how a one-step student's network runs: auto | eager | channels_last | compile
            | cuda_graph | onnx (``translate.engine``; onnx is provided by the export layer), or
            an engine object with ``Student.translate``'s signature. A student given mode
            compiled / cuda_graph runs engine compile / cuda_graph. Ignored by flow runs.
        batch_size: chunk size of a call; the compiled mode pads the last chunk to it (one
            static shape). Default: the whole input (compiled: the first call's batch); the
            memory plan may take fewer images per chunk.
        tile: tile side in pixels: "auto" (the tile the run was trained on, ``learned.tile``),
            an int, or None (never tile: global attention over the whole image); default
            (``DEFAULT``): the settings' default.
        overlap: tile overlap in pixels (default: the settings' rule: twice the receptive-field
            halo for a local network, exact tiles; a quarter of the tile otherwise).
        tile_batch: tiles per network forward (default: what the memory plan allows, at
            most 16 on a CPU and 64 on a GPU).
        max_memory: memory budget of a call in bytes or as "4G" (default:
            ``memory.DEFAULT_FRACTION`` of the memory available when the call starts).

    ``translator(images)`` takes a tensor or NumPy array of shape (H, W), (C, H, W) or
    (B, C, H, W), float in [-1, 1] or uint16 raw counts (mapped as ``data.read_image`` maps a
    16-bit PNG), and returns the translation with the same shape, kind, dtype and device. Any
    H, W of at least ``min_side`` pixels works (padded to the network's factor internally).

    Raises:
        MedShiftError: unknown domain, bad settings, an input of the wrong shape or dtype, NaN/Inf,
            float values outside [-1, 1], a degenerate shape, a request that cannot fit the
            memory budget.
    """

    def __init__(self, run, source, target, *, tau: float | None = None,
                 guidance_encode: float | None = None, guidance_decode: float | None = None,
                 steps: int | None = None, solver: str | None = None,
                 method: str | None = None, decode: str | None = None,
                 sde_noise: float | None = None, seed: int | None = None,
                 noise_scale: float | None = None, mode: str = "eager",
                 device: torch.device | str | None = None, bf16: bool | None = None,
                 channels_last: bool = False, batch_size: int | None = None,
                 tile: int | str | None | _Default = DEFAULT, overlap: int | None = None,
                 tile_batch: int | None = None, max_memory: int | str | None = None,
                 engine: str | Any = ENGINES[0]) -> None:
        from ..run import LoadedRun, load_run, resolve_device

        if isinstance(run, (str, Path)):
            run = load_run(run, device=device or "cpu")
        elif isinstance(run, nn.Module):
            run = LoadedRun.from_model(run)
        if not isinstance(run, LoadedRun):
            raise MedShiftError(f"Translator: pass a run directory, a loaded run or a model, not "
                                f"{type(run).__name__}")
        if mode not in MODES:
            raise MedShiftError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        if batch_size is not None and int(batch_size) < 1:
            raise MedShiftError(f"batch_size must be >= 1, got {batch_size}")
        self.run = run
        defaults = dict(DEFAULTS)
        if run.kind == "student":  # a student's defaults: its teacher's settings, its tau range
            defaults.update(run.model.defaults())
            lo, hi = run.model.tau_range
            defaults["tau"] = DEFAULTS["tau"] if lo <= DEFAULTS["tau"] <= hi else hi
        vals = resolve(dict(tau=tau, guidance_encode=guidance_encode,
                            guidance_decode=guidance_decode, steps=steps, solver=solver,
                            method=method, decode=decode, sde_noise=sde_noise, seed=seed,
                            overlap=overlap, noise_scale=noise_scale), defaults)
        if not isinstance(tile, _Default):  # None here means "never tile", not "default"
            vals["tile"] = tile
        self.settings = TranslationSettings(run.label(source), run.label(target), **vals)
        self._auto_noise = noise_scale is None  # the run's default scale: texture rule applies
        s = self.settings
        if run.kind == "student":
            run.model.check_request(s, run.domains)
        elif s.noise_scale is not None:
            raise MedShiftError("noise_scale applies to a stochastic distilled student "
                                "(`medshift distill --noise-channels 1`); a flow run's "
                                "stochastic translation is decode='sde' with sde_noise")
        self.device = resolve_device(device) if device is not None else run.device
        if mode == "cuda_graph" and self.device.type != "cuda":
            raise MedShiftError("mode 'cuda_graph' needs a CUDA device")
        if isinstance(engine, str) and engine not in ENGINES:
            raise MedShiftError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
        if not isinstance(engine, str) and not callable(getattr(engine, "translate", None)):
            raise MedShiftError("engine must be a name or an object with a translate method")
        if mode != "eager":
            if run.kind == "student":  # one network call: no solver loop to fuse
                if engine == "auto" and mode in ("compiled", "cuda_graph"):
                    engine = "compile" if mode == "compiled" else "cuda_graph"
                mode = "eager"
            elif s.solver not in FIXED_SOLVERS:
                raise MedShiftError(f"mode {mode!r} needs a fixed-step solver "
                                    f"({', '.join(FIXED_SOLVERS)}), not {s.solver!r}")
            elif s.method != "medshift" or s.decode != "ode":
                raise MedShiftError(f"mode {mode!r} runs the ODE translation only; use "
                                    "mode='eager' for sdedit or the SDE decode")
        if engine == "cuda_graph" and self.device.type != "cuda":
            raise MedShiftError("engine 'cuda_graph' needs a CUDA device")
        run.to(self.device)
        self.mode, self.channels_last = mode, bool(channels_last)
        self._bf16_request = None if bf16 is None else bool(bf16)
        self.bf16 = bool(bf16) if run.kind != "student" else False  # a student's: its engine's
        self._engine_request, self._engine = engine, None
        self.batch_size = None if batch_size is None else int(batch_size)
        self.model, self.codec = run.model, run.codec
        self.dtype = next(self.model.parameters()).dtype
        self._gen = _generator(s)  # advances call after call (sdedit / SDE noise)
        self._samplers: dict[tuple, Any] = {}
        self.native = NativePlanner(run, self.model, self.codec, s, self.device, self.bf16,
                                    tile_batch, max_memory, self.image_channels,
                                    run.domains[s.source] if run.domains else str(s.source))
        self.last_plan: memory.MemoryPlan | None = None
        self._plans: dict[tuple, memory.MemoryPlan] = {}

    # ---------------------------------------------------------------------------- the engine
    @property
    def engine(self):
        """A one-step student's execution engine (``translate.engine``; built on first use:
        ``auto`` runs its bf16 check then, ``onnx`` exports or loads its cached engine); None
        for a flow run."""
        if self.run.kind != "student":
            return None
        if self._engine is None:
            from . import engine as E

            req, bf16 = self._engine_request, self._bf16_request
            if not isinstance(req, str):
                self._engine = req
                return req
            if req == "auto":
                s = self.settings
                side = max(self.factor * 2, 128 // self.factor * self.factor)
                req, bf16 = E.choose(
                    self.native.halo is not None, self.device, bf16,
                    lambda: E.bf16_ok(self.model, s.tau, s.source, s.target, side))
            self._engine = E.build(req, self, bool(bf16))
            self.bf16 = bool(getattr(self._engine, "bf16", bf16))
        return self._engine

    # ---------------------------------------------------------------------------- properties
    @property
    def domains(self) -> tuple[str, str]:
        """The source and target domain names."""
        return self.run.domains[self.settings.source], self.run.domains[self.settings.target]

    @property
    def image_channels(self) -> int:
        """Channels of a pixel image (the codec's input in latent mode, else the network's)."""
        return int(getattr(self.codec, "image_channels", None) or self.run.in_channels)

    @property
    def factor(self) -> int:
        """Pixel sizes must be multiples of this (the U-Net's and the codec's downsampling)."""
        return int(getattr(self.model, "down_factor", 1)) * int(self.codec.factor)

    @property
    def tile(self) -> int | None:
        """Tile side in pixels (None: the whole image at once)."""
        return self.native.tile

    @property
    def overlap(self) -> int:
        """Tile overlap in pixels."""
        return self.native.overlap

    @property
    def tile_batch(self) -> int | None:
        """Tiles per network forward (None: what the memory plan allows)."""
        return self.native.tile_batch

    @property
    def max_memory(self) -> int | None:
        """Memory budget of a call in bytes (None: a fraction of what is available)."""
        return self.native.max_memory

    @property
    def learned(self):
        """What the run learned (``translate.learned.Learned``: pixel scale, intensities)."""
        return self.native.learned

    @property
    def min_side(self) -> int:
        """The smallest image side translated."""
        return self.native.min_side

    def check_shape(self, h: int, w: int, what: str = "image") -> None:
        """Refuse a degenerate shape (``NativePlanner.check_shape``)."""
        self.native.check_shape(h, w, what)

    def working_scale(self, shape: tuple[int, int], spacing_mm: float | None = None,
                      size: int | str | None = None):
        """The grid a file input of ``shape`` is translated on (``learned.WorkingScale``)."""
        return self.native.working_scale(shape, spacing_mm, size)

    def check_intensity(self, img, what: str = "image", *, source=None,
                        mode: str = DEFAULT_MODE, input_bits: int | None = None):
        """The intensity rule for one input against the source domain's training record.

        Args:
            img: float pixels in [-1, 1] or raw uint16 counts (any shape).
            what: the input named in messages.
            source: the ``data.io.ImageSource`` of a file (its container, declared bits and
                modality decide a refusal), or None for an array.
            mode: check (refuse a container mismatch or a non-radiograph far outside the
                training range, warn when outside) | as-is | match.
            input_bits: the ``input_bits`` the file was read with.

        Returns:
            An ``intensity.Verdict``: print its ``warning`` if any, translate
            ``verdict.apply(img)`` and pass the output through ``verdict.restore``.

        Raises:
            MedShiftError: a refusal, naming the flag that applies (``--input-bits N``,
                ``--intensity match`` / ``as-is``).
        """
        return self.native.check_intensity(img, what, source=source, mode=mode,
                                           input_bits=input_bits)

    def plan(self, shape: tuple[int, ...], io_bytes: int = 0, what: str | None = None
             ) -> memory.MemoryPlan:
        """The memory plan of translating a batch of ``shape`` (``NativePlanner.plan``)."""
        return self.native.plan(shape, io_bytes, what)

    def describe(self) -> dict[str, Any]:
        """The settings with domain names, the run and the mode (for manifests and metadata)."""
        src, tgt = self.domains
        return {**self.settings.to_dict(), "source_domain": src, "target_domain": tgt,
                "run": None if self.run.path is None else str(self.run.path),
                "kind": self.run.kind, "mode": self.mode}

    def check_size(self, h: int, w: int) -> None:
        """Exact multiples of the factor (fixed-shape consumers: FrameTranslator, export)."""
        f = self.factor
        if h % f or w % f:
            raise MedShiftError(f"image size {h}x{w} must be divisible by {f} for this model; "
                                f"resize, crop or pad it (e.g. to {max(f, h // f * f)}x"
                                f"{max(f, w // f * f)})")

    # ------------------------------------------------------------------------------ calling
    def __call__(self, images):
        """Translate images of any supported kind; see the class docstring."""
        x, back = as_image_batch(images, self.image_channels)
        return back(self.translate(x))

    def texture_off(self, h: int, w: int) -> bool:
        """Whether a working grid of ``h`` x ``w`` gets the noise-free translation of a student
        with a detector texture: its noise was fitted at the learned scale, so on a grid more
        than 2x from it (``learned.size_warning``, e.g. --size native on a radiograph) it
        would add a 128-px detector's grain to another detector's pixels. Only when the noise
        scale was left to the run's default; an explicit ``noise_scale`` is kept."""
        return bool(self._auto_noise and getattr(self.model, "textures", None)
                    and self.learned.size_warning((int(h), int(w))) is not None)

    @torch.no_grad()
    def translate(self, x: torch.Tensor, generators=None) -> torch.Tensor:
        """(B, C, H, W) float pixels in [-1, 1] -> translated float32 pixels (on the device).

        Args:
            x: images of any size of at least ``min_side`` px (padded to the network's factor
                internally, cropped back).
            generators: optional list of B CPU generators, one per image, for the noise of
                sdedit / the SDE decode (an image's output then does not depend on the others
                in the batch); default: the translator's own generator, advancing call by call.
        """
        if x.dim() != 4 or not x.is_floating_point():
            raise MedShiftError(f"Translator.translate: expected a (B, C, H, W) float tensor, got "
                                f"{tuple(x.shape)} {x.dtype}")
        if x.shape[1] != self.image_channels or x.shape[0] == 0:
            raise MedShiftError(f"Translator.translate: expected {self.image_channels} "
                                f"channel(s) and at least one image, got {tuple(x.shape)}")
        h, w = int(x.shape[-2]), int(x.shape[-1])
        self.check_shape(h, w)
        check_unit_range(x, "Translator", UNIT_FIX)
        if generators is not None and len(generators) != x.shape[0]:
            raise MedShiftError(f"Translator.translate: {len(generators)} generators for "
                                f"{x.shape[0]} images")
        key = tuple(x.shape)
        plan = self._plans.get(key)
        if plan is None:  # planned once per shape (a stream of frames is planned once)
            plan = self.plan(key)
            if len(self._plans) >= 16:
                self._plans.pop(next(iter(self._plans)))
            self._plans[key] = plan
        self.last_plan = plan
        f = self.factor
        ph, pw = -(-h // f) * f - h, -(-w // f) * f - w
        x = x.to(self.device, torch.float32).clamp(-1.0, 1.0)
        if ph or pw:  # edge padding to the factor, cropped off below
            x = torch.nn.functional.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2),
                                        mode="replicate")
        s = self.settings
        if self.texture_off(h, w):
            import dataclasses

            s = dataclasses.replace(s, noise_scale=0.0)
        bs = min(self.batch_size or x.shape[0], plan.images)
        if self.mode == "compiled" and self.batch_size is None:
            self.batch_size = bs = min(x.shape[0], plan.images)  # one static shape from now on
        outs = []
        for k in range(0, x.shape[0], bs):
            chunk = x[k:k + bs]
            gens = None if generators is None else list(generators[k:k + bs])
            if self.mode == "eager":
                eng = self.engine
                model, codec = self.native.tiled(plan.tile_batch,
                                                 None if eng is None else eng.translate)
                outs.append(pipeline(model, codec, chunk, s, self.dtype,
                                     PerSampleGenerators(gens) if gens else self._gen))
            else:
                outs.append(self._translate_sampler(chunk, plan.tile_batch, bs))
        y = torch.cat(outs)
        return y[..., ph // 2:ph // 2 + h, pw // 2:pw // 2 + w]

    # ------------------------------------------------------------------ sampler-based modes
    def _sampler(self, shape: tuple[int, ...], tile_batch: int | None = None):
        """The Sampler for model-space batches of ``shape``, its network tiled when the
        translator tiles (a compiled forward and static tile batches in ``compiled`` mode)."""
        from ..flow.sampler import Sampler
        from .tiling import TiledModel

        tb = int(tile_batch or self.tile_batch or memory.CPU_TILE_BATCH)
        key = (tuple(shape), tb)
        sp = self._samplers.get(key)
        if sp is None:
            s = self.settings
            if len(self._samplers) >= 8:  # bounded: one per distinct shape
                self._samplers.pop(next(iter(self._samplers)))
            compiled = self.mode == "compiled"
            model, compile_here = self.model, compiled
            if self.tile is not None:
                cf = int(self.codec.factor)
                if self.channels_last:
                    self.model.to(memory_format=torch.channels_last)
                fwd = (torch.compile(self.model, dynamic=False, options={"freezing": True})
                       if compiled else None)
                model = TiledModel(self.model, self.tile // cf, self.overlap // cf, tb,
                                   forward=fwd, static_batch=compiled or self.mode == "cuda_graph")
                compile_here = False
            sp = Sampler(model, shape, s.source, s.target, **s.flow_kwargs(), device=self.device,
                         dtype=self.dtype, bf16=self.bf16, channels_last=self.channels_last,
                         cuda_graph=self.mode in ("cuda_graph", "compiled")
                         and self.device.type == "cuda",
                         compile=compile_here)
            self._samplers[key] = sp
        return sp

    def _translate_sampler(self, chunk: torch.Tensor, tile_batch: int, bs: int) -> torch.Tensor:
        _, codec = self.native.tiled(tile_batch)
        z = codec.encode(chunk).to(self.dtype)
        n = z.shape[0]
        if self.mode == "compiled" and n < bs:  # static shape: pad the short chunk
            z = torch.cat([z, z[-1:].expand(bs - n, *z.shape[1:])])
        y = self._sampler(tuple(z.shape), tile_batch).translate(z, check_finite=False)[:n]
        return codec.decode(y.to(torch.float32)).clamp(-1.0, 1.0)

    def sampler(self, shape: tuple[int, int, int, int]):
        """The preallocated Sampler this translator uses for model-space batches of ``shape``."""
        if self.mode == "eager":
            raise MedShiftError("an eager Translator has no Sampler; use mode='fused'")
        shape = tuple(int(v) for v in shape)
        cf = int(self.codec.factor)
        px = (shape[0], self.image_channels, shape[2] * cf, shape[3] * cf)
        plan = self._plans.get(px) or self.plan(px)
        return self._sampler(shape, plan.tile_batch)

