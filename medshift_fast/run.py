"""The run directory format: what ``medshift train`` (and ``distill``) write and everything loads.

A run directory holds::

    config.json           format, version, kind, domains, model config, training config,
                          latent codec reference, step ...  (written last)
    model.safetensors     EMA weights (what is sampled, translated and exported); its metadata
                          records the domains, image size and channels it was trained with
    raw.safetensors       raw (non-EMA) weights
    training_state.pt     optimizer / scheduler / RNG state (``torch.load(weights_only=True)``)
    log.csv, checkpoints/step_N/, best/, samples/, autoencoder/ (latent mode)

Weights are safetensors (never pickles). Every file is written atomically (``fileio``), so a
crash mid-write leaves the previous checkpoint loadable. ``load_run`` checks the config against
the weights (domain count, image size, channels, and the domain list recorded in the weights'
metadata), so a hand-edited or mixed-up run is refused rather than translated with wrong labels.

Integrity (everything that changes a translation is verified at load): ``save_run`` records in
config.json ``"sha256"`` the SHA-256 of each weights file and, under ``"config"``, one digest per
entry of config.json that decides what the run computes -- every entry but the bookkeeping ones
(:data:`BOOKKEEPING`: where and when it was trained, its step, validation figure): the domains
and their order, ``model`` (architecture; for a student its tau range, pairs, teacher settings,
arch), ``train`` (image size, crop, ...), ``learned`` (scale, intensity rule), ``latent``.
``load_run`` checks the config digests before it builds a network and the weights file before it
reads a byte of it as weights, so a flipped bit, a replaced file or an edited tau range is
refused ("damaged or edited"). A run without the hashes (saved by an older medshift_fast) loads
with one :class:`~medshift_fast.errors.MedShiftWarning` line; :func:`record_run_hashes`
(``scripts/hash_run_weights.py``) adds them. :attr:`LoadedRun.digest` (a hash of the weights'
and the config's digests) names the run in outputs' metadata without its local path.

This module imports nothing from ``train/``: evaluation, export, deployment and the CLI's
``translate`` load runs through it.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .errors import MedShiftError, MedShiftWarning
from .fileio import (
    atomic_dir,
    atomic_write,
    atomic_write_text,
    load_safetensors,
    read_format_json,
    save_safetensors,
    sha256_file,
)
from .models.codec import PixelCodec, codec_from_reference
from .models.unet import UNet, UNetConfig

__all__ = ["BOOKKEEPING", "CONFIG", "FORMAT_VERSION", "RAW_WEIGHTS", "STATE", "WEIGHTS",
           "LoadedRun", "check_config_hash", "check_weights_hash", "config_digests",
           "load_run", "load_weights", "read_run_config", "record_run_hashes", "resolve_device",
           "run_digest", "save_run", "save_run_atomic_dir", "run_exists", "clear_run",
           "update_run_config"]

FORMAT_VERSION = 1
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
RAW_WEIGHTS = "raw.safetensors"
STATE = "training_state.pt"
KINDS = ("flow", "student")
#: config.json entries that do not change what a run computes (where and when it was trained,
#: how training went); every other entry is covered by the config digests
BOOKKEEPING = frozenset({"sha256", "best_val", "step", "n_skipped", "medshift_fast_version",
                         "teacher", "teacher_cache"})
HASHES = "sha256"  # config.json entry of the digests: {weights file: hex, "config": {entry: hex}}


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """auto -> cuda when a GPU is visible, else cpu; an explicit cuda without a GPU is an error."""
    if isinstance(name, torch.device):
        return name
    if name in ("auto", None, ""):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise MedShiftError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MedShiftError(f"device {name!r} requested but no CUDA GPU is visible; use "
                            "--device cpu")
    return dev


def _as_dict(cfg) -> dict[str, Any]:
    return dict(cfg) if isinstance(cfg, dict) else cfg.to_dict()


def _weights_meta(model_cfg: dict, domains, image_size) -> dict[str, str]:
    return {"format": "medshift_fast", "format_version": str(FORMAT_VERSION),
            "domains": json.dumps(list(domains)), "image_size": str(image_size),
            "in_channels": str(model_cfg.get("in_channels"))}


def save_run(
    run_dir: str | Path,
    train_cfg,
    model_cfg,
    domains,
    ema_state: dict[str, torch.Tensor],
    raw_state: dict[str, torch.Tensor] | None = None,
    training_state: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    kind: str = "flow",
) -> Path:
    """Write (or overwrite) a checkpoint in ``run_dir``; weights first, config.json last.

    Args:
        run_dir: the run directory.
        train_cfg: the training configuration (a config dataclass with ``to_dict`` or a dict).
        model_cfg: the network's configuration (``UNetConfig`` or a dict).
        domains: domain names, label order.
        ema_state, raw_state: EMA and raw weights.
        training_state: optimizer/scheduler/RNG state (saved with ``torch.save``, loaded back
            with ``weights_only=True``).
        extra: more config.json entries (step, latent reference, ...).
        kind: "flow" (a velocity field) or "student" (a distilled one-step translator).
    """
    if kind not in KINDS:
        raise MedShiftError(f"unknown run kind {kind!r}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tcfg, mcfg = _as_dict(train_cfg), _as_dict(model_cfg)
    meta = _weights_meta(mcfg, domains, tcfg.get("image_size"))
    save_safetensors(run_dir / WEIGHTS, ema_state, meta)
    hashes = {WEIGHTS: sha256_file(run_dir / WEIGHTS)}
    if raw_state is not None:
        save_safetensors(run_dir / RAW_WEIGHTS, raw_state, meta)
        hashes[RAW_WEIGHTS] = sha256_file(run_dir / RAW_WEIGHTS)
    if training_state is not None:
        atomic_write(run_dir / STATE, lambda p: torch.save(training_state, p))
    cfg = {
        "format": "medshift_fast",
        "format_version": FORMAT_VERSION,
        "medshift_fast_version": __version__,
        "kind": kind,
        "domains": list(domains),
        "model": mcfg,
        "train": tcfg,
        **(extra or {}),
    }
    cfg = json.loads(json.dumps(cfg))  # the digests are of what config.json will read back
    cfg[HASHES] = {**hashes, "config": config_digests(cfg)}
    atomic_write_text(run_dir / CONFIG, json.dumps(cfg, indent=2, sort_keys=True))
    return run_dir


def _digest(value) -> str:
    """SHA-256 of a JSON value's canonical text (sorted keys, no whitespace)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def config_digests(cfg: dict[str, Any]) -> dict[str, str]:
    """{entry: SHA-256} of every config.json entry that is not :data:`BOOKKEEPING`."""
    return {k: _digest(v) for k, v in sorted(cfg.items()) if k not in BOOKKEEPING}


