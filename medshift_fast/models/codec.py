"""Model space <-> pixel space: identity (pixel mode) or an autoencoder's latent space.

A codec maps images x (B, 1, S, S) in [-1, 1] to the space the flow is trained in and back:
``encode(x) = scale * (mean(q(z|x)) - shift)`` and ``decode(z) = D(z / scale + shift)``
(clamped to [-1, 1]). A run's config.json stores a reference (``"latent"``) from which
``codec_from_reference`` rebuilds the codec, so translation and export decode transparently:

* ``{"kind": "medshift", "path": "autoencoder", ...}``: a `medshift train-autoencoder` run, copied
  into RUN/autoencoder/ (small) so the run directory is self-contained;
* ``{"kind": "diffusers", "path": "/abs/dir", ...}``: a local diffusers AutoencoderKL folder
  (referenced, not copied: SD-VAE is 335 MB). Grayscale is repeated to RGB on the way in and the
  RGB channels are averaged on the way out. Never downloads.

The autoencoder run format (``AE_FORMAT``: config.json + autoencoder.safetensors) is read and
written here (``load_autoencoder`` / ``save_autoencoder``); ``train/autoencoder.py`` trains one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..errors import MedShiftError
from ..fileio import atomic_write_text, load_safetensors, read_format_json, save_safetensors
from .autoencoder import AutoencoderConfig, KLAutoencoder

__all__ = ["AE_FORMAT", "AE_WEIGHTS", "AutoencoderCodec", "DiffusersCodec", "PixelCodec",
           "codec_for", "codec_from_reference", "copy_autoencoder", "load_autoencoder",
           "save_autoencoder"]

AE_FORMAT = "medshift_fast_autoencoder"
AE_CONFIG = "config.json"
AE_WEIGHTS = "autoencoder.safetensors"


# ------------------------------------------------------------------------ autoencoder run files
def save_autoencoder(out: str | Path, model: KLAutoencoder, meta: dict[str, Any]) -> Path:
    """Write RUN_AE/autoencoder.safetensors, then RUN_AE/config.json (format, model, ``meta``)."""
    out = Path(out)
    save_safetensors(out / AE_WEIGHTS, model.state_dict(), {"step": str(meta.get("step", 0))})
    full = {"format": AE_FORMAT, "format_version": 1, "medshift_fast_version": __version__,
            "model": model.config.to_dict(), **meta}
    atomic_write_text(out / AE_CONFIG, json.dumps(full, indent=2, sort_keys=True))
    return out


def load_autoencoder(path: str | Path, device: str | torch.device = "cpu"
                     ) -> tuple[KLAutoencoder, dict[str, Any]]:
    """Load RUN_AE (eval mode, no gradients) and its config.json (with ``latent_scale``)."""
    path = Path(path)
    cfg_path = path / AE_CONFIG
    if not cfg_path.is_file():
        raise MedShiftError(f"{path} is not an autoencoder run (no {AE_CONFIG}); train one with "
                            "`medshift train-autoencoder --data DIR --out RUN_AE`")
    meta = read_format_json(cfg_path, AE_FORMAT, "autoencoder run config",
                            "pass a folder written by `medshift train-autoencoder`")
    if meta.get("latent_scale") is None:
        raise MedShiftError(f"autoencoder run {path} is unfinished (no latent scale yet); let "
                            "`medshift train-autoencoder` finish")
    model = KLAutoencoder(AutoencoderConfig(**meta["model"]))
    sd, _ = load_safetensors(path / AE_WEIGHTS, "autoencoder weights")
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise MedShiftError(f"autoencoder weights in {path} do not match its config "
                            f"({str(exc).splitlines()[0]})") from exc
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device).eval(), meta


# ----------------------------------------------------------------------------------- codecs
class PixelCodec:
    """Identity codec (pixel mode)."""

    kind = "pixel"
    factor = 1
    scale = 1.0
    image_channels: int | None = None  # pixel mode: the network's channels

    def __init__(self, channels: int = 1) -> None:
        self.channels = channels

    def to(self, device) -> PixelCodec:
        return self

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def reference(self) -> dict[str, Any] | None:
        return None


class _ModuleCodec(PixelCodec):
    def __init__(self, module: nn.Module, channels: int, factor: int, scale: float,
                 shift: float = 0.0) -> None:
        self.module, self.channels, self.factor = module, channels, factor
        self.scale, self.shift = float(scale), float(shift)

    def to(self, device):
        self.module.to(device)
        return self

    def _dev(self, x):
        p = next(self.module.parameters())
        return x.to(p.device, p.dtype)


class AutoencoderCodec(_ModuleCodec):
    """The package's own KL autoencoder (posterior mean, scaled to unit variance)."""

    kind = "medshift"

    def __init__(self, path: str | Path, device="cpu") -> None:
        model, meta = load_autoencoder(path, device)
        super().__init__(model, model.config.latent_channels, model.config.factor,
                         meta["latent_scale"])
        self.image_channels = int(model.config.in_channels)
        self.path = Path(path)

    @torch.no_grad()
    def encode(self, x):
        return (self.module.encode(self._dev(x))[0] - self.shift) * self.scale

    @torch.no_grad()
    def decode(self, z):
        return self.module.decode(self._dev(z) / self.scale + self.shift).clamp(-1, 1)

    def reference(self):
        return {"kind": self.kind, "path": "autoencoder", "scale": self.scale,
                "channels": self.channels, "factor": self.factor}


