"""Per-view labels: written by the simulator (identical and pixel-aligned across domains), read
back by name, and a user's label folder vetted (count, names, size, kind)."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil

import numpy as np
import pytest
import torch

from medshift_fast.data import FolderDataset, physics
from medshift_fast.data.labels import (
    BONE_MASK_MM,
    CHANNELS,
    load_labels,
    read_label,
    simulator_labels,
    write_labels,
)
from medshift_fast.data.simulator import (
    SimConfig,
    image_fingerprint,
    render_domains,
    subject_labels,
    subject_line_integrals,
)
from medshift_fast.errors import MedShiftError


def _rows(root):
    return list(csv.DictReader(open(root / "manifest.csv")))


def test_one_label_file_per_view_for_every_domain(sim_root):
    by_view: dict[str, set] = {}
    for r in _rows(sim_root):
        by_view.setdefault(r["view_id"], set()).add(r["labels"])
    assert len(by_view) == 6 and all(len(v) == 1 for v in by_view.values())
    for vid, (rel,) in by_view.items():
        assert rel == f"labels/{vid}.tif" and (sim_root / rel).is_file()


def test_labels_are_the_views_line_integrals_and_pixel_aligned(sim_root):
    """Closed form: the noise-free synthetic rendering is p = mu_w(E0) soft + mu_b(E0) bone
    pixel by pixel (pooling is linear), so the label maps reproduce every synthetic image's
    log signal on the same grid; the real renderings share the grid (same size, same view)."""
    meta = json.loads((sim_root / "simulator.json").read_text())
    cfg = SimConfig.from_dict(meta["config"])
    assert meta["labels"]["channels"] == list(CHANNELS)
    _, _, L = subject_line_integrals(cfg, 1)
    mw, mb = physics.mu_per_mm(cfg.synthetic_kev)
    lo, hi = cfg.synthetic_window
    for v in range(cfg.views):
        lab = read_label(sim_root / f"labels/s001_v{v:02d}.tif", "bone_mm").values
        soft = read_label(sim_root / f"labels/s001_v{v:02d}.tif", "soft_mm").values
        img = render_domains(L[v], cfg, None)
        p_label = torch.from_numpy(mw * soft.astype(np.float64) + mb * lab.astype(np.float64))
        p_img = physics.image_to_log_signal(img["synthetic_low"], "synthetic_low", cfg)
        inside = (p_label > lo + 0.05) & (p_label < hi - 0.05)
        assert inside.float().mean() > 0.3
        np.testing.assert_allclose(p_img[inside], p_label[inside], rtol=0, atol=2e-4)
        for d in img:
            assert tuple(img[d].shape) == lab.shape
    mask = read_label(sim_root / "labels/s001_v00.tif", "bone_mask")
    assert mask.kind == "mask"
    np.testing.assert_array_equal(mask.values, (lab_of(sim_root, "s001_v00") >= BONE_MASK_MM))


def lab_of(root, vid):
    return read_label(root / f"labels/{vid}.tif", "bone_mm").values


def test_subject_labels_equal_the_written_files(sim_root):
    cfg = SimConfig.from_dict(json.loads((sim_root / "simulator.json").read_text())["config"])
    labs = subject_labels(cfg, 2)
    for v in range(cfg.views):
        for c, name in enumerate(CHANNELS):
            np.testing.assert_array_equal(
                labs[v, c], read_label(sim_root / f"labels/s002_v{v:02d}.tif", name).values)


def test_fingerprint_ignores_the_labels(sim_root, tmp_path):
    """A labelled dataset has the fingerprint of the same images without labels (the shipped
    runs' data.json stays valid)."""
    cols = ("path", "domain", "subject", "view_id", "split")
    rows = _rows(sim_root)
    text = "\n".join([",".join(cols)] + [",".join(r[c] for c in cols) for r in rows]) + "\n"
    meta = json.loads((sim_root / "simulator.json").read_text())
    meta.pop("labels")
    sim = json.dumps(meta, indent=1, sort_keys=True, default=float) + "\n"
    fp = image_fingerprint(sim_root)
    assert fp["manifest.csv"] == hashlib.sha256(text.encode()).hexdigest()
    assert fp["simulator.json"] == hashlib.sha256(sim.encode()).hexdigest()


def test_write_read_roundtrip_and_channels(tmp_path):
    L = torch.rand(8, 8, 2, dtype=torch.float64) * 30
    lab = simulator_labels(L, 2)
    assert lab.shape == (3, 4, 4) and lab.dtype == np.float32
    np.testing.assert_allclose(lab[0], L[..., 1].reshape(4, 2, 4, 2).mean((1, 3)), rtol=1e-6)
    write_labels(tmp_path / "a.tif", lab, "v0")
    for c, name in enumerate(CHANNELS):
        np.testing.assert_array_equal(read_label(tmp_path / "a.tif", name).values, lab[c])
    with pytest.raises(MedShiftError, match="channels bone_mm, soft_mm, bone_mask"):
        read_label(tmp_path / "a.tif", "density")


# --- a user's label folder ------------------------------------------------------------------
@pytest.fixture()
def user_root(tmp_path):
    """ROOT/real/<name>.png images (no manifest) and ROOT/labels/real/<name>.npy maps."""
    from medshift_fast.data import write_png16

    root = tmp_path / "user"
    for i in range(3):
        write_png16(root / "real" / f"im{i}.png", np.zeros((8, 8)) + 0.1 * i)
        (root / "labels" / "real").mkdir(parents=True, exist_ok=True)
        np.save(root / "labels" / "real" / f"im{i}.npy", np.full((8, 8), float(i), np.float32))
    return root


def _load(root, kind="map", shape=(8, 8)):
    imgs = sorted((root / "real").glob("*.png"))
    return load_labels(root, imgs, [shape] * len(imgs), channel="bone_mm", kind=kind,
                       what="real test")


def test_user_labels_load_and_labels_folder_is_not_a_domain(user_root):
    assert FolderDataset(user_root).domains == ("real",)
    y = _load(user_root)
    assert y.shape == (3, 8, 8) and float(y[2, 0, 0]) == 2.0


def test_refuses_missing_extra_and_misnamed_labels(user_root):
    (user_root / "labels/real/im1.npy").unlink()
    with pytest.raises(MedShiftError, match="labels for 2 of 3 real test images; none for e.g. "
                                            "'real/im1.png'"):
        _load(user_root)
    np.save(user_root / "labels/real/im1_typo.npy", np.zeros((8, 8), np.float32))
    np.save(user_root / "labels/real/im1.npy", np.zeros((8, 8), np.float32))
    with pytest.raises(MedShiftError, match="1 label file.* match no image, e.g. "
                                            "'labels/real/im1_typo.npy'"):
        _load(user_root)


def test_refuses_no_labels_with_one_clear_line(user_root):
    shutil.rmtree(user_root / "labels")
    with pytest.raises(MedShiftError, match=r"no labels found for the 3 real test images") as e:
        _load(user_root)
    assert "\n" not in str(e.value) and "labels/<domain>/<name>" in str(e.value)


def test_refuses_wrong_size_and_wrong_kind(user_root):
    with pytest.raises(MedShiftError, match="is 8x8 but its image is 16x16"):
        _load(user_root, shape=(16, 16))
    with pytest.raises(MedShiftError, match="is a map but the task needs a mask"):
        _load(user_root, kind="mask")
    from PIL import Image

    for i in range(3):
        (user_root / f"labels/real/im{i}.npy").unlink()
        Image.fromarray(np.where(np.eye(8) > 0, 255, 0).astype(np.uint8)).save(
            user_root / f"labels/real/im{i}.png")
    y = _load(user_root, kind="mask")
    assert set(np.unique(y)) == {0.0, 1.0}
    with pytest.raises(MedShiftError, match="is a mask but the task needs a float map"):
        _load(user_root)
    Image.fromarray((np.arange(64).reshape(8, 8) * 3).astype(np.uint8)).save(
        user_root / "labels/real/im0.png")
    with pytest.raises(MedShiftError, match="is not a mask"):
        _load(user_root, kind="mask")
    Image.new("RGB", (8, 8)).save(user_root / "labels/real/im0.png")
    with pytest.raises(MedShiftError, match="a RGB PNG"):
        _load(user_root, kind="mask")


def test_refuses_non_finite_maps(user_root):
    a = np.zeros((8, 8), np.float32)
    a[0, 0] = np.nan
    np.save(user_root / "labels/real/im0.npy", a)
    with pytest.raises(MedShiftError, match="NaN or Inf"):
        _load(user_root)


def test_add_test_subjects_renders_new_labelled_subjects(sim_root, tmp_path):
    from medshift_fast.data.extend import add_test_subjects

    info = add_test_subjects(sim_root, tmp_path / "ev", 2)
    rows = _rows(tmp_path / "ev")
    test = [r for r in rows if r["split"] == "test"]
    assert info["test_subjects"] == ["s003", "s004"] and {r["subject"] for r in test} == {
        "s003", "s004"}
    assert len(test) == 2 * 2 * 5 and all((tmp_path / "ev" / r["labels"]).is_file()
                                          for r in rows)
    old_test = {r["subject"] for r in _rows(sim_root) if r["split"] == "test"}
    assert not old_test & {r["subject"] for r in rows}  # the source's test subjects left out
    cfg = SimConfig.from_dict(json.loads((sim_root / "simulator.json").read_text())["config"])
    np.testing.assert_array_equal(
        read_label(tmp_path / "ev/labels/s004_v01.tif", "soft_mm").values,
        subject_labels(cfg, 4)[1, 1])
