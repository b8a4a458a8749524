"""``medshift simulate``: write the built-in X-DigiSkull-like five-domain dataset."""

from __future__ import annotations

import argparse

from ..errors import MedShiftError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate",
        help="write a simulated five-domain skull X-ray dataset (pixel-aligned views)",
        description="Render a procedural skull phantom per subject at several C-arm views in the "
        "five domains synthetic_low, synthetic_high, real_low, real_normal, real_exposure "
        "(16-bit PNG), with manifest.csv and simulator.json. Same seed -> identical files.",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--subjects", type=int, default=10, help="number of phantoms (default 10)")
    p.add_argument("--views", type=int, default=6, help="C-arm views per subject (default 6)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--geometry", choices=("cone", "parallel"), default="cone")
    p.add_argument("--domains", default=None,
                   help="comma-separated subset of the five domains (default: all)")
    p.add_argument("--supersample", type=int, default=0,
                   help="sub-pixels per side (0 = auto: 2 up to 128 px, else 1)")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset already in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_simulate)


def cmd_simulate(args) -> int:
    from . import DOMAINS
    from .simulator import simulate

    kw = {}
    if args.domains:
        kw["domains"] = tuple(d.strip() for d in args.domains.split(",") if d.strip())
        unknown = [d for d in kw["domains"] if d not in DOMAINS]
        if unknown:
            raise MedShiftError(f"unknown domain(s) {', '.join(unknown)}; choose from "
                                f"{', '.join(DOMAINS)}")
    out = simulate(args.out, subjects=args.subjects, views=args.views, size=args.size,
                   seed=args.seed, progress=not args.no_progress, overwrite=args.overwrite,
                   geometry=args.geometry, supersample=args.supersample, **kw)
    n = args.subjects * args.views * len(kw.get("domains", DOMAINS))
    print(f"wrote {n} images to {out} (manifest.csv, simulator.json)")
    return 0
