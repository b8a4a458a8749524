"""``medshift export``: write an ONNX graph, AOTInductor package or TensorRT engine of a run.

Flags map 1:1 onto ``export.ExportSettings`` / ``export_engine``. Exit status: 0 ok, 1 when
``--verify`` finds the engine beyond the tolerance, 2 on a user error.
"""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a trained translator (ONNX / AOTInductor / TensorRT) and verify it",
        description="Export the guided velocity (--what step) or the whole translation for fixed "
        "settings (--what translate) of a run. Writes FILE and its sidecar FILE.json. TensorRT is "
        "untested here (it cannot be installed on the development machines).",
    )
    p.add_argument("--checkpoint", required=True, help="run directory written by `medshift train`")
    p.add_argument("--format", required=True, choices=("onnx", "aoti", "tensorrt"))
    p.add_argument("--out", required=True,
                   help="engine file: .onnx | .pt2 | .plan (.engine, .trt); FILE.json is written "
                   "beside it")
    p.add_argument("--what", choices=("step", "translate"), default="translate")
    p.add_argument("--source", help="source domain name (translate)")
    p.add_argument("--target", help="target domain name (translate)")
    p.add_argument("--tau", type=float, default=0.6, help="translation time in [0, 1]")
    p.add_argument("--steps", type=int, default=20, help="fixed solver steps per leg")
    p.add_argument("--solver", default="heun", help="euler | midpoint | heun | rk4")
    p.add_argument("--guidance", type=float, default=2.0,
                   help="guidance scale (step graph, and both translate legs)")
    p.add_argument("--guidance-encode", type=float, default=None)
    p.add_argument("--guidance-decode", type=float, default=None)
    p.add_argument("--size", type=int, default=None,
                   help="image side in pixels (default: training size); latent-mode runs: "
                   "divisible by the autoencoder's factor (the step graph is size/factor)")
    p.add_argument("--batch", type=int, default=1,
                   help="example/verification batch (TensorRT: optimal batch); ONNX and AOTI "
                   "graphs accept any batch")
    p.add_argument("--max-batch", type=int, default=None, help="TensorRT: largest batch")
    p.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default=None,
                   help="compute dtype (default fp32; fp16 for tensorrt)")
    p.add_argument("--io", choices=("float", "uint16"), default="float",
                   help="translate I/O: float images in [-1, 1], or raw uint16 frames")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (AOTI compiles for it)")
    p.add_argument("--exporter", choices=("auto", "dynamo", "torchscript"), default="auto",
                   help="ONNX exporter (auto: dynamo, falling back to TorchScript)")
    p.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                   help="compare the engine with eager PyTorch (exit 1 beyond the tolerance)")
    p.add_argument("--tolerance", type=float, default=None,
                   help="verification max abs error (default 1e-3 fp32, 5e-2 fp16, 1e-1 bf16)")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from ..errors import MedShiftError
    from ..train.checkpoint import load_run
    from .api import default_device, export_engine
    from .graphs import ExportSettings

    if args.what == "translate" and (args.source is None or args.target is None):
        raise MedShiftError("--what translate needs --source and --target domain names")
    dev = default_device(args.device)
    run = load_run(args.checkpoint, device=dev)
    dtype = args.dtype or ("fp16" if args.format == "tensorrt" else "fp32")
    translate = args.what == "translate"
    settings = ExportSettings(
        what=args.what,
        size=int(args.size or run.train_config.image_size),
        batch=args.batch,
        dtype=dtype,
        io=args.io,
        source=run.label(args.source) if translate else None,
        target=run.label(args.target) if translate else None,
        tau=args.tau,
        guidance_encode=args.guidance if args.guidance_encode is None else args.guidance_encode,
        guidance_decode=args.guidance if args.guidance_decode is None else args.guidance_decode,
        guidance=args.guidance,
        steps=args.steps,
        solver=args.solver,
    )
    # Latent-mode runs: translate encodes/decodes with the run's autoencoder in the graph
    # (pixel images in and out); step stays in latent space. run.codec is a PixelCodec otherwise.
    extra = {"checkpoint": str(run.path), "model_config": run.model_config.to_dict()}
    if translate:
        extra.update(source_domain=run.domains[settings.source],
                     target_domain=run.domains[settings.target])
    report = export_engine(
        run.model, args.format, args.out, settings, domains=run.domains, verify=args.verify,
        tolerance=args.tolerance, exporter=args.exporter, max_batch=args.max_batch,
        extra_meta=extra, log=print, codec=run.codec,
    )
    if not report.ok:
        print(f"medshift export: verification failed: the engine differs from eager PyTorch by "
              f"{report.verify.max_abs:.3g} > {report.verify.tolerance:g} (files kept for "
              "inspection)", file=sys.stderr)
        return 1
    return 0
