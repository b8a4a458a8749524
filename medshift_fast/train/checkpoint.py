"""Run directories: config.json + model.safetensors (EMA) + raw.safetensors + training_state.pt.

Weights are safetensors (no pickles); the optimizer/scheduler/RNG state goes through
``torch.load(..., weights_only=True)``. Every file is written atomically (temp file + fsync +
rename), so a crash mid-write leaves the previous checkpoint loadable. The training state holds
its own copy of the raw and EMA weights, so resuming reads ONE file and can never mix steps.

Layout of a run: RUN/ (the last checkpoint + log.csv), RUN/checkpoints/step_NNNNNNN/ (every
``ckpt_every`` steps, the newest ``keep_ckpts`` kept), RUN/best/ (lowest validation loss),
RUN/autoencoder/ (latent mode), RUN/samples/ (PNG grids). Sub-checkpoints are complete run
directories written to a temporary folder and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .. import __version__
from ..errors import MedShiftError
from ..models.unet import UNet, UNetConfig
from .config import TrainConfig, check_resumable
from .latent import PixelCodec, codec_from_reference

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
        atomic_write(run_dir / RAW_WEIGHTS,
                     lambda p: save_file(_contig(raw_state), p, metadata=meta))
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
    """A loaded checkpoint: EMA model (eval mode), configs, domain names and the image codec.

    ``model`` works in *model space*: pixels in pixel mode, autoencoder latents in latent mode.
    ``encode_image`` / ``decode_image`` map pixel images to model space and back (identity in
    pixel mode); ``translate_images`` / ``sample_images`` do the whole thing on pixels.
    """

    path: Path
    model: UNet
    model_config: UNetConfig
    train_config: TrainConfig
    domains: tuple[str, ...]
    raw: dict[str, Any]
    codec: PixelCodec = field(default_factory=PixelCodec)

    @property
    def latent(self) -> bool:
        """True when the model works in an autoencoder's latent space."""
        return self.codec.kind != "pixel"

    @property
    def image_size(self) -> int:
        """Pixel side S of the images the run was trained on."""
        return self.train_config.image_size

    @property
    def model_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image in model space."""
        s = self.train_config.image_size // self.codec.factor
        return (self.model_config.in_channels, s, s)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) pixels in [-1, 1] -> (B, *model_shape) model space (identity in pixels)."""
        return self.codec.encode(x)

    def decode_image(self, z: torch.Tensor) -> torch.Tensor:
        """(B, *model_shape) -> (B, 1, S, S) pixels (identity in pixel mode)."""
        return self.codec.decode(z)

    def translate_images(self, x: torch.Tensor, source, target, **kw) -> torch.Tensor:
        """``flow.translate`` on pixel images: encode -> translate -> decode; kw as translate."""
        from ..flow import translate

        z = translate(self.model, self.encode_image(x), self.label_of(source),
                      self.label_of(target), **kw)
        return self.decode_image(z)

    def sample_images(self, target, n: int, **kw) -> torch.Tensor:
        """``flow.sample`` of n images of a domain, decoded to pixels: (n, 1, S, S)."""
        from ..flow import sample

        dev = next(self.model.parameters()).device
        z = sample(self.model, self.label_of(target), n, self.model_shape, device=dev, **kw)
        return self.decode_image(z)

    def label_of(self, y):
        """A domain name, index or label tensor -> what flow functions take."""
        return y if isinstance(y, torch.Tensor) else self.label(y)

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


def load_run(run_dir: str | Path, device: str | torch.device = "cpu",
             ema: bool = True) -> LoadedRun:
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
    codec = codec_from_reference(cfg.get("latent"), run_dir, device)
    return LoadedRun(run_dir, model, mcfg, tcfg, domains, cfg, codec)


def load_training_state(run_dir: str | Path) -> dict[str, Any]:
    p = Path(run_dir) / STATE
    if not p.is_file():
        raise MedShiftError(f"{p} is missing: cannot resume this run")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise MedShiftError(f"training state {p} is corrupt or not a weights-only file "
                            f"({exc})") from exc


def save_run_atomic_dir(run_dir: str | Path, *args, **kwargs) -> Path:
    """``save_run`` into a temporary sibling folder, then rename it to ``run_dir``.

    An existing ``run_dir`` is first renamed to ``<name>.old`` and removed afterwards, so a crash
    at any point leaves either the old or the new complete checkpoint (``<name>.old`` at worst).
    """
    run_dir = Path(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    for stale in run_dir.parent.glob(f".{run_dir.name}.tmp-*"):  # left by a killed writer
        shutil.rmtree(stale, ignore_errors=True)
    tmp = run_dir.with_name(f".{run_dir.name}.tmp-{os.getpid()}")
    old = run_dir.with_name(f"{run_dir.name}.old")
    try:
        save_run(tmp, *args, **kwargs)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if run_dir.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(run_dir, old)
    os.replace(tmp, run_dir)
    shutil.rmtree(old, ignore_errors=True)
    return run_dir


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