def _recorded(cfg: dict[str, Any]) -> dict[str, Any]:
    rec = cfg.get(HASHES)
    return rec if isinstance(rec, dict) else {}


def check_config_hash(run_dir: str | Path, cfg: dict[str, Any]) -> bool:
    """Refuse a config.json whose covered entries differ from the digests recorded at saving.

    Returns:
        True when the config is verified, False when the run records no config digests (a
        run saved by an older medshift_fast: nothing to check against).

    Raises:
        MedShiftError: an entry was edited, added or removed since the run was saved.
    """
    want = _recorded(cfg).get("config")
    if not isinstance(want, dict):
        return False
    have = config_digests(cfg)
    changed = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
    if changed:
        what = ", ".join(f"'{k}'" + (" (added)" if k not in want else " (removed)"
                                     if k not in have else "") for k in changed)
        one = len(changed) == 1
        raise MedShiftError(
            f"checkpoint {run_dir}: {CONFIG} was edited since the run was saved: "
            f"{'its entry' if one else 'its entries'} {what} {'differs' if one else 'differ'} "
            f"from the SHA-256 recorded then ({_COVERS}); restore the original {CONFIG}, or "
            "retrain")
    return True


_COVERS = ("the entries that decide a translation: domains, architecture, tau range, pairs, "
           "teacher settings, learned scale and intensity rule")


def check_weights_hash(run_dir: str | Path, cfg: dict[str, Any], name: str = WEIGHTS) -> None:
    """Refuse a weights file whose SHA-256 differs from the one config.json records.

    A run without a recorded hash for ``name`` (saved before hashes were recorded) passes;
    a missing file is left to the loader's own message.

    Raises:
        MedShiftError: the file is damaged or was replaced since the run was saved.
    """
    want = _recorded(cfg).get(name)
    path = Path(run_dir) / name
    if want is None or not path.is_file():
        return
    if sha256_file(path) != want:
        raise MedShiftError(f"checkpoint weights {path} are corrupt or tampered: their SHA-256 "
                            f"differs from the one recorded in {CONFIG} when the run was saved; "
                            "restore the file from a backup, or retrain (or use another "
                            "checkpoint)")


