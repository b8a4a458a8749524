"""``export_engine``: export, write the sidecar, and verify against eager PyTorch."""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import MedShiftError
from ..translate import TranslateOptions
from .graphs import (
    ExportSettings,
    check_model,
    export_codec,
    io_layout,
    model_size,
    noise_channels,
)
from .sidecar import (
    ENGINE_FORMAT,
    ENGINE_FORMAT_VERSION,
    FORMATS,
    SUFFIXES,
    input_spec,
    write_sidecar,
)
from .verify import VerifyResult, verify_engine


@dataclass
class ExportReport:
    """What ``export_engine`` did.

    Attributes:
        path: the engine file.
        sidecar: its JSON sidecar.
        format: onnx | aoti | tensorrt.
        seconds: export wall time.
        info: backend details (exporter, opset, device, TensorRT version, ...).
        verify: the comparison with eager PyTorch, or None when skipped.
    """

    path: Path
    sidecar: Path
    format: str
    seconds: float
    info: dict
    verify: VerifyResult | None = None

    @property
    def ok(self) -> bool:
        return self.verify is None or self.verify.ok


def _io_spec(settings: ExportSettings, c: int, size: int, noise: int = 0
             ) -> tuple[list[dict], list[dict]]:
    hw = ["height", "width"] if settings.dynamic else [size, size]
    shape = ["batch", c, *hw]
    if settings.what == "translate":
        dt = "uint16" if settings.io == "uint16" else "float32"
        ins = [{"name": "image", "dtype": dt, "shape": shape}]
        if noise:
            ins.append({"name": "noise", "dtype": "float32", "shape": ["batch", noise, *hw]})
        return ins, [{"name": "translated", "dtype": dt, "shape": shape}]
    return ([{"name": "x", "dtype": "float32", "shape": shape},
             {"name": "t", "dtype": "float32", "shape": ["batch"]},
             {"name": "y", "dtype": "int64", "shape": ["batch"]}],
            [{"name": "v", "dtype": "float32", "shape": shape}])


def package_metadata(settings: ExportSettings, model: nn.Module, domains,
                     codec=None) -> dict[str, str]:
    """String metadata embedded in ONNX models and AOTI packages (read by the C++ example).

    ``medshift.size`` / ``medshift.in_channels`` describe the graph's image tensors (pixels
    for translate; latents for a latent run's step graph); ``medshift.space`` is pixel | latent.
    """
    s = settings
    c, size = io_layout(model, s, codec)
    meta = {"medshift.format": ENGINE_FORMAT,
            "medshift.format_version": str(ENGINE_FORMAT_VERSION),
            "medshift.what": s.what, "medshift.io": s.io, "medshift.size": str(size),
            "medshift.in_channels": str(c), "medshift.dtype": s.dtype,
            "medshift.domains": ",".join(domains),
            "medshift.space": "pixel" if export_codec(codec) is None else "latent",
            "medshift.model_size": str(model_size(s, codec))}
    if s.what == "translate":
        meta.update({"medshift.source": str(s.source), "medshift.target": str(s.target),
                     "medshift.tau": repr(float(s.tau)), "medshift.steps": str(s.steps),
                     "medshift.solver": s.solver})
    return meta


