"""The image sets an evaluation reads: one domain of one split; view alignment across domains."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import MedShiftError


@dataclass
class ImageSet:
    """Images of one domain and split, in dataset order.

    Attributes:
        x: (N, 1, S, S) images in [-1, 1].
        view_ids: view id of each image (None where the dataset has none).
        paths: the files read, as strings.
        split: the split they come from.
        subjects: subject id of each image (None where the dataset has none).
    """

    x: torch.Tensor
    view_ids: list[str | None] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    split: str = ""
    subjects: list[str | None] = field(default_factory=list)

    def groups(self) -> list[str]:
        """A group id per image for splits that must keep a subject on one side: the subject,
        else the view id, else the file."""
        subj = self.subjects or [None] * len(self.paths)
        views = self.view_ids or [None] * len(self.paths)
        return [s or v or p for s, v, p in zip(subj, views, self.paths)]


def count_split(data, domain: str, split: str, domain_map=None) -> int:
    """Number of ``domain`` images in ``split`` (file list only: nothing is decoded)."""
    from ..data import FolderDataset

    ds = FolderDataset(data, split=None, domains=(domain,), domain_map=domain_map, validate=False)
    return sum(1 for s in ds.samples if s.split == split)


def load_domain(data, domain: str, split: str, size: int | None, max_images: int | None = None,
                domain_map=None) -> ImageSet:
    """Read the ``split`` images of ``domain`` (at most ``max_images``, spread evenly over the
    dataset order, i.e. over subjects and views).

    Raises:
        MedShiftError: unknown domain, no images in that split, unreadable files.
    """
    from ..data import FolderDataset

    ds = FolderDataset(data, size=size, split=split, domains=(domain,), domain_map=domain_map)
    idx = list(range(len(ds)))
    if max_images is not None and max_images < len(idx):
        idx = sorted({round(k * (len(idx) - 1) / max(1, max_images - 1))
                      for k in range(max_images)})
    x = torch.stack([ds[i][0] for i in idx])
    return ImageSet(x, [ds.samples[i].view_id for i in idx], [str(ds.samples[i].path) for i in idx],
                    split, [ds.samples[i].subject for i in idx])


def align(src: ImageSet, tgt: ImageSet) -> torch.Tensor | None:
    """The target images pixel-aligned with each source image (same view id), or None.

    The simulator renders every view in every domain and names views per subject (s003_v02), so
    equal view ids are the same subject and projection; real data without view ids has no
    aligned ground truth.
    """
    by_view = {v: i for i, v in enumerate(tgt.view_ids) if v is not None}
    idx = [by_view.get(v) if v is not None else None for v in src.view_ids]
    if not idx or any(i is None for i in idx):
        return None
    return tgt.x[torch.tensor(idx)]


def check_split_has(data, domain: str, split: str, domain_map, why: str, fix: str) -> None:
    """Raise one clear error when ``domain`` has no images in ``split``."""
    if count_split(data, domain, split, domain_map) == 0:
        raise MedShiftError(f"no {domain!r} images in split {split!r} of {str(data)!r}, needed "
                            f"{why}; {fix}")
