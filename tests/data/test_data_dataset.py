"""FolderDataset: discovery, manifest, labels, splits, resizing, domain maps and bad input."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from medshift_fast.data import DOMAINS, FolderDataset, fit_square, write_png16
from medshift_fast.errors import MedShiftError


def _folder(root, domains, n=3, shape=(20, 30), seed=0):
    rng = np.random.default_rng(seed)
    for d in domains:
        for i in range(n):
            write_png16(root / d / f"img{i}.png", rng.uniform(-1, 1, shape))
    return root


def test_simulated_dataset_with_manifest(sim_root):
    ds = FolderDataset(sim_root, size=32)
    assert ds.domains == DOMAINS and len(ds) == 30
    x, y = ds[0]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32 and -1 <= x.min() <= x.max() <= 1
    assert isinstance(y, int) and ds.labels.tolist() == [s.label for s in ds.samples]
    assert ds.counts() == {d: 6 for d in DOMAINS}
    splits = {s.split for s in ds.samples}
    assert splits == {"train", "val", "test"}
    for sp in splits:  # a subject lives in exactly one split
        subj = {s.subject for s in ds.samples if s.split == sp}
        other = {s.subject for s in ds.samples if s.split != sp}
        assert not subj & other
    # each view_id has exactly one image per domain
    by_view = {}
    for s in ds.samples:
        by_view.setdefault(s.view_id, set()).add(s.domain)
    assert all(v == set(DOMAINS) for v in by_view.values()) and len(by_view) == 6
    tr = FolderDataset(sim_root, size=16, split="train", domains=["real_low", "synthetic_high"])
    assert tr.domains == ("real_low", "synthetic_high")
    assert set(tr.labels.tolist()) == {0, 1} and all(s.split == "train" for s in tr.samples)
    xs, ys = tr.to_tensors()
    assert xs.shape == (len(tr), 1, 16, 16) and ys.shape == (len(tr),)


def test_folders_without_manifest_order_and_hash_split(tmp_path):
    root = _folder(tmp_path, ["zeta", "real_low", "synthetic_low"], n=12)
    ds = FolderDataset(root, size=8)
    assert ds.domains == ("synthetic_low", "real_low", "zeta")  # DOMAINS first, then a-z
    assert [s.domain for s in ds.samples if s.label == 2][0] == "zeta"
    again = FolderDataset(root, size=8)
    assert [s.split for s in ds.samples] == [s.split for s in again.samples]
    assert {s.split for s in ds.samples} <= {"train", "val", "test"}


def test_domain_map(tmp_path):
    root = _folder(tmp_path, ["Real/Low", "Real/High", "VIST_low"], n=2)
    ds = FolderDataset(root, size=8, domain_map="Real/Low=real_low,Real/High=real_exposure,"
                                                 "VIST_low=synthetic_low")
    assert ds.domains == ("synthetic_low", "real_low", "real_exposure")
    with pytest.raises(MedShiftError, match="Nope"):
        FolderDataset(root, domain_map={"Nope": "real_low"})


def test_resize_crop_and_pad():
    img = torch.full((40, 80), -1.0)
    img[:, 30:50] = 1.0  # a bright vertical band in the middle
    c = fit_square(img, 20, "crop")
    p = fit_square(img, 20, "pad")
    assert c.shape == p.shape == (1, 20, 20)
    assert c[0, :, 10].min() > 0.9 and c[0, 10, 0] < -0.9  # band kept, centred
    assert (p[0, :5] == -1).all() and (p[0, -5:] == -1).all()  # padded top/bottom
    assert p[0, 10, 10] > 0.9


def test_unknown_domain_lists_available(sim_root):
    with pytest.raises(MedShiftError, match="unknown domain.*real_hi.*available: synthetic_low"):
        FolderDataset(sim_root, domains=["real_hi"])


def test_empty_domain_folder(tmp_path):
    root = _folder(tmp_path, ["real_low"], n=2)
    (root / "real_normal").mkdir()
    (root / "real_normal" / "notes.txt").write_text("no images here")
    with pytest.raises(MedShiftError, match="real_normal.*contains no images"):
        FolderDataset(root)
    with pytest.raises(MedShiftError, match="does not exist"):
        FolderDataset(tmp_path / "missing")
    (tmp_path / "e").mkdir()
    with pytest.raises(MedShiftError, match="no domain folders"):
        FolderDataset(tmp_path / "e")


def test_mixed_bit_depths(tmp_path, caplog):
    root = _folder(tmp_path, ["real_low"], n=3)
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(root / "real_low" / "eight.png")
    with pytest.raises(MedShiftError, match="mixed bit depths.*eight.png"):
        FolderDataset(root)
    with caplog.at_level(logging.WARNING, logger="medshift_fast.data"):
        ds = FolderDataset(root, skip_bad=True)
    assert len(ds) == 3 and ds.n_skipped == 1 and "eight.png" in caplog.text
    assert len(FolderDataset(root, allow_mixed_depth=True)) == 4


def test_non_image_and_nodata_files_at_construction(tmp_path):
    root = _folder(tmp_path, ["real_low"], n=2)
    (root / "real_low" / "fake.png").write_text("hello")
    with pytest.raises(MedShiftError, match="fake.png"):
        FolderDataset(root)
    ds = FolderDataset(root, skip_bad=True, size=8)
    assert len(ds) == 2 and ds.n_skipped == 1 and ds.bad_files[0].endswith("fake.png")


def test_bad_pixels_mid_epoch(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    root = _folder(tmp_path, ["real_low", "real_normal"], n=3)
    tifffile.imwrite(root / "real_low" / "nan.tif", np.array([[0.0, np.nan]] * 4, np.float32))
    tifffile.imwrite(root / "real_normal" / "inf.tif", np.array([[0.0, np.inf]] * 4, np.float32))
    # headers are fine: construction succeeds (float TIFF beside 16-bit PNGs needs the flag)
    strict = FolderDataset(root, size=8, allow_mixed_depth=True)
    with pytest.raises(MedShiftError, match="nan.tif.*NaN"):
        [strict[i] for i in range(len(strict))]
    ds = FolderDataset(root, size=8, skip_bad=True, allow_mixed_depth=True)
    batch = [ds[i] for i in range(len(ds))]  # a whole epoch never crashes
    assert len(batch) == 8 and ds.n_skipped == 2
    assert [y for _, y in batch] == ds.labels.tolist()  # substitutes keep the domain label
    assert all(torch.isfinite(x).all() for x, _ in batch)
    loader = torch.utils.data.DataLoader(ds, batch_size=4)
    assert sum(len(y) for _, y in loader) == 8
    # a PNG truncated inside its pixel data is caught by the header probe (every chunk's CRC)
    good = root / "real_normal" / "img1.png"
    good.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(MedShiftError, match="img1.png"):
        FolderDataset(root, size=8, allow_mixed_depth=True)
    with pytest.raises(MedShiftError, match="resize"):
        FolderDataset(root, resize="stretch")