def export_engine(
    model,
    fmt: str,
    out: str | Path,
    settings: ExportSettings | None = None,
    domains: tuple[str, ...] | list[str] | None = None,
    verify: bool = True,
    tolerance: float | None = None,
    exporter: str = "auto",
    max_batch: int | None = None,
    extra_meta: dict | None = None,
    log: Callable[[str], None] | None = None,
    codec=None,
    overwrite: bool = False,
    **settings_kw,
) -> ExportReport:
    """Export ``model`` for ``settings`` as an ONNX graph, AOTI package or TensorRT engine.

    Latent-mode runs (the U-Net works on autoencoder latents): pass the run's ``codec``, or
    pass the loaded run itself as ``model``. ``translate`` then takes and returns pixel images
    (the fp32 autoencoder's encode and decode are part of the graph; ``settings.size`` is the
    pixel size, divisible by the autoencoder's factor f); ``step`` stays in latent space
    (size / f). The sidecar records ``"space": "latent"`` and the autoencoder reference.

    Args:
        model: a :class:`~medshift_fast.translate.Translator` (its run and description are
            exported; ``settings`` then defaults to ``ExportSettings.from_translator`` with
            ``settings_kw``), a loaded run (``run.load_run``: its model, codec and domain
            names are used) or a bare U-Net (EMA weights, eval mode); its device is the export
            device (AOTI compiles for it; TensorRT needs CUDA).
        fmt: "onnx" | "aoti" | "tensorrt".
        out: the engine file (.onnx | .pt2 | .plan/.engine/.trt); ``out + ".json"`` is the
            sidecar.
        settings: what to export (graphs.ExportSettings).
        domains: domain names (index = label), recorded in the sidecar.
        verify: run the engine and eager PyTorch on the same inputs afterwards.
        tolerance: verification max-abs bound (default by dtype, verify.DEFAULT_TOL).
        exporter: ONNX exporter "auto" (dynamo, else TorchScript) | "dynamo" | "torchscript".
        max_batch: TensorRT's largest batch (default settings.batch).
        extra_meta: more sidecar entries (e.g. the checkpoint path).
        log: progress callback (e.g. print), or None.
        codec: the run's codec (``LoadedRun.codec``) for a latent-mode run; None (or a pixel
            codec) for pixel mode. Diffusers autoencoders are refused with a MedShiftError.
        overwrite: replace an existing engine file and its sidecar; without it either one
            existing is refused before any work. The engine is written to a temporary file
            and renamed into place, so a failed export leaves an existing engine as it was.
        **settings_kw: with a Translator: what, size, batch, dtype, io, guidance of
            ``ExportSettings.from_translator``.

    Returns:
        ExportReport (``report.ok`` is False when verification exceeded the tolerance; the files
        are kept so they can be inspected).
    """
    say = log or (lambda _msg: None)
    from ..translate import Translator

    if isinstance(model, Translator):
        tr = model
        if settings is None:
            settings = ExportSettings.from_translator(tr, **settings_kw)
        elif settings_kw:
            raise MedShiftError("pass either settings or size/batch/dtype/io, not both")
        model = tr.run
    elif settings is None or settings_kw:
        raise MedShiftError("export_engine needs ExportSettings (or a Translator)")
    if fmt not in FORMATS:
        raise MedShiftError(f"unknown export format {fmt!r}; choose onnx, aoti or tensorrt")
    out = Path(out)
    if out.suffix.lower() not in SUFFIXES[fmt]:
        raise MedShiftError(f"a {fmt} engine file must end in {' or '.join(SUFFIXES[fmt])}, got "
                            f"{out.name}")
    if not isinstance(model, nn.Module) and isinstance(getattr(model, "model", None), nn.Module):
        run = model  # a LoadedRun
        model = run.model
        codec = run.codec if codec is None else codec
        domains = domains or run.domains
    codec = export_codec(codec)
    check_model(model, settings, codec)
    domains = tuple(domains or (str(i) for i in range(int(model.num_classes))))
    if fmt == "tensorrt":
        from .trt_engine import import_tensorrt

        import_tensorrt()  # fail before any work when TensorRT is missing
        if next(model.parameters()).device.type != "cuda":
            raise MedShiftError("TensorRT engines are built on a CUDA GPU: use --device cuda")
        if settings.io == "uint16":
            raise MedShiftError("TensorRT has no uint16 tensors: export with --io float")
    meta_str = package_metadata(settings, model, domains, codec)
    _check_targets(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    final, out = out, out.with_name(f".{out.stem}.tmp-{os.getpid()}{out.suffix}")
    t0 = time.perf_counter()
    try:
        info = _write_engine(model, settings, fmt, out, meta_str, exporter, codec, max_batch)
        _place(out, final, overwrite)
    finally:
        if out.exists():
            out.unlink()
    out = final
    seconds = time.perf_counter() - t0
    if getattr(model, "is_student", False):
        info["student"] = model.config.method
    c, size = io_layout(model, settings, codec)
    n_noise = noise_channels(model, settings)
    inputs, outputs = _io_spec(settings, c, size, n_noise)
    latent = codec is not None
    if settings.what == "translate":
        contract = ("translate: image in -> translated out, same shape/dtype; float = [-1, 1] "
                    "clamped output, uint16 = raw counts (u*2/65535-1 in, rint((y+1)*32767.5) "
                    "out)")
        if n_noise:
            contract += (f"; noise: the stochastic student's {n_noise} standard-normal map(s) "
                         "per pixel (zeros: its deterministic member)")
        if settings.dynamic:
            contract += (f"; any height and width that are multiples of "
                         f"{int(model.down_factor)}")
        if latent:
            contract += ("; pixel images: encoded in-graph by the run's autoencoder (fp32 "
                         "posterior mean, scaled), translated in its latent space, decoded "
                         "(fp32) and clamped")
    else:
        contract = "step: guided velocity v(x, t, y) = v_u + w (v_c - v_u), float32"
        if latent:
            contract += (f"; in the autoencoder's latent space: x and v are (B, {c}, {size}, "
                         f"{size}) latents, not pixel images")
    sidecar = write_sidecar(out, {
        "engine": fmt,
        "what": settings.what,
        "settings": settings.to_dict(),
        "domains": list(domains),
        "num_classes": int(model.num_classes),
        "null_label": int(model.num_classes),
        "in_channels": c,  # of the graph's image tensors
        "size": size,  # of the graph's image tensors (settings.size is the pixel size)
        "space": "latent" if latent else "pixel",
        "latent": codec.reference() if latent else None,
        "image_size": int(settings.size),
        "model_size": model_size(settings, codec),
        "model_channels": int(model.in_channels),
        "inputs": inputs,
        "outputs": outputs,
        "input": input_spec(settings),  # what Engine.check_input accepts
        "device": info.get("device", next(model.parameters()).device.type),
        "io_contract": contract,
        "dynamic": bool(settings.dynamic),
        "factor": int(getattr(model, "down_factor", 1)),
        "noise_channels": n_noise,
        **info,
        **(extra_meta or {}),
    })
    report = ExportReport(out, sidecar, fmt, seconds, info)
    say(_describe(report, settings, codec))
    if verify:
        from .engines import load_engine

        report.verify = verify_engine(load_engine(out), model, settings, tolerance=tolerance,
                                      codec=codec)
        say(str(report.verify))
    return report


def _check_targets(out: Path, overwrite: bool) -> None:
    """The output-safety rule for an engine: an existing engine or sidecar is replaced only
    with ``overwrite`` (checked before any work)."""
    from .sidecar import sidecar_path

    if out.exists() and not out.is_file():
        raise MedShiftError(f"engine path {out} is a folder; pass a file name")
    taken = [p for p in (out, sidecar_path(out)) if p.exists()]
    if taken and not overwrite:
        raise MedShiftError(f"{' and '.join(str(p) for p in taken)} already exist"
                            f"{'s' if len(taken) == 1 else ''}; the engine and its sidecar are "
                            "not replaced - pass --overwrite (overwrite=True), or choose another "
                            "--out")


def _place(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished engine into place (exclusively unless ``overwrite``)."""
    if overwrite:
        os.replace(tmp, out)
        return
    try:
        os.link(tmp, out)
    except FileExistsError:
        raise MedShiftError(f"{out} appeared while exporting; it is not replaced - pass "
                            "--overwrite, or choose another --out") from None


def _write_engine(model, settings, fmt: str, out: Path, meta_str, exporter, codec,
                  max_batch) -> dict:
    """Write the engine file ``out`` of format ``fmt``; returns the backend's info."""
    if fmt == "onnx":
        from .onnx_export import export_onnx

        return export_onnx(model, settings, out, meta_str, exporter, codec)
    if fmt == "aoti":
        from .aoti import export_aoti

        return export_aoti(model, settings, out, meta_str, codec)
    from .onnx_export import export_onnx
    from .trt_engine import build_plan

    # TensorRT gets the fp32 graph and lowers it itself (fp16 with fp32 normalisation).
    fp32 = dataclasses.replace(settings, dtype="fp32")
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=out.parent)
    os.close(fd)
    try:
        info = export_onnx(model, fp32, tmp, meta_str, exporter, codec)
        info.update(build_plan(tmp, out, settings.dtype, settings.batch, max_batch))
    finally:
        os.unlink(tmp)
    return info


def _describe(report: ExportReport, s: ExportSettings, codec=None) -> str:
    calls = report.info.get("unet_calls", s.nfe())
    if report.info.get("student"):
        what = (f"translate graph of a distilled {report.info['student']} student ({calls} "
                f"network call(s), tau={s.tau}, teacher {s.solver} x {s.steps} steps/leg, w="
                f"{s.guidance_encode}/{s.guidance_decode}, io={s.io})")
    elif s.what == "translate":
        what = (f"translate graph ({s.solver}, {s.steps} steps/leg, tau={s.tau}, "
                f"w={s.guidance_encode}/{s.guidance_decode}, {calls} U-Net calls, io={s.io})")
    else:
        what = f"step graph (guided velocity, w={s.guidance})"
    if codec is not None:
        f = int(codec.factor)
        what += (f" of a latent run (autoencoder encode/decode in the graph, U-Net at "
                 f"{s.size // f}x{s.size // f})" if s.what == "translate" else
                 f" in latent space ({s.size // f}x{s.size // f} latents)")
    how = {"onnx": lambda i: f"onnx, {i['exporter']} exporter, opset {i['opset']}",
           "aoti": lambda i: f"AOTInductor package for {i['device']}",
           "tensorrt": lambda i: f"TensorRT {i.get('tensorrt_version')} {s.dtype} engine"}
    return (f"exported {what} [{how[report.format](report.info)}, {s.dtype}, size {s.size}] to "
            f"{report.path} in {report.seconds:.1f} s")


def default_device(name: str = "auto") -> torch.device:
    """auto -> cuda when a GPU is visible, else cpu (``run.resolve_device``)."""
    from ..run import resolve_device

    return resolve_device(name)


@dataclass(frozen=True, kw_only=True)
class ExportConfig(TranslateOptions):
    """``medshift export``: an engine file of a run's translator (or its guided velocity).

    Attributes:
        checkpoint: run directory written by ``medshift train`` (or ``medshift distill``).
        format: onnx | aoti | tensorrt.
        out: engine file (.onnx | .pt2 | .plan/.engine/.trt); FILE.json is written beside it.
        what: translate (the whole pipeline for fixed settings) | step (the guided velocity).
        tau: translation time in [0, 1] (translate).
        size: image side in pixels (default: the training size; latent runs: divisible by the
            autoencoder's factor).
        batch: example/verification batch (TensorRT: optimal batch); ONNX and AOTI graphs
            accept any batch.
        max_batch: TensorRT's largest batch (default: batch).
        dtype: compute dtype fp32 | fp16 | bf16 (default fp32; fp16 for tensorrt).
        io: translate I/O: float images in [-1, 1], or raw uint16 frames.
        device: auto | cpu | cuda (AOTI compiles for it).
        exporter: ONNX exporter auto (dynamo, falling back to TorchScript) | dynamo |
            torchscript.
        verify: compare the engine with eager PyTorch (exit 1 beyond the tolerance).
        tolerance: verification max abs error (default 1e-3 fp32, 5e-2 fp16, 1e-1 bf16).
        overwrite: replace an existing engine file and its sidecar (otherwise refused before
            any work).
    """

    checkpoint: str
    format: str
    out: str
    what: str = "translate"
    tau: float | None = None
    size: int | None = None
    batch: int = 1
    max_batch: int | None = None
    dtype: str | None = None
    io: str = "float"
    device: str = "auto"
    exporter: str = "auto"
    verify: bool = True
    tolerance: float | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.format not in FORMATS:
            raise MedShiftError(f"unknown export format {self.format!r}; choose onnx, aoti or "
                                "tensorrt")
        if self.what == "translate" and (not self.source or not self.target):
            raise MedShiftError("--what translate needs --source and --target domain names")


def export_run(cfg: ExportConfig, log: Callable[[str], None] | None = print) -> ExportReport:
    """``medshift export``: load the run, build its Translator, export and verify it."""
    from ..run import load_run
    from ..translate import Translator

    _check_targets(Path(cfg.out), cfg.overwrite)  # before the run is even loaded
    dev = default_device(cfg.device)
    run = load_run(cfg.checkpoint, device=dev)
    if run.kind == "student" and cfg.what == "step":
        raise MedShiftError("a distilled student has no velocity field to export; export --what "
                            "translate (or the teacher run's step graph)")
    dtype = cfg.dtype or ("fp16" if cfg.format == "tensorrt" else "fp32")
    src = cfg.source if cfg.what == "translate" else (cfg.source or run.domains[0])
    tgt = cfg.target if cfg.what == "translate" else (cfg.target or run.domains[0])
    tr = Translator(run, src, tgt, tau=cfg.tau, **cfg.recipe())
    extra = {"checkpoint": str(run.path), "model_config": _cfg_dict(run.model_config)}
    if cfg.what == "translate":
        extra.update(source_domain=run.domains[tr.settings.source],
                     target_domain=run.domains[tr.settings.target])
    return export_engine(tr, cfg.format, cfg.out, domains=run.domains, verify=cfg.verify,
                         tolerance=cfg.tolerance, exporter=cfg.exporter, max_batch=cfg.max_batch,
                         extra_meta=extra, log=log, what=cfg.what, size=cfg.size,
                         batch=cfg.batch, dtype=dtype, io=cfg.io, overwrite=cfg.overwrite,
                         guidance=cfg.guidance if cfg.guidance is not None else None)


def _cfg_dict(c) -> dict:
    return c if isinstance(c, dict) else c.to_dict()
