"""Training data: a stateless index stream, rank sharding, in-memory and streaming sources.

The order of images is a pure function of (seed, micro-batch counter m): global micro-batch m is
elements [m B_g, (m + 1) B_g) of the concatenation of per-epoch random permutations (epoch e's
permutation comes from a generator seeded by (seed, e)), or, with class-balanced sampling, B_g
draws with probability 1 / (count of the image's domain) from a generator seeded by (seed, m).
Rank r of P takes the contiguous slice [r b, (r + 1) b) of each global micro-batch (b = B_g / P),
so a P-rank run sees exactly the batches of a one-process run, and resuming needs only m.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import MedShiftError
from .distributed import DistInfo

log = logging.getLogger("medshift_fast.train")

MEMORY_LIMIT_BYTES = 4 << 30


def _mix(seed: int, tag: int, k: int) -> int:
    return (int(seed) * 1_000_003 + tag * 998_244_353 + int(k) * 7_919) % (2**63 - 1)


class IndexStream:
    """Dataset indices of every global micro-batch, a pure function of the micro-batch counter.

    Args:
        n: dataset size N.
        batch: global micro-batch size B_g.
        seed: run seed.
        labels: (N,) domain labels (needed for ``balanced``).
        balanced: draw every domain equally often (with replacement).
    """

    def __init__(self, n: int, batch: int, seed: int, labels: torch.Tensor | None = None,
                 balanced: bool = False) -> None:
        if n < 1:
            raise MedShiftError("the training set is empty")
        self.n, self.batch, self.seed, self.balanced = n, batch, seed, balanced
        self._perm: dict[int, torch.Tensor] = {}
        if balanced:
            if labels is None:
                raise MedShiftError("class-balanced sampling needs the labels")
            counts = torch.bincount(labels, minlength=int(labels.max()) + 1).double()
            self.weights = 1.0 / counts[labels]

    def _epoch(self, e: int) -> torch.Tensor:
        if e not in self._perm:
            if len(self._perm) > 4:
                self._perm.pop(min(self._perm))
            g = torch.Generator().manual_seed(_mix(self.seed, 1, e))
            self._perm[e] = torch.randperm(self.n, generator=g)
        return self._perm[e]

    def global_batch(self, m: int) -> torch.Tensor:
        """(B_g,) int64 dataset indices of global micro-batch m."""
        if self.balanced:
            g = torch.Generator().manual_seed(_mix(self.seed, 2, m))
            return torch.multinomial(self.weights, self.batch, replacement=True, generator=g)
        out, pos, left = [], m * self.batch, self.batch
        while left:
            e, k = divmod(pos, self.n)
            take = min(left, self.n - k)
            out.append(self._epoch(e)[k:k + take])
            pos, left = pos + take, left - take
        return torch.cat(out)

    def rank_batch(self, m: int, info: DistInfo) -> torch.Tensor:
        """This rank's contiguous share (B_g / P,) of global micro-batch m."""
        b = self.batch // info.world
        return self.global_batch(m)[info.rank * b:(info.rank + 1) * b]


def random_crop(x: torch.Tensor, size: int, generator: torch.Generator,
                info: DistInfo) -> torch.Tensor:
    """One random ``size`` x ``size`` window per image of this rank's share of a micro-batch.

    The window offsets of the whole global micro-batch (B_g = P b images) are drawn from
    ``generator`` (a CPU generator in the same state on every rank, checkpointed with the run),
    and rank r keeps its slice, so ranks stay in step and ``--resume`` continues exactly.

    Args:
        x: (b, C, H, W) this rank's micro-batch (model space), H, W >= size.
        size: window side.
    """
    b, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    if size > h or size > w:
        raise MedShiftError(f"crop {size} is larger than the {h}x{w} training images")
    bg = b * info.world
    oy = torch.randint(0, h - size + 1, (bg,), generator=generator)
    ox = torch.randint(0, w - size + 1, (bg,), generator=generator)
    s = slice(info.rank * b, (info.rank + 1) * b)
    return torch.stack([x[i, :, r:r + size, c:c + size]
                        for i, (r, c) in enumerate(zip(oy[s].tolist(), ox[s].tolist()))])


def pick_balanced(labels: torch.Tensor, n: int) -> torch.Tensor:
    """Up to n indices taking the domains in turn (first images of each domain first)."""
    pools = [torch.nonzero(labels == c).flatten().tolist() for c in range(int(labels.max()) + 1)]
    out: list[int] = []
    k = 0
    while len(out) < n and any(k < len(p) for p in pools):
        out += [p[k] for p in pools if k < len(p)]
        k += 1
    return torch.tensor(out[:n], dtype=torch.long)


