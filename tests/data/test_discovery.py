"""Discovery by content and the domain rules: nothing dropped, nothing merged by accident.

Extensionless DICOMs (PACS exports: ``IM0001`` carrying ``DICM``) and PNG / TIFF files under
other names are found in nested folders; what is left out is listed with its reason; a nested
tree without a domain map, a single domain and an unknown map key are refused, naming the
folders (CLI: one line, exit 2).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from medshift_fast.cli import main
from medshift_fast.data import FolderDataset, read_image, write_png16
from medshift_fast.data.io import find_images, image_format, sniff_format
from medshift_fast.errors import MedShiftError

pydicom = pytest.importorskip("pydicom")
tifffile = pytest.importorskip("tifffile")


def _dicom(path, pixels, modality="DX"):
    """A small 12-bit DX image written as a Part-10 file (preamble + DICM), any file name."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, generate_uid()
    ds.Modality = modality
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True, implicit_vr=False, little_endian=True)
    return path


def _png(path, seed=0, shape=(12, 12)):
    write_png16(path, np.random.default_rng(seed).uniform(-1, 1, shape))
    return path


def _pacs(root, domain, patients=2, per=2, seed=0):
    """ROOT/<domain>/<patient>/<series>/IM000k: extensionless DICOMs, two levels deep."""
    rng = np.random.default_rng(seed)
    for p in range(patients):
        for k in range(per):
            _dicom(root / domain / f"P{p:03d}" / "SER1" / f"IM{k:04d}",
                   rng.integers(0, 4096, (12, 12)))
    return root


def test_files_are_found_by_content_whatever_their_name(tmp_path):
    dcm = _dicom(tmp_path / "a" / "IM0001", np.arange(16).reshape(4, 4))
    dotted = _dicom(tmp_path / "a" / "1.2.840.113619.2.55.3", np.ones((4, 4)))
    png = _png(tmp_path / "b" / "c" / "IMG2")  # PNG bytes, no extension
    tif = tmp_path / "b" / "scan.1"
    tifffile.imwrite(tif, np.zeros((4, 4), np.uint16))
    big = tmp_path / "b" / "big.raw"
    tifffile.imwrite(big, np.zeros((4, 4), np.uint16), bigtiff=True)
    (tmp_path / "b" / "notes.txt").write_text("not an image")
    (tmp_path / "b" / "IM0009").write_bytes(b"\0" * 200)  # no signature at all
    (tmp_path / ".hidden").mkdir()
    _png(tmp_path / ".hidden" / "x.png")
    _png(tmp_path / ".DS_Store.png")
    found, skipped = find_images(tmp_path)
    assert set(found) == {dcm, dotted, png, tif, big}
    assert {p.name: why for p, why in skipped}.keys() == {"notes.txt", "IM0009"}
    assert all("not an image" in why for _, why in skipped)
    assert [sniff_format(p) for p in (dcm, png, tif, big)] == ["dicom", "png", "tiff", "tiff"]
    assert image_format(dcm) == "dicom" and image_format(tmp_path / "b" / "notes.txt") is None
    # what is found reads: an extensionless PNG and a TIFF under another name too
    assert read_image(png).shape == (12, 12) and read_image(tif).shape == (4, 4)
    assert find_images(dcm) == ([dcm], [])  # one file
    with pytest.raises(MedShiftError, match="does not exist"):
        find_images(tmp_path / "nope")


def test_extensionless_dicoms_in_nested_folders_are_a_dataset(tmp_path):
    root = _pacs(_pacs(tmp_path / "ds", "real_low", seed=1), "real_normal", seed=2)
    ds = FolderDataset(root, size=8)
    assert ds.counts() == {"real_low": 4, "real_normal": 4}
    assert all(s.path.name.startswith("IM") for s in ds.samples)
    assert ds[0][0].shape == (1, 8, 8)


def test_files_left_out_are_reported_once(tmp_path, caplog):
    root = tmp_path / "ds"
    for d in ("real_low", "real_normal"):
        _png(root / d / "a.png")
    (root / "real_low" / "readme.txt").write_text("x")
    with caplog.at_level(logging.WARNING, logger="medshift_fast.data"):
        ds = FolderDataset(root)
        FolderDataset(root)  # the same files again: not reported twice
    assert [p.name for p, _ in ds.skipped_files] == ["readme.txt"]
    assert caplog.text.count("readme.txt") == 1 and "not an image" in caplog.text
    (root / "real_normal" / "a.png").unlink()
    (root / "real_normal" / "b.txt").write_text("x")
    with pytest.raises(MedShiftError, match="real_normal.*contains no images.*b.txt"):
        FolderDataset(root)


