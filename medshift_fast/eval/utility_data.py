"""The labelled image sets of the utility benchmark, read and vetted before any work.

One set is one domain of one split at its native size (no resampling: labels are at the
image's geometry), with its labels (``data.labels``) when the benchmark needs them. Every check
happens here, so ``medshift utility`` fails with one line before any translation or training:
unknown domain, an empty split, images of different sizes, labels missing / extra / misnamed /
of another size / of the wrong kind, and a test split that shares views or subjects with the
training data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import MedShiftError


@dataclass
class LabelledSet:
    """Images of one domain and split, with labels when asked for.

    Attributes:
        x: (N, 1, H, W) images in [-1, 1].
        y: (N, 1, H, W) labels (label units, or 0/1 masks), or None.
        paths: the image files.
        view_ids: the view of each image (None where unknown).
        subjects: the subject of each image (None where unknown).
        domain, split: where they come from.
    """

    x: torch.Tensor
    y: torch.Tensor | None
    paths: list[str] = field(default_factory=list)
    view_ids: list[str | None] = field(default_factory=list)
    subjects: list[str | None] = field(default_factory=list)
    domain: str = ""
    split: str = ""

    def __len__(self) -> int:
        return int(self.x.shape[0])


def load_set(root, domain: str, split: str, *, domain_map=None, channel: str | None = None,
             kind: str = "map", max_images: int | None = None) -> LabelledSet:
    """Read ``split`` of ``domain`` at native size, with labels of ``channel`` (None: none).

    Args:
        root: dataset root.
        domain, split: what to read.
        domain_map: as for ``FolderDataset``.
        channel: label channel (simulator files) to read; None reads no labels.
        kind: the label kind the task needs ("map" or "mask").
        max_images: at most this many images, spread evenly over the split's order.

    Raises:
        MedShiftError: see the module docstring.
    """
    import numpy as np

    from ..data import FolderDataset
    from ..data.labels import load_labels

    everything = FolderDataset(root, split=None, domains=(domain,), domain_map=domain_map,
                               validate=False)
    ds = FolderDataset(root, size=None, split=split, domains=(domain,), domain_map=domain_map)
    idx = list(range(len(ds)))
    if max_images is not None and max_images < len(idx):
        idx = sorted({round(k * (len(idx) - 1) / max(1, max_images - 1))
                      for k in range(max_images)})
    samples = [ds.samples[i] for i in idx]
    imgs = [ds.load(i) for i in idx]
    shapes = {tuple(im.shape[-2:]) for im in imgs}
    if len(shapes) > 1:
        raise MedShiftError(f"the {domain} {split} images have different sizes "
                            f"({', '.join(f'{h}x{w}' for h, w in sorted(shapes)[:4])}); the "
                            "benchmark trains on whole views with pixel-aligned labels - give "
                            "it images of one size")
    x = torch.stack(imgs)
    y = None
    if channel is not None:
        lab = load_labels(root, [s.path for s in samples], [tuple(x.shape[-2:])] * len(samples),
                          channel=channel, kind=kind, what=f"{domain} {split}",
                          all_images=[s.path for s in everything.samples])
        y = torch.from_numpy(np.ascontiguousarray(lab))[:, None]
    return LabelledSet(x, y, [str(s.path) for s in samples], [s.view_id for s in samples],
                       [s.subject for s in samples], domain, split)


def check_same_size(*sets: LabelledSet) -> None:
    """All sets share one image size (the downstream network sees them side by side)."""
    shapes = {(s.domain, s.split): tuple(s.x.shape[-2:]) for s in sets}
    if len(set(shapes.values())) > 1:
        shown = ", ".join(f"{d} {sp}: {h}x{w}" for (d, sp), (h, w) in shapes.items())
        raise MedShiftError(f"the benchmark's image sets differ in size ({shown}); use images "
                            "of one size in every domain and split")


def check_disjoint(train: list[LabelledSet], test: LabelledSet) -> None:
    """The test views are never training data: no shared file, view id or subject.

    Raises:
        MedShiftError: naming one shared item and the fix.
    """
    test_paths = {str(Path(p).resolve()) for p in test.paths}
    test_views = {v for v in test.view_ids if v is not None}
    test_subj = {s for s in test.subjects if s is not None}
    for s in train:
        for what, have, mine in (
                ("image", test_paths, {str(Path(p).resolve()) for p in s.paths}),
                ("view", test_views, {v for v in s.view_ids if v is not None}),
                ("subject", test_subj, {v for v in s.subjects if v is not None})):
            both = sorted(have & mine)
            if both:
                raise MedShiftError(
                    f"the test split ({test.domain} {test.split}) shares {len(both)} {what}(s) "
                    f"with the training data ({s.domain} {s.split}), e.g. {both[0]!r}; the "
                    "benchmark tests on views of subjects never trained on - fix the splits in "
                    "manifest.csv")


def aligned(src: LabelledSet, tgt: LabelledSet) -> bool:
    """Whether ``tgt`` holds exactly the views of ``src`` in the same order (simulator data)."""
    return (len(src) == len(tgt) and all(v is not None for v in src.view_ids)
            and src.view_ids == tgt.view_ids)