class DiffusersCodec(_ModuleCodec):
    """A local diffusers ``AutoencoderKL`` folder (e.g. an SD-VAE copy); never downloads."""

    kind = "diffusers"

    def __init__(self, path: str | Path, device="cpu") -> None:
        try:
            from diffusers import AutoencoderKL
        except ImportError as exc:
            raise MedShiftError("--latent-diffusers needs the diffusers package, which is not "
                                "installed: `pip install diffusers` (then point it at a local "
                                "AutoencoderKL folder), or train one with `medshift "
                                "train-autoencoder` and pass --latent RUN_AE") from exc
        path = Path(path)
        if not (path / "config.json").is_file():
            raise MedShiftError(f"{path} is not a diffusers AutoencoderKL folder (no config.json)")
        try:
            vae = AutoencoderKL.from_pretrained(str(path), local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - any loader failure is a bad folder
            raise MedShiftError(f"cannot load the AutoencoderKL in {path}: {exc}") from exc
        vae.requires_grad_(False).eval().to(device)
        c = vae.config
        factor = 2 ** (len(c.block_out_channels) - 1)
        super().__init__(vae, c.latent_channels, factor, getattr(c, "scaling_factor", 0.18215),
                         getattr(c, "shift_factor", None) or 0.0)
        self.in_channels = c.in_channels
        self.image_channels = 1  # grayscale in (repeated to RGB), RGB averaged out
        self.path = path.resolve()

    @torch.no_grad()
    def encode(self, x):
        x = self._dev(x)
        if x.shape[1] == 1 and self.in_channels != 1:
            x = x.repeat(1, self.in_channels, 1, 1)
        return (self.module.encode(x).latent_dist.mean - self.shift) * self.scale

    @torch.no_grad()
    def decode(self, z):
        x = self.module.decode(self._dev(z) / self.scale + self.shift).sample
        return x.mean(1, keepdim=True).clamp(-1, 1)

    def reference(self):
        return {"kind": self.kind, "path": str(self.path), "scale": self.scale,
                "shift": self.shift, "channels": self.channels, "factor": self.factor}


def codec_for(latent: str | None = None, latent_diffusers: str | None = None,
              device="cpu") -> PixelCodec:
    """The codec a training run asks for: an autoencoder run, a diffusers folder, or pixels."""
    if latent and latent_diffusers:
        raise MedShiftError("pass either --latent or --latent-diffusers, not both")
    if latent:
        return AutoencoderCodec(latent, device)
    if latent_diffusers:
        return DiffusersCodec(latent_diffusers, device)
    return PixelCodec()


def codec_from_reference(ref: dict[str, Any] | None, run_dir: str | Path, device="cpu"):
    """Rebuild the codec stored in a run's config.json (None -> pixel mode)."""
    if not ref:
        return PixelCodec()
    kind, path = ref.get("kind"), Path(ref.get("path", ""))
    if not path.is_absolute():
        path = Path(run_dir) / path
    if kind == "medshift":
        codec = AutoencoderCodec(path, device)
    elif kind == "diffusers":
        codec = DiffusersCodec(path, device)
    else:
        raise MedShiftError(f"run {run_dir} has an unknown latent kind {kind!r}")
    if abs(codec.scale - float(ref.get("scale", codec.scale))) > 1e-6 * max(1.0, codec.scale):
        raise MedShiftError(f"the autoencoder in {path} has latent scale {codec.scale}, but run "
                            f"{run_dir} was trained with {ref['scale']}; it was replaced")
    return codec


def copy_autoencoder(codec: PixelCodec, run_dir: str | Path) -> None:
    """Copy a medshift autoencoder run into RUN/autoencoder/ (self-contained run directory)."""
    if codec.kind != "medshift":
        return
    dst = Path(run_dir) / "autoencoder"
    if dst.resolve() == codec.path.resolve():
        return
    dst.mkdir(parents=True, exist_ok=True)
    for name in (AE_CONFIG, AE_WEIGHTS):
        tmp = dst / f".{name}.tmp"
        shutil.copyfile(codec.path / name, tmp)
        tmp.replace(dst / name)
