"""``medshift evaluate`` and ``medshift demo``."""

from __future__ import annotations

import argparse


def _floats(s: str) -> tuple[float, ...]:
    return tuple(float(v) for v in s.split(",") if v.strip())


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score translations on the test split vs baselines")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--source", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--taus", type=_floats, default=(0.3, 0.45, 0.6))
    p.add_argument(
        "--guidance", type=float, default=None, help="both legs (overrides the two below)"
    )
    p.add_argument("--guidance-encode", type=float, default=2.0)
    p.add_argument("--guidance-decode", type=float, default=2.0)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--solver", default="euler")
    p.add_argument("--split", default="test")
    p.add_argument("--reference-split", default="train")
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-baselines", dest="baselines", action="store_false")
    p.add_argument("--out", required=True)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="simulate -> train tiny -> evaluate -> export, on this CPU")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--subjects", type=int, default=40)
    p.add_argument("--views", type=int, default=6)
    p.add_argument("--steps", type=int, default=1500, help="maximum training steps")
    p.add_argument("--train-minutes", type=float, default=6.5,
                   help="training time budget; steps = min(--steps, budget / measured s/step)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a 1-minute smoke run (not convincing)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)


def cmd_evaluate(args) -> int:
    from .evaluate import EvalConfig, evaluate

    ge = args.guidance if args.guidance is not None else args.guidance_encode
    gd = args.guidance if args.guidance is not None else args.guidance_decode
    cfg = EvalConfig(
        checkpoint=args.checkpoint,
        data=args.data,
        source=args.source,
        target=args.target,
        out=args.out,
        taus=args.taus,
        guidance_encode=ge,
        guidance_decode=gd,
        steps=args.steps,
        solver=args.solver,
        split=args.split,
        reference_split=args.reference_split,
        max_images=args.max_images,
        batch_size=args.batch_size,
        seed=args.seed,
        baselines=args.baselines,
    )
    evaluate(cfg, progress=not args.no_progress)
    print(f"report written to {args.out}/report.md")
    return 0


def cmd_demo(args) -> int:
    from .demo import DemoConfig, run_demo

    cfg = DemoConfig(
        out=args.out,
        size=args.size,
        subjects=args.subjects,
        views=args.views,
        steps=args.steps,
        train_minutes=args.train_minutes,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    if args.quick:
        cfg = cfg.quick()
    path = run_demo(cfg, progress=not args.no_progress)
    print(f"demo report: {path}")
    return 0