class MemorySource:
    """All (encoded) training images in memory; micro-batch m -> this rank's (x_1, y)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, stream: IndexStream, info: DistInfo):
        self.x, self.y, self.stream, self.info = x, y.long(), stream, info
        nbytes = x.numel() * x.element_size()
        # small sets live on the GPU: no host -> device copy per step
        if info.device.type == "cuda" and nbytes <= MEMORY_LIMIT_BYTES // 4:
            self.x, self.y = self.x.to(info.device), self.y.to(info.device)

    def batch(self, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.stream.rank_batch(m, self.info).to(self.x.device)
        return (self.x[idx].to(self.info.device, non_blocking=True),
                self.y[idx].to(self.info.device, non_blocking=True))

    def close(self) -> None:
        pass


class _RankBatches(torch.utils.data.Sampler):
    """This rank's indices of micro-batch m, m = start, start + 1, ...; ``keyed``: each as
    (index, global position m B_g + r b + j), for datasets whose item depends on the draw
    (:class:`NativeCrops`: the crop window)."""

    def __init__(self, stream: IndexStream, info: DistInfo, start: int,
                 keyed: bool = False) -> None:
        self.stream, self.info, self.start, self.keyed = stream, info, start, keyed

    def __iter__(self):
        m = self.start
        b = self.stream.batch // self.info.world
        while True:
            idx = self.stream.rank_batch(m, self.info).tolist()
            if self.keyed:
                base = m * self.stream.batch + self.info.rank * b
                idx = [(i, base + j) for j, i in enumerate(idx)]
            yield idx
            m += 1


class NativeCrops(torch.utils.data.Dataset):
    """Random crop x crop windows of each image's own pixel grid, decoded from the files.

    ``ds[(i, position)] -> ((1, crop, crop) float32, label)``: the window of image i is drawn
    from a generator seeded by (seed, position), the draw's global position in the index
    stream, so the data are a pure function of the micro-batch counter (exact resume, the same
    windows on every rank count). Images are decoded when drawn (a small per-process LRU cache
    of decoded images, ``cache_bytes``), never all held in memory; a side smaller than the crop
    is padded with air (-1).

    Args:
        ds: a native-size ``FolderDataset`` (``size=None``).
        crop: window side in pixels.
        seed: the run's seed.
        cache_bytes: decoded images kept per process.
    """

    def __init__(self, ds, crop: int, seed: int, cache_bytes: int = 256 << 20) -> None:
        self.ds, self.crop, self.seed, self.cache_bytes = ds, int(crop), int(seed), cache_bytes
        self.labels = ds.labels
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.ds)

    def image(self, i: int) -> torch.Tensor:
        x = self._cache.pop(i, None)
        if x is None:
            x = self.ds[i][0]
            while self._cache and sum(v.numel() * 4 for v in self._cache.values()) \
                    + x.numel() * 4 > self.cache_bytes:
                self._cache.pop(next(iter(self._cache)))
        self._cache[i] = x  # most recent last
        return x

    def window(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        c = self.crop
        h, w = x.shape[-2:]
        if h < c or w < c:
            ph, pw = max(0, c - h), max(0, c - w)
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=-1.0)
            h, w = x.shape[-2:]
        if g is None:  # the centre (validation)
            oy, ox = (h - c) // 2, (w - c) // 2
        else:
            oy = int(torch.randint(0, h - c + 1, (1,), generator=g))
            ox = int(torch.randint(0, w - c + 1, (1,), generator=g))
        return x[..., oy:oy + c, ox:ox + c].clone()

    def __getitem__(self, key):
        i, pos = key if isinstance(key, tuple) else (key, None)
        i = int(i)
        g = None if pos is None else torch.Generator().manual_seed(_mix(self.seed, 3, int(pos)))
        return self.window(self.image(i), g), int(self.labels[i])


class StreamSource:
    """Images decoded by DataLoader workers from the files, in the order of the index stream.

    Args:
        dataset: a map-style dataset ``ds[i] -> (image (C, S, S), label)``.
        encode: applied to each batch on the device (the latent encoder, or identity).
        start: the first micro-batch counter (resume).
    """

    def __init__(self, dataset, stream: IndexStream, info: DistInfo, num_workers: int,
                 start: int, encode=None) -> None:
        self.info, self.encode, self.next_m = info, encode, start
        keyed = isinstance(dataset, NativeCrops)
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=_RankBatches(stream, info, start, keyed),
            num_workers=num_workers,
            pin_memory=info.device.type == "cuda", persistent_workers=num_workers > 0,
            prefetch_factor=4 if num_workers > 0 else None)
        self._it = iter(self.loader)

    def batch(self, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        if m != self.next_m:
            raise RuntimeError(f"stream source expected micro-batch {self.next_m}, got {m}")
        x, y = next(self._it)
        self.next_m += 1
        x, y = x.to(self.info.device, non_blocking=True), y.long().to(self.info.device)
        if self.encode is not None:
            with torch.no_grad():
                x = self.encode(x)
        return x, y

    def close(self) -> None:
        self._it = None


def open_split(cfg, split: str, domains=None):
    """FolderDataset of one split at the training size (pixels), or None without one.

    A val/test split that does not exist, or lacks images of some domain, gives None (with a
    warning in the second case: validation is then off). An unreadable file in it is raised like
    one in the train split (``--skip-bad`` skips it instead).
    """
    from ..data import FolderDataset

    if not cfg.data:
        raise MedShiftError("no training data: pass --data ROOT (or run `medshift simulate`)")
    kw = dict(domains=domains if domains is not None else cfg.domains,
              domain_map=getattr(cfg, "domain_map", None))
    extra = dict(skip_bad=getattr(cfg, "skip_bad", False), resize=getattr(cfg, "resize", "crop"))
    size = None if getattr(cfg, "native", False) else cfg.image_size
    try:
        return FolderDataset(cfg.data, size=size, split=split, **kw, **extra)
    except MedShiftError as err:
        if split == "train":
            raise
        try:  # the same file list without decoding: does the split itself hold every domain?
            FolderDataset(cfg.data, split=split, validate=False, **kw)
        except MedShiftError:
            if _split_exists(cfg.data, split, kw["domain_map"]):
                warnings.warn(f"no {split} set: {err}", stacklevel=2)
            return None
        raise  # the split is complete but a file in it is bad


def check_dataset(cfg) -> None:
    """Probe EVERY file of the dataset, all splits, before the first step: a corrupt or refused
    file in the val or test split fails now, naming the file, not at evaluation time
    (``--skip-bad``: logged and left out)."""
    from ..data import FolderDataset

    if not cfg.data:
        raise MedShiftError("no training data: pass --data ROOT (or run `medshift simulate`)")
    FolderDataset(cfg.data, domains=cfg.domains, domain_map=getattr(cfg, "domain_map", None),
                  skip_bad=getattr(cfg, "skip_bad", False), validate=True)


def _split_exists(root, split: str, domain_map) -> bool:
    """Whether any image of the dataset belongs to ``split`` (a scan, no decoding)."""
    from ..data import FolderDataset

    try:
        ds = FolderDataset(root, domain_map=domain_map, validate=False)
    except MedShiftError:
        return False
    return any(smp.split == split for smp in ds.samples)


def choose_mode(cfg, n_images: int, channels: int = 1) -> str:
    if getattr(cfg, "native", False):
        if cfg.data_mode == "memory":
            raise MedShiftError("--native trains on crops decoded from the files as they are "
                                "drawn: use --data-mode stream (or auto)")
        return "stream"
    if cfg.data_mode != "auto":
        return cfg.data_mode
    nbytes = n_images * channels * cfg.image_size**2 * 4
    if cfg.num_workers > 0 or nbytes > MEMORY_LIMIT_BYTES:
        return "stream"
    return "memory"


def _val_image(cfg, ds, i: int) -> torch.Tensor:
    """Validation image i: the image itself, or (native runs) its centre crop window."""
    if not getattr(cfg, "native", False):
        return ds[i][0]
    nat = ds if isinstance(ds, NativeCrops) else NativeCrops(ds, cfg.crop, cfg.seed, 0)
    return nat.window(nat.ds[i][0] if isinstance(ds, NativeCrops) else ds[i][0], None)


@torch.no_grad()
def encode_all(codec, x: torch.Tensor, device, batch: int = 64) -> torch.Tensor:
    """Pixel images (N, 1, S, S) -> model space on the CPU (identity in pixel mode)."""
    if codec.kind == "pixel":
        return x
    return torch.cat([codec.encode(x[k:k + batch].to(device)).float().cpu()
                      for k in range(0, x.shape[0], batch)])


@dataclass
class TrainData:
    """What a Trainer trains and validates on.

    Attributes:
        domains: domain names (label order).
        mode: memory | stream.
        x, y: (N, C, h, w) model-space images and (N,) labels in memory mode (x None when
            streaming; y always).
        dataset: the FolderDataset (None for in-memory data).
        stream: the index stream of global micro-batches.
        val_pixels, val_y, val_x: fixed validation images (pixels), labels, model space.
    """

    domains: tuple[str, ...]
    mode: str
    x: torch.Tensor | None
    y: torch.Tensor
    dataset: object
    stream: IndexStream
    val_pixels: torch.Tensor
    val_y: torch.Tensor
    val_x: torch.Tensor


def prepare_data(cfg, codec, info: DistInfo, data=None, val_data=None) -> TrainData:
    """Open (or take) the training and validation images of a run.

    Args:
        cfg: TrainConfig. codec: pixel <-> model space. info: process group.
        data: optional (x (N, 1, S, S), y (N,), domains) in memory instead of cfg.data.
        val_data: optional (x, y); default the val split, else a fixed subset of the train set.
    """
    xv = yv = ds = None
    if data is not None:
        x, y, domains = data
        if x.dim() != 4 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise MedShiftError(f"training data must be (N, C, H, W) with N labels, got "
                                f"{tuple(x.shape)} / {tuple(y.shape)}")
        domains, y, mode = tuple(domains), y.long(), "memory"
        if val_data is not None:
            xv, yv = val_data
    else:
        check_dataset(cfg)
        ds = open_split(cfg, "train")
        domains, y = tuple(ds.domains), ds.labels
        mode = choose_mode(cfg, len(ds))
        if getattr(cfg, "native", False):
            ds = NativeCrops(ds, cfg.crop, cfg.seed)
        x = ds.to_tensors()[0] if mode == "memory" else None
        va = open_split(cfg, "val", domains)
        if va is not None:
            keep = pick_balanced(va.labels, cfg.val_images)
            xv, yv = torch.stack([_val_image(cfg, va, int(i)) for i in keep]), va.labels[keep]
        else:
            log.warning("no usable val split: validating on a fixed subset of the train set")
    if xv is None:
        keep = pick_balanced(y, cfg.val_images)
        xv = x[keep] if x is not None else torch.stack([_val_image(cfg, ds, int(i))
                                                        for i in keep])
        yv = y[keep]
    xm = encode_all(codec, x.float(), info.device) if x is not None else None
    return TrainData(domains, mode, xm, y, ds,
                     IndexStream(len(y), cfg.micro_batch, cfg.seed, y, cfg.balanced),
                     xv.float(), yv.long(), encode_all(codec, xv.float(), info.device))


def learned_record(cfg, td: TrainData, max_per_domain: int = 16) -> dict:
    """What the run learns about its inputs (``learned.record``): the pixel scale and, per
    domain, the containers, declared bits and percentiles of the mapped training images.

    Up to ``max_per_domain`` images per domain (evenly spread) are decoded for the percentiles
    (native images: at their full size, pixels subsampled); the file headers of all of them
    give the containers and bits, and (native runs) the pixel spacing: the median of the files
    that declare one, when at least half do.
    """
    from collections import Counter

    from ..data.io import probe_image
    from ..translate.learned import domain_stats, record

    native = bool(getattr(cfg, "native", False))
    ds = td.dataset.ds if isinstance(td.dataset, NativeCrops) else td.dataset
    per: dict[str, dict] = {}
    spacings: list[float] = []
    n_files = 0
    for lab, dom in enumerate(td.domains):
        idx = torch.nonzero(td.y == lab).flatten().tolist()
        pick = idx[:: max(1, len(idx) // max_per_domain)][:max_per_domain]
        if ds is None:  # in-memory data handed to the trainer: its (pixel) validation images
            vp, vy = getattr(td, "val_pixels", None), getattr(td, "val_y", None)
            imgs = [] if vp is None else [vp[i] for i in torch.nonzero(vy == lab).flatten()]
            if imgs:
                per[dom] = domain_stats(imgs)
            continue
        imgs, containers, bits = [], Counter(), Counter()
        for i in pick:
            smp = ds.samples[i]
            info = probe_image(smp.path)
            containers[f"{info.format}:{info.depth}"] += 1
            if info.significant_bits:
                bits[str(info.significant_bits)] += 1
            imgs.append(ds.load(i) if native else ds[i][0])
        per[dom] = domain_stats(imgs, dict(containers), dict(bits))
    if native and ds is not None:
        for smp in ds.samples:
            n_files += 1
            sp = probe_image(smp.path).spacing_mm
            if sp is not None:
                spacings.append(sp)
    spacing = None
    if native and spacings and len(spacings) * 2 >= max(1, n_files):
        spacing = float(torch.tensor(spacings).median())
        lo, hi = min(spacings), max(spacings)
        if hi > 2 * lo:
            log.warning("training pixel spacings range %.3g-%.3g mm (> 2x): the model learns "
                        "textures at mixed scales", lo, hi)
    kind = "image_size" if not native else ("spacing" if spacing else "native")
    size = int(cfg.crop) if native else int(cfg.image_size)
    return record(kind, size, spacing, size, per)
