"""Core subcommands: ``env`` and ``translate``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import MedShiftError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("env", help="versions and available backends")
    p.set_defaults(func=cmd_env)

    p = sub.add_parser("translate", help="translate images from one domain to another")
    p.add_argument("--checkpoint", required=True, help="run directory written by `medshift train`")
    p.add_argument("--source", required=True, help="source domain name")
    p.add_argument("--target", required=True, help="target domain name")
    p.add_argument("--tau", type=float, default=0.6, help="translation time in [0, 1]")
    p.add_argument("--guidance", type=float, default=2.0, help="guidance scale (both legs)")
    p.add_argument("--guidance-encode", type=float, default=None)
    p.add_argument("--guidance-decode", type=float, default=None)
    p.add_argument("--steps", type=int, default=20, help="solver steps per leg")
    p.add_argument("--solver", default="heun", help="euler | midpoint | heun | rk4 | dopri5")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--backend", default=None, help="auto | reference | cpp | triton | cuda")
    p.add_argument("--compile", action="store_true",
                   help="fixed-step solvers: run the U-Net through torch.compile with Inductor "
                   "freezing (compiles once, tens of seconds; pays off over many batches)")
    p.add_argument("--skip-bad", action="store_true",
                   help="report unreadable images on stderr and translate the others")
    p.add_argument("--out", required=True, help="output folder (16-bit PNGs)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.set_defaults(func=cmd_translate)


def cmd_env(args) -> int:
    import platform

    import torch

    from . import __version__, available_backends

    print(f"medshift_fast {__version__}")
    print(f"python {platform.python_version()}  torch {torch.__version__}  "
          f"cuda {torch.version.cuda or '-'}  gpu {torch.cuda.is_available()}")
    try:
        import triton

        print(f"triton {triton.__version__}")
    except ImportError:
        print("triton not installed")
    for name, ok in available_backends().items():
        print(f"backend {name:10s} {'available' if ok else 'missing'}")
    return 0


def _collect(inputs: list[str]) -> list[Path]:
    from .data import IMAGE_EXT

    files: list[Path] = []
    for s in inputs:
        p = Path(s)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXT)
            if not found:
                raise MedShiftError(f"input folder {s!r} contains no images (.png/.tif/.dcm)")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise MedShiftError(f"input {s!r} does not exist")
    return files


def cmd_translate(args) -> int:
    import torch
    from tqdm.auto import tqdm

    from . import use_backend
    from .data import fit_square, read_image, write_png16
    from .train.checkpoint import load_run
    from .train.loop import resolve_device

    dev = resolve_device(args.device)
    run = load_run(args.checkpoint, device=dev)
    src, tgt = run.label(args.source), run.label(args.target)
    files = _collect(args.inputs)
    size = run.train_config.image_size
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ge = args.guidance if args.guidance_encode is None else args.guidance_encode
    gd = args.guidance if args.guidance_decode is None else args.guidance_decode
    ctx = use_backend(args.backend) if args.backend else _null()
    if args.compile:
        from .flow.sampler import FIXED_SOLVERS

        if args.solver not in FIXED_SOLVERS:
            raise MedShiftError(f"--compile needs a fixed-step solver ({', '.join(FIXED_SOLVERS)}),"
                                f" not {args.solver!r}")
    # Decode every input first: a bad file fails before any work starts (one clear error), or
    # with --skip-bad is reported and left out.
    images, kept = [], []
    for f in files:
        try:
            images.append(fit_square(torch.from_numpy(read_image(f)), size))
            kept.append(f)
        except MedShiftError as exc:
            if not args.skip_bad:
                raise
            print(f"medshift translate: skipped {f}: {exc}", file=sys.stderr)
    if not kept:
        raise MedShiftError("no readable input image (all were skipped)")
    files = kept
    fast = None
    if args.compile:
        from .flow.sampler import Sampler

        b = min(args.batch_size, len(files))
        fast = Sampler(run.model, (b, *run.model_shape), src, tgt, args.tau, args.steps,
                       args.solver, ge, gd, device=dev, compile=True)
    with ctx:
        for k in tqdm(range(0, len(files), args.batch_size), disable=args.no_progress,
                      desc="translate"):
            chunk = files[k:k + args.batch_size]
            x = torch.stack(images[k:k + args.batch_size]).to(dev)
            # pixel or latent runs alike: encode -> translate -> decode through the run's codec
            if fast is None:
                y = run.translate_images(x, src, tgt, tau=args.tau, guidance_encode=ge,
                                         guidance_decode=gd, steps=args.steps,
                                         solver=args.solver)
            else:  # static shape: a short last batch is padded (no recompilation)
                z = run.encode_image(x)
                pad = fast.shape[0] - z.shape[0]
                if pad:
                    z = torch.cat([z, z[-1:].expand(pad, *z.shape[1:])])
                y = run.decode_image(fast.translate(z.to(fast.dtype))[:len(chunk)])
            for f, img in zip(chunk, y.clamp(-1, 1).cpu()):
                write_png16(out / f"{f.stem}_{args.target}.png", img[0].numpy())
    print(f"wrote {len(files)} image(s) to {out}")
    return 0


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
