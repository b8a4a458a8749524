"""``medshift train``: flags map 1:1 onto TrainConfig fields."""

from __future__ import annotations

import argparse

from .config import TrainConfig


def register(sub: argparse._SubParsersAction) -> None:
    d = TrainConfig()
    p = sub.add_parser("train", help="train a class-conditional SB flow-matching model")
    p.add_argument("--data", required=True, help="dataset root (ROOT/<domain>/*.png ...)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--preset", default=d.preset, help="tiny | small | base")
    p.add_argument("--image-size", "--size", dest="image_size", type=int, default=d.image_size)
    p.add_argument("--domains", default=None, help="comma-separated domain names (default: all)")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup-frac", type=float, default=d.warmup_frac)
    p.add_argument("--grad-clip", type=float, default=d.grad_clip)
    p.add_argument("--sigma", type=float, default=d.sigma)
    p.add_argument("--coupling", default=d.coupling, help="sinkhorn | exact | independent")
    p.add_argument("--plan-sampling", default=d.plan_sampling,
                   help="multinomial | conditional | assignment")
    p.add_argument("--eps-relative", type=float, default=None)
    p.add_argument("--p-uncond", type=float, default=d.p_uncond)
    p.add_argument("--ema-decay", type=float, default=d.ema_decay)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--precision", default=d.precision, help="auto | fp32 | bf16")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--num-workers", type=int, default=d.num_workers)
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--ckpt-every", type=int, default=d.ckpt_every)
    p.add_argument("--device", default=d.device)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    from .loop import train

    fields = {k: v for k, v in vars(args).items()
              if k in TrainConfig.__dataclass_fields__}
    if fields.get("domains"):
        fields["domains"] = tuple(s.strip() for s in fields["domains"].split(",") if s.strip())
    cfg = TrainConfig(**fields)
    out = train(cfg, progress=not args.no_progress)
    print(f"run written to {out}")
    return 0
