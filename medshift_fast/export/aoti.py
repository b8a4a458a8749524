"""AOTInductor export: ``torch.export`` of the eager module, compiled into a ``.pt2`` package.

The package holds a shared library with the weights and runs without Python (libtorch's
``torch::inductor::AOTIModelPackageLoader``, see examples/cpp) or from Python through
``torch._inductor.aoti_load_package``. It is compiled for the device the model sits on: CPU here,
CUDA when the model is on a GPU (unverified on this machine). The ``translate`` graph is the
unrolled pipeline, so the compile time grows with the number of U-Net evaluations.

Every package carries medshift metadata (``aot_inductor.metadata``: format, what, io, size,
channels, settings) that the C++ example checks before it runs a frame.

Latent-mode runs: ``build_module`` puts the run's autoencoder (fp32) into the ``translate``
module, so the package takes and returns pixel images like a pixel run's (see graphs.py).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from .. import use_backend
from ..errors import MedShiftError
from .graphs import ExportSettings, build_module, example_inputs, io_layout


def export_program(model: nn.Module, settings: ExportSettings, device: torch.device,
                   codec=None):
    """``torch.export`` of the step/translate module with a dynamic batch (reference backend).

    Args:
        model: the U-Net.
        settings: export settings.
        device: where the program runs.
        codec: the run's codec (latent mode) or None.

    Returns:
        (ExportedProgram, example inputs).
    """
    mod = build_module(model, settings, codec).to(device)
    # batch >= 2 in the example: torch.export specialises a dynamic dim whose example size is 1
    b = max(2, int(settings.batch))
    c, size = io_layout(model, settings, codec)
    args = example_inputs(settings, int(model.num_classes), c, b, device, size=size)
    dim = torch.export.Dim("batch", min=1, max=65536)
    names = ["image"] if settings.what == "translate" else ["x", "t", "y"]
    dyn = {n: {0: dim} for n in names}
    with use_backend("reference"), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ep = torch.export.export(mod, args, dynamic_shapes=dyn)
        except Exception as exc:  # noqa: BLE001 - surface the tracer's reason in one line
            first = str(exc).splitlines()[0][:300] if str(exc) else ""
            raise MedShiftError(f"torch.export of the {settings.what} graph failed "
                                f"({type(exc).__name__}: {first})") from exc
    return ep, args


def export_aoti(model: nn.Module, settings: ExportSettings, out: str | Path,
                metadata: dict[str, str] | None = None, codec=None) -> dict:
    """Compile the graph for ``settings`` into the AOTInductor package ``out`` (.pt2).

    Args:
        model: the U-Net; its device decides the package's device (cpu or cuda).
        settings: export settings.
        out: destination path ending in .pt2.
        metadata: strings stored in the package (read back with ``get_metadata()``).
        codec: the run's codec (latent mode) or None.

    Returns:
        {"device": "cpu" | "cuda", "unet_calls": n}.
    """
    out = Path(out)
    if out.suffix != ".pt2":
        raise MedShiftError(f"an AOTInductor package must end in .pt2, got {out.name}")
    device = next(model.parameters()).device
    ep, _ = export_program(model, settings, device, codec)
    out.parent.mkdir(parents=True, exist_ok=True)
    configs = {"aot_inductor.metadata": {str(k): str(v) for k, v in (metadata or {}).items()}}
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.pt2")
    try:
        with use_backend("reference"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch._inductor.aoti_compile_and_package(ep, package_path=str(tmp),
                                                     inductor_configs=configs)
        os.replace(tmp, out)
    except MedShiftError:
        raise
    except Exception as exc:  # noqa: BLE001 - compiler errors are long; keep the first line
        raise MedShiftError(f"AOTInductor compilation failed ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:300]}); is a C++ compiler installed?"
                            ) from exc
    finally:
        if tmp.exists():
            tmp.unlink()
    return {"device": device.type, "unet_calls": settings.nfe(model)}


def load_aoti(path: str | Path, device_index: int = -1):
    """``torch._inductor.aoti_load_package`` with failures turned into MedShiftError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch._inductor.aoti_load_package(str(path), device_index=device_index)
    except Exception as exc:  # noqa: BLE001
        raise MedShiftError(f"cannot load the AOTInductor package {path} ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); it may be "
                            f"corrupted or built by another torch (this is {torch.__version__}) - "
                            "re-export it") from exc
