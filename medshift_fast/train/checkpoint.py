"""Resuming a run: the training state, which checkpoint folder to resume, retention, compatibility.

The run directory format itself (config.json, safetensors weights, ``save_run`` / ``load_run``)
is ``medshift_fast.run``. The training state (``training_state.pt``: optimizer, scheduler, RNG
states and its own copy of the raw and EMA weights, so resuming reads ONE file and can never mix
steps) is read back with ``torch.load(..., weights_only=True)``: no pickled code.

Layout of a run: RUN/ (the last checkpoint + log.csv), RUN/checkpoints/step_NNNNNNN/ (every
``ckpt_every`` steps, the newest ``keep_ckpts`` kept), RUN/best/ (lowest validation loss),
RUN/autoencoder/ (latent mode), RUN/samples/ (PNG grids). Sub-checkpoints are complete run
directories written to a temporary folder and renamed into place.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from ..errors import MedShiftError
from ..models.unet import UNetConfig
from ..run import CONFIG, STATE, read_run_config
from .config import TrainConfig, check_resumable


def load_training_state(run_dir: str | Path) -> dict[str, Any]:
    p = Path(run_dir) / STATE
    if not p.is_file():
        raise MedShiftError(f"{p} is missing: cannot resume this run")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise MedShiftError(f"training state {p} is corrupt or not a weights-only file "
                            f"({exc})") from exc


def prune_checkpoints(root: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` step_* folders under root (keep 0 = keep all)."""
    root = Path(root)
    steps = sorted(p for p in root.glob("step_*") if p.is_dir())
    gone = steps[:-keep] if keep > 0 else []
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return gone


def resolve_resume(path: str | Path) -> Path:
    """The checkpoint folder to resume from: ``path`` itself, or ``path.old`` after a crash."""
    path = Path(path)
    if (path / CONFIG).is_file() and (path / STATE).is_file():
        return path
    old = path.with_name(f"{path.name}.old")
    if (old / CONFIG).is_file() and (old / STATE).is_file():
        return old
    if (path / CONFIG).is_file():
        raise MedShiftError(f"{path} has no {STATE}: it holds weights only and cannot be resumed")
    raise MedShiftError(f"nothing to resume in {path}: no checkpoint (config.json + {STATE}) "
                        "there; drop --resume to start a new run")


def check_compatible(src: Path, cfg: TrainConfig, model_cfg: UNetConfig, domains: tuple[str, ...],
                     space: str) -> None:
    """Refuse to resume from ``src`` unless config, model, domains and space (pixel/latent) match.

    Raises:
        MedShiftError: naming the field that differs and both values.
    """
    saved = read_run_config(src)
    try:
        saved_cfg = TrainConfig.from_dict(saved["train"])
        saved_model = UNetConfig(**saved["model"])
    except (KeyError, TypeError) as exc:
        raise MedShiftError(f"checkpoint config in {src} is incomplete ({exc})") from exc
    check_resumable(saved_cfg, cfg)
    if tuple(saved["domains"]) != tuple(domains):
        raise MedShiftError(f"cannot resume: the checkpoint's domains are {list(saved['domains'])}"
                            f" but the data gives {list(domains)}; pass --domains in the "
                            "checkpoint's order")
    now = model_cfg.to_dict()
    for k, v in saved_model.to_dict().items():
        if now[k] != v:
            raise MedShiftError(f"cannot resume: the checkpoint's model has {k}={v!r}, this run "
                                f"builds {k}={now[k]!r}")
    kind = (saved.get("latent") or {}).get("kind", "pixel")
    if kind != space:
        raise MedShiftError(f"cannot resume: the checkpoint was trained in {kind} space, this run "
                            f"asks for {space} space")