def _write_hashes(run_dir: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    hashes = {n: sha256_file(run_dir / n) for n in (WEIGHTS, RAW_WEIGHTS)
              if (run_dir / n).is_file()}
    cfg = {k: v for k, v in cfg.items() if k != HASHES}
    cfg[HASHES] = {**hashes, "config": config_digests(cfg)}
    atomic_write_text(run_dir / CONFIG, json.dumps(cfg, indent=2, sort_keys=True))
    return cfg[HASHES]


def record_run_hashes(run_dir: str | Path, force: bool = False) -> dict[str, Any]:
    """Record the SHA-256 of a run's weights files and config entries in its config.json (for
    runs saved before they were recorded, e.g. shipped runs being republished).

    The run is loaded first, so hashes are only vouched for a run that verifies: its recorded
    weights hash (if any) must match, and a config with recorded digests must be unedited.

    Args:
        run_dir: the run directory.
        force: re-record the config digests of a config.json that was edited ON PURPOSE
            (the weights must still match their recorded hash).

    Returns:
        The ``"sha256"`` entry written.
    """
    run_dir = Path(run_dir)
    original = (run_dir / CONFIG).read_text() if (run_dir / CONFIG).is_file() else None
    cfg = read_run_config(run_dir)
    for name in (WEIGHTS, RAW_WEIGHTS):  # every recorded weights hash, raw included
        check_weights_hash(run_dir, cfg, name)
    if force:
        rec = {k: v for k, v in _recorded(cfg).items() if k != "config"}
        cfg = {**cfg, HASHES: rec}
        atomic_write_text(run_dir / CONFIG, json.dumps(cfg, indent=2, sort_keys=True))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MedShiftWarning)  # it is being fixed now
            load_run(run_dir)  # the weights must match the config before they are vouched for
    except MedShiftError:
        if force and original is not None:
            atomic_write_text(run_dir / CONFIG, original)  # leave it as it was
        raise
    return _write_hashes(run_dir, cfg)


def update_run_config(run_dir: str | Path, **entries) -> dict[str, Any]:
    """Set top-level config.json entries of a verified run and re-record its hashes (the one
    way the package edits a saved run, e.g. ``scripts/record_learned.py``). Returns the
    config."""
    run_dir = Path(run_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MedShiftWarning)
        load_run(run_dir)
    cfg = {**read_run_config(run_dir), **json.loads(json.dumps(entries))}
    cfg[HASHES] = _write_hashes(run_dir, cfg)
    return cfg


def run_digest(run_dir: str | Path, cfg: dict[str, Any]) -> str:
    """The run's identity: SHA-256 of its EMA weights' and its config entries' digests (the
    recorded ones when present, else computed now). 64 hex digits."""
    rec = _recorded(cfg)
    w = rec.get(WEIGHTS)
    if w is None and (Path(run_dir) / WEIGHTS).is_file():
        w = sha256_file(Path(run_dir) / WEIGHTS)
    conf = rec.get("config") if isinstance(rec.get("config"), dict) else config_digests(cfg)
    return _digest({"weights": w, "config": conf})


def save_run_atomic_dir(run_dir: str | Path, *args, **kwargs) -> Path:
    """``save_run`` into a temporary folder renamed to ``run_dir`` (``fileio.atomic_dir``)."""
    return atomic_dir(run_dir, lambda tmp: save_run(tmp, *args, **kwargs))


