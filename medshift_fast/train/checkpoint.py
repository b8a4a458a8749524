"""Run directories: config.json + model.safetensors (EMA) + raw.safetensors + training_state.pt.

Weights are safetensors (no pickles); the optimizer/scheduler/RNG state goes through
``torch.load(..., weights_only=True)``. Every file is written atomically (temp file + fsync +
rename), so a crash mid-write leaves the previous checkpoint loadable.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .. import __version__
from ..errors import MedShiftError
from ..models.unet import UNet, UNetConfig
from .config import TrainConfig

FORMAT_VERSION = 1
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
RAW_WEIGHTS = "raw.safetensors"
STATE = "training_state.pt"


def atomic_write(path: str | Path, write_fn) -> None:
    """Write ``path`` atomically: write_fn(tmp_path) then fsync + os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    def w(tmp):
        with open(tmp, "w") as fh:
            fh.write(text)

    atomic_write(path, w)


def _contig(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


def save_run(
    run_dir: str | Path,
    train_cfg: TrainConfig,
    model_cfg: UNetConfig,
    domains: tuple[str, ...] | list[str],
    ema_state: dict[str, torch.Tensor],
    raw_state: dict[str, torch.Tensor] | None = None,
    training_state: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write (or overwrite) a checkpoint in ``run_dir``. Weights are written before config.json."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = {"format": "medshift_fast", "format_version": str(FORMAT_VERSION)}
    atomic_write(run_dir / WEIGHTS, lambda p: save_file(_contig(ema_state), p, metadata=meta))
    if raw_state is not None:
        atomic_write(run_dir / RAW_WEIGHTS, lambda p: save_file(_contig(raw_state), p, metadata=meta))
    if training_state is not None:
        atomic_write(run_dir / STATE, lambda p: torch.save(training_state, p))
    cfg = {
        "format": "medshift_fast",
        "format_version": FORMAT_VERSION,
        "medshift_fast_version": __version__,
        "domains": list(domains),
        "model": model_cfg.to_dict(),
        "train": train_cfg.to_dict(),
        **(extra or {}),
    }
    atomic_write_text(run_dir / CONFIG, json.dumps(cfg, indent=2, sort_keys=True))
    return run_dir


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise MedShiftError(f"checkpoint {run_dir} does not exist; pass a run directory written "
                            "by `medshift train`")
    cfg_path = run_dir / CONFIG if run_dir.is_dir() else run_dir
    if not cfg_path.is_file():
        raise MedShiftError(f"checkpoint {run_dir} has no {CONFIG}; is it a run directory from "
                            "`medshift train`?")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MedShiftError(f"checkpoint config {cfg_path} is not valid JSON ({exc}); the run "
                            "directory is damaged - use another checkpoint") from exc
    if not isinstance(cfg, dict) or cfg.get("format") != "medshift_fast":
        raise MedShiftError(f"{cfg_path} is not a medshift_fast checkpoint config")
    if cfg.get("format_version") != FORMAT_VERSION:
        raise MedShiftError(
            f"checkpoint {run_dir} has format version {cfg.get('format_version')}, this "
            f"medshift_fast ({__version__}) reads version {FORMAT_VERSION}; re-export or retrain"
        )
    return cfg


@dataclass
class LoadedRun:
    """A loaded checkpoint: EMA model (eval mode), configs and domain names."""

    path: Path
    model: UNet
    model_config: UNetConfig
    train_config: TrainConfig
    domains: tuple[str, ...]
    raw: dict[str, Any]

    def label(self, name: str | int) -> int:
        """Domain name (or index) -> label; MedShiftError for an unknown domain."""
        if isinstance(name, int) or (isinstance(name, str) and name.isdigit()):
            i = int(name)
            if 0 <= i < len(self.domains):
                return i
        elif name in self.domains:
            return self.domains.index(name)
        raise MedShiftError(f"unknown domain {name!r}; this model knows: {', '.join(self.domains)}")


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise MedShiftError(f"checkpoint weights {path} are missing; the run directory is "
                            "incomplete - use another checkpoint")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise MedShiftError(f"checkpoint weights {path} are corrupt or tampered ({exc}); use "
                            "another checkpoint") from exc


def load_run(run_dir: str | Path, device: str | torch.device = "cpu", ema: bool = True) -> LoadedRun:
    """Load a run directory's model (EMA weights by default) for sampling/translation/export."""
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    try:
        mcfg = UNetConfig(**cfg["model"])
        tcfg = TrainConfig.from_dict(cfg["train"])
        domains = tuple(cfg["domains"])
    except (KeyError, TypeError) as exc:
        raise MedShiftError(f"checkpoint config in {run_dir} is incomplete ({exc})") from exc
    model = UNet(mcfg)
    sd = load_weights(run_dir / (WEIGHTS if ema else RAW_WEIGHTS))
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise MedShiftError(f"checkpoint weights in {run_dir} do not match its config ({first}); "
                            "the files were mixed up or tampered with") from exc
    for k, v in sd.items():
        if not torch.isfinite(v).all():
            raise MedShiftError(f"checkpoint weights in {run_dir} contain NaN/Inf ({k})")
    model.to(device).eval()
    return LoadedRun(run_dir, model, mcfg, tcfg, domains, cfg)


def load_training_state(run_dir: str | Path) -> dict[str, Any]:
    p = Path(run_dir) / STATE
    if not p.is_file():
        raise MedShiftError(f"{p} is missing: cannot resume this run")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise MedShiftError(f"training state {p} is corrupt or not a weights-only file ({exc})") from exc
