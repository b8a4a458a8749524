"""ONNX export: the U-Net once through ``torch.onnx.export``, the pipeline composed around it.

Tracing an unrolled translation through ``torch.onnx.export`` costs time in proportion to the
number of U-Net evaluations (a 20-step heun translation holds 80 of them), so instead the U-Net
core v = UNet(x, t, y) is exported ONCE (dynamic batch), and the ``step`` / ``translate`` graphs
are built around it with ``onnx.helper``: every U-Net evaluation is a renamed copy of the core's
nodes that shares the core's initializers (the weights are stored once), and the guidance
combine, solver stages, pre- and post-processing are plain ONNX ops that mirror
``TranslateModule`` / ``StepModule`` (graphs.py) operation for operation, so an exported graph
matches eager PyTorch to rounding (the composer lives in ``onnx_compose.py``). The result is one
flat graph of standard ops (no functions, no control flow), which ONNX Runtime and TensorRT's
parser both take.

The core is exported with the reference backend (only standard ops) by the dynamo exporter
(``torch.onnx.export(dynamo=True)``); if that fails the TorchScript exporter (``dynamo=False``)
is tried, and the sidecar records which one was used.

Latent-mode runs (see graphs.py): the autoencoder's encoder (image -> scaled posterior mean) and
decoder (latent -> clamped image) are exported the same way as two more fp32 cores (dynamic
batch) and spliced into the ``translate`` graph once each, before and after the ODE. Their
initializers, nodes and values are renamed under ``ms/ae_encode/`` and ``ms/ae_decode/`` so they
cannot collide with the U-Net core's names (both exporters reuse names such as ``val_0`` or
``conv2d``); the ``ms/`` prefix also makes TensorRT keep them in fp32, as in eager PyTorch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from .. import use_backend
from ..errors import MedShiftError
from .graphs import (
    ExportSettings,
    LatentCodec,
    build_module,
    cast_model,
    check_model,
    export_codec,
    model_size,
)
from .onnx_compose import AE_DECODE, AE_ENCODE, OPSET, OUTER, _onnx, compose

__all__ = ["AE_DECODE", "AE_ENCODE", "OPSET", "OUTER", "compose", "export_codec_cores",
           "export_core", "export_onnx"]


class _Core(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.model(x, t, y)


def export_core(model: nn.Module, settings: ExportSettings, exporter: str = "auto"):
    """Export v = UNet(x, t, y) (dynamic batch) in the compute dtype.

    Args:
        model: the U-Net (not modified; a dtype-cast copy is exported).
        settings: export settings (size, dtype).
        exporter: "auto" (dynamo, falling back to TorchScript), "dynamo" or "torchscript".

    Returns:
        (onnx.ModelProto, exporter used). Inputs x (B, C, S, S) in the compute dtype, t (B,)
        float32, y (B,) int64; output v like x.
    """
    check_model(model, settings)
    core = _Core(cast_model(model, settings)).eval()
    c, s = int(model.in_channels), int(settings.size)
    dev = next(core.parameters()).device
    args = (torch.zeros(2, c, s, s, dtype=settings.torch_dtype, device=dev),
            torch.full((2,), 0.5, device=dev), torch.zeros(2, dtype=torch.long, device=dev))
    return _export(core, args, ["x", "t", "y"], ["v"], exporter, "the U-Net")


class _Encode(nn.Module):
    def __init__(self, codec: LatentCodec) -> None:
        super().__init__()
        self.codec = codec

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.codec.encode(image)


class _Decode(_Encode):
    def forward(self, z: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.codec.decode(z)


def export_codec_cores(codec, settings: ExportSettings, exporter: str = "auto"):
    """Export the autoencoder of a latent run as two fp32 cores (dynamic batch).

    Args:
        codec: the run's codec (``LoadedRun.codec``) or a ``graphs.LatentCodec``.
        settings: export settings (``size`` = pixel side S, divisible by the factor f).
        exporter: as ``export_core``.

    Returns:
        (encoder proto, decoder proto, exporter used). Encoder: ``image`` (B, C_img, S, S)
        float32 -> ``z`` = scale (mean(q(z|x)) - shift), (B, z_c, S/f, S/f) float32. Decoder:
        ``z`` -> ``image`` = D(z / scale + shift) clamped to [-1, 1].
    """
    lc = export_codec(codec)
    if lc is None:
        raise MedShiftError("export_codec_cores needs a latent-mode codec")
    lc = LatentCodec(lc)  # an fp32 copy: the caller's codec is left untouched
    s, fa = int(settings.size), lc.factor
    if s % fa:
        raise MedShiftError(f"size {s} must be divisible by the autoencoder's factor {fa}")
    dev = next(lc.parameters()).device
    img = torch.zeros(2, lc.image_channels, s, s, device=dev)
    z = torch.zeros(2, lc.channels, s // fa, s // fa, device=dev)
    enc, which = _export(_Encode(lc).eval(), (img,), ["image"], ["z"], exporter,
                         "the autoencoder's encoder")
    dec, _ = _export(_Decode(lc).eval(), (z,), ["z"], ["image"], which,
                     "the autoencoder's decoder")
    return enc, dec, which


def _export(module: nn.Module, args: tuple, input_names: list[str], output_names: list[str],
            exporter: str, what: str, spatial: int = 0):
    """torch.onnx.export of ``module`` with a dynamic batch on every input and output (and,
    ``spatial`` > 0, a free height and width, multiples of ``spatial``, on every one)."""
    onnx = _onnx()
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise MedShiftError(f"unknown ONNX exporter {exporter!r}; choose auto, dynamo or "
                            "torchscript")
    names = dict(input_names=input_names, output_names=output_names)
    errors = []
    order = ("dynamo", "torchscript") if exporter == "auto" else (exporter,)
    for which in order:
        try:
            with use_backend("reference"), torch.no_grad(), _quiet():
                if which == "dynamo":
                    b = torch.export.Dim("batch", min=1, max=65536)
                    dims: dict = {0: b}
                    if spatial:
                        dims = {0: b, 2: spatial * torch.export.Dim("h", min=1, max=16384),
                                3: spatial * torch.export.Dim("w", min=1, max=16384)}
                    prog = torch.onnx.export(
                        module, args, dynamo=True, opset_version=OPSET, verbose=False,
                        dynamic_shapes={k: dims for k in input_names},
                        optimize=True, external_data=False, **names)
                    proto = prog.model_proto
                else:
                    buf = io.BytesIO()
                    axes = {0: "batch", 2: "height", 3: "width"} if spatial else {0: "batch"}
                    torch.onnx.export(
                        module, args, buf, dynamo=False, opset_version=OPSET,
                        dynamic_axes={k: axes for k in (*input_names, *output_names)},
                        **names)
                    proto = onnx.load_from_string(buf.getvalue())
            proto = onnx.inliner.inline_local_functions(proto)
            return proto, which
        except MedShiftError:
            raise
        except Exception as exc:  # noqa: BLE001 - any exporter failure: try the next one
            errors.append(f"{which}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
    raise MedShiftError(f"ONNX export of {what} failed (" + "; ".join(errors) + ")")


def _export_student(mod: nn.Module, model: nn.Module, settings: ExportSettings, out,
                    metadata, exporter: str, codec) -> dict:
    """A distilled student's translate graph: the whole TranslateModule through the exporter
    (a stochastic student's noise maps as a second input ``noise``; free height and width when
    ``settings.dynamic``)."""
    from .graphs import example_inputs, io_layout, noise_channels

    onnx = _onnx()
    c, size = io_layout(model, settings, codec)
    dev = next(model.parameters()).device
    n = noise_channels(model, settings)
    args = example_inputs(settings, int(model.num_classes), c, max(2, settings.batch), dev,
                          size=size, noise_channels=n)
    names = ["image", "noise"] if n else ["image"]
    spatial = int(model.down_factor) if settings.dynamic else 0
    m, which = _export(mod, args, names, ["translated"], exporter, "the distilled student",
                       spatial)
    onnx.helper.set_model_props(m, metadata or {})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(m, str(out))
    return {"exporter": which, "opset": OPSET, "unet_calls": int(model.calls)}


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' progress prints, warnings and registry log lines."""
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def export_onnx(model: nn.Module, settings: ExportSettings, out: str | Path,
                metadata: dict[str, str] | None = None, exporter: str = "auto",
                codec=None) -> dict:
    """Write the ONNX graph for ``settings`` to ``out``.

    Args:
        model: the U-Net.
        settings: export settings (``size`` is the pixel size for a latent run).
        out: the .onnx file.
        metadata: model properties.
        exporter: "auto" | "dynamo" | "torchscript".
        codec: the run's codec (latent mode) or None.

    Returns:
        {"exporter": "dynamo" | "torchscript", "opset": OPSET, "unet_calls": n} (+
        "codec_exporter" for a latent translate graph).
    """
    onnx = _onnx()
    mod = build_module(model, settings, codec)  # validates settings against the model, codec
    if getattr(model, "is_student", False):  # one (or two) calls: export the module itself
        return _export_student(mod, model, settings, out, metadata, exporter, codec)
    codec = export_codec(codec)
    msize = model_size(settings, codec)  # the U-Net's side: S, or S / f in latent mode
    core, which = export_core(model, dataclasses.replace(settings, size=msize), exporter)
    info = {"exporter": which, "opset": OPSET, "unet_calls": settings.nfe()}
    cores = None
    if codec is not None and settings.what == "translate":
        *cores, info["codec_exporter"] = export_codec_cores(codec, settings, exporter)
    m = compose(core, model, settings, metadata or {}, codec, cores)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if m.ByteSize() >= 2**31 - 1:
        raise MedShiftError("the ONNX graph exceeds 2 GB; use fewer steps or a smaller model")
    onnx.save_model(m, str(out))
    return info
