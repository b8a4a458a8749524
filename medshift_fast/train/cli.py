"""``medshift train`` and ``medshift train-autoencoder``: flags map 1:1 onto config fields.

Every ``medshift train`` flag defaults to None ("not given"), so that ``--resume`` can start from
the checkpoint's own configuration and apply only the flags given on the command line (a flag
that changes the model or the math of a step is then refused, naming the field).
"""

from __future__ import annotations

import argparse
import os

from .autoencoder import AutoencoderTrainConfig
from .config import DATA_MODES, PRECISIONS, TrainConfig

_HELP = {
    "data": "dataset root (ROOT/<domain>/*.png ...)",
    "out": "run directory",
    "preset": "tiny | small | base",
    "model_channels": "override the preset's base width",
    "domains": "comma-separated domain names (default: all)",
    "domain_map": "folder=domain,... rename/merge dataset folders into domains",
    "skip_bad": "log and skip unreadable image files instead of stopping",
    "resize": "crop | pad: how non-square images are fitted to --image-size",
    "batch_size": "images per optimizer step over all processes",
    "grad_accum": "gradient accumulation micro-steps per optimizer step",
    "balanced": "class-balanced sampling (every domain equally often)",
    "coupling": "sinkhorn | exact | independent",
    "plan_sampling": "multinomial | conditional | assignment",
    "precision": " | ".join(PRECISIONS),
    "compile": "torch.compile the model",
    "num_workers": "DataLoader worker processes (stream data mode)",
    "data_mode": " | ".join(DATA_MODES) + " (memory: decode once, keep in RAM)",
    "max_nonfinite": "stop after this many non-finite steps in a row",
    "ckpt_every": "checkpoint every N steps (RUN/checkpoints/step_N)",
    "keep_ckpts": "keep the newest N step checkpoints (0 = all)",
    "val_every": "validation loss every N steps, best kept in RUN/best (0 = off)",
    "sample_every": "PNG grid of samples + translations every N steps (0 = off)",
    "tensorboard": "also log to RUN/tb (needs tensorboard)",
    "latent": "train in the latent space of a `medshift train-autoencoder` run",
    "latent_diffusers": "train in the latent space of a local diffusers AutoencoderKL folder",
    "device": "auto | cpu | cuda | cuda:N",
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_fields(p: argparse.ArgumentParser, cls, skip=(), none_defaults: bool = True,
                required=()) -> None:
    d = cls()
    for f in cls.__dataclass_fields__.values():
        if f.name in skip:
            continue
        default = getattr(d, f.name)
        kw = {"dest": f.name, "default": None if none_defaults else default,
              "help": f"{_HELP.get(f.name, '')} (default: {default})".strip()}
        if isinstance(default, bool):  # --flag / --no-flag (some default to True)
            p.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, **kw)
            continue
        if f.name in ("domains", "channel_mult"):
            kw["type"] = str
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            kw["type"] = type(default)
        elif f.name == "eps_relative":
            kw["type"] = float
        elif f.name == "model_channels":
            kw["type"] = int
        names = [_flag(f.name)] + (["--size"] if f.name == "image_size" else [])
        if f.name in required:
            kw["required"] = True
        p.add_argument(*names, **kw)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a class-conditional SB flow-matching model "
                       "(multi-GPU: torchrun --nproc_per_node=P -m medshift_fast train ...)")
    _add_fields(p, TrainConfig, skip=("resume",), required=("out",))
    p.add_argument("--resume", nargs="?", const="last", default=None,
                   help="continue exactly: alone = the run in --out, or a checkpoint folder "
                   "(RUN/checkpoints/step_N, RUN/best)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("train-autoencoder",
                       help="train the small KL autoencoder for latent-mode training")
    _add_fields(p, AutoencoderTrainConfig, none_defaults=False, required=("data", "out"))
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train_autoencoder)


def _split(s: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in s.split(",") if x.strip())


def cmd_train(args) -> int:
    from . import checkpoint as ckpt
    from .loop import train

    given = {k: v for k, v in vars(args).items()
             if k in TrainConfig.__dataclass_fields__ and v is not None}
    if isinstance(given.get("domains"), str):
        given["domains"] = _split(given["domains"])
    if args.resume:
        src = ckpt.resolve_resume(given.get("out", "") if args.resume == "last" else args.resume)
        saved = TrainConfig.from_dict(ckpt.read_run_config(src)["train"])
        cfg = saved.replace(**given)
    else:
        cfg = TrainConfig(**given)
    out = train(cfg, progress=not args.no_progress)
    if os.environ.get("RANK", "0") == "0":
        print(f"run written to {out}")
    return 0


def cmd_train_autoencoder(args) -> int:
    from .autoencoder import train_autoencoder

    kw = {k: v for k, v in vars(args).items() if k in AutoencoderTrainConfig.__dataclass_fields__}
    if isinstance(kw.get("domains"), str):
        kw["domains"] = _split(kw["domains"])
    if isinstance(kw.get("channel_mult"), str):
        kw["channel_mult"] = tuple(int(v) for v in _split(kw["channel_mult"]))
    res = train_autoencoder(AutoencoderTrainConfig(**kw), progress=not args.no_progress)
    print(f"autoencoder written to {res['out']}: reconstruction PSNR {res['val_psnr']:.2f} dB on "
          f"{res['val_images']} validation image(s), latent scale {res['latent_scale']:.4f}")
    return 0