def run_exists(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` already holds a checkpoint (config.json or weights)."""
    p = Path(run_dir)
    return p.is_dir() and any((p / f).exists() for f in (CONFIG, WEIGHTS, STATE))


RUN_ARTIFACTS = (CONFIG, WEIGHTS, RAW_WEIGHTS, STATE, "log.csv", "train_config.json",
                 "checkpoints", "best", "samples", "autoencoder", "tb")


def clear_run(run_dir: str | Path) -> None:
    """Remove what a previous run wrote into ``run_dir`` (``--overwrite``); other files stay."""
    import shutil

    p = Path(run_dir)
    for name in RUN_ARTIFACTS:
        q = p / name
        if q.is_dir():
            shutil.rmtree(q)
        elif q.exists():
            q.unlink()


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """The validated config.json of a run directory (or of a config.json path)."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise MedShiftError(f"checkpoint {run_dir} does not exist; pass a run directory written "
                            "by `medshift train`")
    cfg_path = run_dir / CONFIG if run_dir.is_dir() else run_dir
    if not cfg_path.is_file():
        raise MedShiftError(f"checkpoint {run_dir} has no {CONFIG}; is it a run directory from "
                            "`medshift train`?")
    cfg = read_format_json(cfg_path, "medshift_fast", "checkpoint config",
                           "use another checkpoint (a run directory of `medshift train`)",
                           FORMAT_VERSION, "re-export or retrain", f"checkpoint {run_dir}")
    if cfg.get("kind", "flow") not in KINDS:
        raise MedShiftError(f"checkpoint {run_dir} is of unknown kind {cfg.get('kind')!r}")
    return cfg


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors weights file (MedShiftError when missing or damaged)."""
    return load_safetensors(path)[0]


@dataclass
class LoadedRun:
    """A loaded checkpoint: the network (EMA weights, eval mode), configs, domains and codec.

    ``model`` works in *model space*: pixels in pixel mode, autoencoder latents in latent mode;
    ``encode_image`` / ``decode_image`` map pixel images to model space and back (identity in
    pixel mode). Translate through :class:`medshift_fast.translate.Translator`.

    Attributes:
        path: the run directory (None for a bare model wrapped with ``from_model``).
        model: the network (a ``UNet``, or a distilled student for ``kind == "student"``).
        model_config: its configuration.
        domains: domain names (index = label).
        config: the whole config.json (``config["train"]`` is the training configuration).
        codec: pixel <-> model space.
        kind: "flow" or "student".
        digest: :func:`run_digest` (None for a bare model).
    """

    path: Path | None
    model: nn.Module
    model_config: Any
    domains: tuple[str, ...]
    config: dict[str, Any]
    codec: PixelCodec = field(default_factory=PixelCodec)
    kind: str = "flow"
    digest: str | None = None

    @property
    def name(self) -> str | None:
        """The run's folder name (None for a bare model)."""
        return None if self.path is None else Path(self.path).resolve().name

    def identity(self) -> str:
        """"NAME sha256:DIGEST16": the run named in outputs' metadata (no local path)."""
        if self.path is None:
            return "a bare model (no run directory)"
        return f"{self.name} sha256:{(self.digest or '?')[:16]}"

    @classmethod
    def from_model(cls, model: nn.Module, domains=None, codec=None,
                   image_size: int | None = None) -> LoadedRun:
        """Wrap a bare velocity model (labels 0..K-1 named "0".."K-1" unless ``domains``)."""
        k = int(model.num_classes)
        domains = tuple(domains) if domains is not None else tuple(str(i) for i in range(k))
        if len(domains) != k:
            raise MedShiftError(f"{len(domains)} domain names for a model of {k} domains")
        cfg = getattr(model, "config", None)
        kind = "student" if getattr(model, "is_student", False) else "flow"
        return cls(None, model, cfg, domains, {"train": {"image_size": image_size}},
                   codec or PixelCodec(), kind)

    @property
    def train(self) -> dict[str, Any]:
        """The training configuration as saved (a dict)."""
        return self.config.get("train") or {}

    @property
    def latent(self) -> bool:
        """True when the model works in an autoencoder's latent space."""
        return self.codec.kind != "pixel"

    @property
    def image_size(self) -> int | None:
        """Pixel side S of the images the run was trained on (None for a bare model)."""
        s = self.train.get("image_size")
        return None if s is None else int(s)

    @property
    def in_channels(self) -> int:
        """Channels of the network's input (model space)."""
        return int(self.model.in_channels)

    @property
    def model_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one training-size image in model space."""
        if self.image_size is None:
            raise MedShiftError("this model has no recorded image size; pass a size")
        s = self.image_size // self.codec.factor
        return (self.in_channels, s, s)

    @property
    def device(self) -> torch.device:
        """The device the network's weights are on."""
        return next(self.model.parameters()).device

    def to(self, device) -> LoadedRun:
        """Move the network and the codec to ``device`` (in place); returns the run."""
        self.model.to(device)
        self.codec.to(device)
        return self

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) pixels in [-1, 1] -> (B, C, h, w) model space (identity in pixels)."""
        return self.codec.encode(x)

    def decode_image(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) model space -> (B, 1, H, W) pixels (identity in pixel mode)."""
        return self.codec.decode(z)

    def sample_images(self, target, n: int, **kw) -> torch.Tensor:
        """``flow.sample`` of n images of a domain, decoded to pixels: (n, 1, S, S)."""
        from .flow import sample

        if self.kind != "flow":
            raise MedShiftError("a distilled student translates; it cannot sample from noise - "
                                "sample with its teacher run")
        z = sample(self.model, self.label_of(target), n, self.model_shape, device=self.device,
                   **kw)
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


def _verify(run_dir: Path, cfg: dict, meta: dict[str, str], model: nn.Module) -> None:
    """The config must describe the weights: domains, image size, channels."""
    domains = list(cfg["domains"])
    k = int(model.num_classes)
    if len(domains) != k or len(set(domains)) != len(domains):
        raise MedShiftError(f"checkpoint {run_dir}: config.json lists {len(domains)} domain(s) "
                            f"{domains} but the weights were trained on {k}; the config was edited "
                            "or mixed up - use the run's original config.json")
    if "domains" in meta and json.loads(meta["domains"]) != domains:
        raise MedShiftError(f"checkpoint {run_dir}: config.json lists the domains {domains} but "
                            f"the weights were trained with {json.loads(meta['domains'])} (the "
                            "same labels would mean other domains); restore the original "
                            "config.json")
    size = (cfg.get("train") or {}).get("image_size")
    if meta.get("image_size") not in (None, "None") and str(size) != meta["image_size"]:
        raise MedShiftError(f"checkpoint {run_dir}: config.json says image_size {size} but the "
                            f"weights were trained at {meta['image_size']}; restore the original "
                            "config.json")
    if meta.get("in_channels") not in (None, "None") and \
            str(model.in_channels) != meta["in_channels"]:
        raise MedShiftError(f"checkpoint {run_dir}: the model config has {model.in_channels} "
                            f"input channel(s), the weights {meta['in_channels']}")


def build_network(kind: str, model_cfg: dict) -> nn.Module:
    """The network of a run kind from its config dict."""
    if kind == "student":
        from .models.student import Student, StudentConfig

        return Student(StudentConfig.from_dict(model_cfg))
    return UNet(UNetConfig(**model_cfg))


def load_run(run_dir: str | Path, device: str | torch.device = "cpu",
             ema: bool = True) -> LoadedRun:
    """Load a run directory's network (EMA weights by default) for translation and export.

    Raises:
        MedShiftError: missing/damaged/tampered files (weights and config entries checked
            against the SHA-256 recorded in config.json), a config that does not describe the
            weights (domain count or order, image size, channels), NaN/Inf weights.

    Warns:
        MedShiftWarning: the run records no hashes (saved by an older medshift_fast).
    """
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    verified = check_config_hash(run_dir, cfg)  # before a network is built from it
    kind = cfg.get("kind", "flow")
    try:
        model = build_network(kind, cfg["model"])
        domains = tuple(cfg["domains"])
        cfg["train"]["image_size"]  # noqa: B018 - must exist
    except (KeyError, TypeError, ValueError) as exc:
        raise MedShiftError(f"checkpoint config in {run_dir} is incomplete ({exc})") from exc
    name = WEIGHTS if ema else RAW_WEIGHTS
    check_weights_hash(run_dir, cfg, name)
    if not verified or name not in _recorded(cfg):
        what = "its weights and config" if name not in _recorded(cfg) else "its config"
        warnings.warn(f"checkpoint {run_dir} records no SHA-256 of {what} (saved by an older "
                      "medshift_fast): damage or edits cannot be detected; record them with "
                      f"python scripts/hash_run_weights.py {run_dir}", MedShiftWarning,
                      stacklevel=2)
    sd, meta = load_safetensors(run_dir / name)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise MedShiftError(f"checkpoint weights in {run_dir} do not match its config ({first}); "
                            "the files were mixed up or tampered with") from exc
    for k, v in sd.items():
        if not torch.isfinite(v).all():
            raise MedShiftError(f"checkpoint weights in {run_dir} contain NaN/Inf ({k})")
    _verify(run_dir, cfg, meta, model)
    dev = resolve_device(device)
    model.to(dev).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    codec = codec_from_reference(cfg.get("latent"), run_dir, dev)
    return LoadedRun(run_dir, model, getattr(model, "config", cfg["model"]), domains, cfg, codec,
                     kind, run_digest(run_dir, cfg))