def _nested(root):
    for d in ("Real/Low", "Real/High", "Sim"):
        for i in range(2):
            _png(root / d / f"{i}.png", seed=i)
    return root


def test_a_nested_tree_without_a_map_is_refused_naming_its_folders(tmp_path):
    root = _nested(tmp_path / "ds")
    with pytest.raises(MedShiftError) as e:
        FolderDataset(root)
    msg = str(e.value)
    assert "'Real'" in msg and "Real/Low" in msg and "Real/High" in msg and "Sim" in msg
    assert "--domain-map 'Real/High=real_high,Real/Low=real_low,Sim=Sim'" in msg
    assert "--domain-map 'Real=Real,Sim=Sim'" in msg
    # the suggested maps work: split, or merged on purpose
    split = FolderDataset(root, domain_map="Real/High=real_high,Real/Low=real_low,Sim=Sim")
    assert split.counts() == {"real_low": 2, "real_high": 2, "Sim": 2}
    assert FolderDataset(root, domain_map="Real=Real,Sim=Sim").counts() == {"Real": 4, "Sim": 2}
    # a domain not used is not checked
    assert FolderDataset(root, domains=["Sim"]).counts() == {"Sim": 2}


def test_case_folders_of_a_known_domain_are_one_domain(tmp_path):
    root = _pacs(tmp_path / "ds", "real_low", patients=3)
    for i in range(2):
        _png(root / "synthetic_low" / f"{i}.png")
    ds = FolderDataset(root)
    assert ds.counts() == {"synthetic_low": 2, "real_low": 6}


def test_bad_domain_map_keys_are_refused(tmp_path, sim_root):
    root = _nested(tmp_path / "ds")
    with pytest.raises(MedShiftError, match="Real/Lo.*does not exist.*folders in.*High, Low"):
        FolderDataset(root, domain_map="Real/Lo=real_low,Sim=Sim")
    with pytest.raises(MedShiftError, match="'Real' and 'Real/Low' overlap"):
        FolderDataset(root, domain_map="Real=real,Real/Low=real_low")
    with pytest.raises(MedShiftError, match="not a folder path"):
        FolderDataset(root, domain_map="../ds=x,Sim=Sim")
    # with a manifest the keys are its domains: a typo is no longer ignored
    with pytest.raises(MedShiftError, match="'synthetic_lo'.*match no domain.*synthetic_low"):
        FolderDataset(sim_root, domain_map="synthetic_lo=sim_low")
    ok = FolderDataset(sim_root, domain_map="synthetic_low=sim_low")
    assert "sim_low" in ok.domains and "synthetic_low" not in ok.domains


def _train(capsys, data, out, *extra):
    rc = main(["train", "--data", str(data), "--out", str(out), "--steps", "1",
               "--batch-size", "2", "--image-size", "8", "--model-channels", "16",
               "--val-every", "0", "--sample-every", "0", "--no-progress", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


def test_train_refuses_nested_trees_single_domains_and_unknown_keys(tmp_path, sim_root, capsys):
    root = _nested(tmp_path / "ds")
    rc, err = _train(capsys, root, tmp_path / "r1")
    assert rc == 2 and len(err) == 1 and "Real/Low" in err[0] and "--domain-map" in err[0]
    one = tmp_path / "one"
    for i in range(3):
        _png(one / "real_low" / f"{i}.png", seed=i)
    rc, err = _train(capsys, one, tmp_path / "r2")
    assert rc == 2 and len(err) == 1 and "only one domain (real_low)" in err[0]
    rc, err = _train(capsys, sim_root, tmp_path / "r3", "--domains", "real_low")
    assert rc == 2 and len(err) == 1 and "only one domain" in err[0]
    rc, err = _train(capsys, sim_root, tmp_path / "r4", "--domain-map", "real_lo=x")
    assert rc == 2 and len(err) == 1 and "'real_lo'" in err[0]
    for r in ("r1", "r2", "r3", "r4"):
        assert not (tmp_path / r).exists()  # refused before anything was written


def test_train_on_a_pacs_tree_of_extensionless_dicoms(tmp_path, capsys):
    root = _pacs(_pacs(tmp_path / "ds", "real_low", seed=1), "real_normal", seed=2)
    rc, err = _train(capsys, root, tmp_path / "run")
    assert rc == 0, err
    assert (tmp_path / "run" / "model.safetensors").is_file()
