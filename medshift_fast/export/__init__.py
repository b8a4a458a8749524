"""Export and deployment: ONNX graphs, AOTInductor packages and TensorRT engines.

Two graphs can be exported from a trained model (see ``graphs.py`` for the I/O contract):
``step``, the guided velocity v(x, t, y) for users with their own solver loop, and
``translate``, the whole encode + decode pipeline for fixed settings (pre- and post-processing
included) unrolled into one graph - what a scanner embeds. Every engine file gets a JSON sidecar
(``FILE.json``) with its settings, domains, sizes, versions and checksum; ``load_engine`` checks it
and returns an object with one calling convention for all three runtimes. Latent-mode runs
export transparently: ``translate`` carries the run's autoencoder (pixel images in and out),
``step`` stays in latent space and its sidecar says so (``"space": "latent"``).

``student_engine`` runs a one-step student's tiles through a cached, verified ONNX engine: the
``onnx`` engine of the Translator (``medshift translate --engine onnx``).

TensorRT is untested here: it cannot be installed on the development machines (see
``trt_engine.py``).
"""

from __future__ import annotations

from .api import ExportReport, default_device, export_engine
from .engines import AotiEngine, Engine, OnnxEngine, TensorRTEngine, load_engine
from .graphs import (
    ExportSettings,
    LatentCodec,
    StepModule,
    TranslateModule,
    build_module,
    example_inputs,
    io_layout,
)
from .sidecar import ENGINE_FORMAT_VERSION, read_sidecar, sidecar_path
from .student_engine import OnnxStudentEngine, onnx_student_engine
from .verify import DEFAULT_TOL, VerifyResult, compare, verify_engine

__all__ = [
    "DEFAULT_TOL",
    "ENGINE_FORMAT_VERSION",
    "AotiEngine",
    "Engine",
    "ExportReport",
    "ExportSettings",
    "LatentCodec",
    "OnnxEngine",
    "OnnxStudentEngine",
    "StepModule",
    "TensorRTEngine",
    "TranslateModule",
    "VerifyResult",
    "build_module",
    "compare",
    "default_device",
    "example_inputs",
    "export_engine",
    "io_layout",
    "load_engine",
    "onnx_student_engine",
    "read_sidecar",
    "sidecar_path",
    "verify_engine",
]
