"""`medshift translate` never loses or mixes up a user's files: per-run manifests, never onto an
input, content discovery, per-image noise seeds, and torchrun sharding equal to one process."""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from medshift_fast.cli import main
from medshift_fast.data import DOMAINS, read_image, simulate, write_png16
from medshift_fast.errors import MedShiftError
from medshift_fast.run import load_run
from medshift_fast.translate import Translator

SET = ["--source", "synthetic_low", "--target", "real_normal", "--steps", "2", "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A small run over the five demo domains (random non-zero output layers), 32 px."""
    from utils import tiny_run

    return tiny_run(tmp_path_factory.mktemp("run"), DOMAINS)


def _tr(run_dir, out, *inputs, extra=()):
    return main(["translate", "--checkpoint", str(run_dir), "--out", str(out), *SET, *extra,
                 *map(str, inputs)])


def _one_line(capsys, rc, *needles):
    err = [e for e in capsys.readouterr().err.splitlines() if "error" in e]
    assert rc == 2 and len(err) == 1, err
    for n in needles:
        assert n in err[0], err[0]


def _sha(p) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def _rows(out):
    return [r for m in sorted(Path(out).glob("manifest-*.csv"))
            for r in csv.DictReader(open(m))]


def test_a_datasets_manifest_and_an_earlier_runs_are_never_replaced(run_dir, tmp_path):
    root = tmp_path / "ds"
    simulate(root, subjects=1, views=2, size=32, seed=0, progress=False)
    before = _sha(root / "manifest.csv")
    assert _tr(run_dir, root, root / "synthetic_low") == 0
    assert _tr(run_dir, root, root / "synthetic_low", extra=["--overwrite"]) == 0
    assert _sha(root / "manifest.csv") == before
    assert len(list(root.glob("manifest-*.csv"))) == 2  # one per run


def test_never_onto_an_input_nor_inside_an_input_folder(run_dir, tmp_path, capsys):
    d, out = tmp_path / "d", tmp_path / "out"
    d.mkdir()
    out.mkdir()
    write_png16(d / "a.png", np.zeros((16, 16), np.float32))
    write_png16(out / "a_real_normal.png", np.full((16, 16), 0.5, np.float32))
    h = _sha(out / "a_real_normal.png")
    rc = _tr(run_dir, out, d / "a.png", out / "a_real_normal.png", extra=["--overwrite"])
    _one_line(capsys, rc, "would replace the input")
    assert _sha(out / "a_real_normal.png") == h
    _one_line(capsys, _tr(run_dir, d, d), "--out")  # in place
    _one_line(capsys, _tr(run_dir, d / "sub", d), "lies inside")
    assert sorted(p.name for p in d.iterdir()) == ["a.png"]


def test_extensionless_dicoms_in_nested_folders_are_found_and_others_listed(run_dir, tmp_path,
                                                                            capsys):
    from pydicom.data import get_testdata_file

    src = get_testdata_file("RG3_UNCI.dcm", download=False)
    if src is None:
        pytest.skip("pydicom-data's RG3_UNCI.dcm is not here")
    tree = tmp_path / "pacs"
    (tree / "p1").mkdir(parents=True)
    (tree / "p2" / "s1").mkdir(parents=True)
    shutil.copy(src, tree / "p1" / "IM0001")
    shutil.copy(src, tree / "p2" / "s1" / "IM0002")
    (tree / "p1" / "README.txt").write_text("not an image")
    assert _tr(run_dir, tmp_path / "out", tree, extra=["--size", "learned"]) == 0
    assert (tmp_path / "out" / "p1" / "IM0001_real_normal.dcm").is_file()
    assert (tmp_path / "out" / "p2" / "s1" / "IM0002_real_normal.dcm").is_file()
    assert "1 file(s) in the input folders are not images" in capsys.readouterr().out
    rows = {Path(r["input"]).name: r for r in _rows(tmp_path / "out")}
    assert rows["README.txt"]["status"] == "skipped" and rows["README.txt"]["reason"]


def test_noise_is_seeded_per_image_not_by_position(run_dir, tmp_path):
    tree = tmp_path / "in"
    tree.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        write_png16(tree / f"{name}.png", rng.random((16, 16)).astype(np.float32) * 2 - 1)
    extra = ["--decode", "sde"]
    alone = tmp_path / "alone"
    shutil.copytree(tree, alone / "in")
    (alone / "in" / "a.png").unlink()
    (alone / "in" / "b.png").unlink()
    for out, src in ((tmp_path / "o1", tree), (tmp_path / "o2", alone / "in")):
        assert _tr(run_dir, out, src, extra=[*extra, "--batch-size", "1", "--seed", "7"]) == 0
    assert _sha(tmp_path / "o1" / "c_real_normal.png") == _sha(tmp_path / "o2" /
                                                               "c_real_normal.png")
    assert _tr(run_dir, tmp_path / "o3", tree, extra=[*extra, "--seed", "8"]) == 0
    assert _sha(tmp_path / "o3" / "c_real_normal.png") != _sha(tmp_path / "o1" /
                                                               "c_real_normal.png")
    # batched together: the same noise per image (to the network's batch round-off)
    assert _tr(run_dir, tmp_path / "o4", tree, extra=[*extra, "--seed", "7"]) == 0
    np.testing.assert_allclose(read_image(tmp_path / "o4" / "c_real_normal.png"),
                               read_image(tmp_path / "o1" / "c_real_normal.png"), atol=1e-3)


def test_per_image_generators_make_sdedit_independent_of_the_batch(run_dir):
    tr = Translator(load_run(run_dir), "synthetic_low", "real_normal", method="sdedit",
                    steps=2)
    x = torch.rand(3, 1, 16, 16) * 2 - 1

    def gens(*seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    together = tr.translate(x, generators=gens(1, 2, 3))
    alone = tr.translate(x[2:], generators=gens(3))
    torch.testing.assert_close(together[2:], alone, atol=1e-5, rtol=0)
    assert not torch.allclose(tr.translate(x[2:], generators=gens(4)), alone)


def test_unknown_modality_codes_and_a_student_on_cuda_graph_are_refused(run_dir, tmp_path,
                                                                       capsys):
    write_png16(tmp_path / "a.png", np.zeros((16, 16), np.float32))
    _one_line(capsys, _tr(run_dir, tmp_path / "o", tmp_path / "a.png",
                          extra=["--allow-modality", "XYZ"]), "XYZ")
    student = Path(__file__).parents[1] / "pretrained" / "demo128_student"
    if not (student / "config.json").is_file():
        pytest.skip("no shipped student")
    with pytest.raises(MedShiftError, match="CUDA"):
        Translator(load_run(student), "real_low", "real_exposure", mode="cuda_graph",
                   device="cpu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(run_dir, out, tree, n, extra=()):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={n}",
           "--master-addr=127.0.0.1", f"--master-port={_free_port()}", "-m", "medshift_fast",
           "translate", "--checkpoint", str(run_dir), "--out", str(out), *SET, *extra, str(tree)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_torchrun_two_ranks_write_what_one_process_writes(run_dir, tmp_path):
    tree = tmp_path / "in"
    (tree / "sub").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for k in range(5):
        write_png16(tree / ("sub" if k % 2 else "") / f"{k}.png",
                    rng.random((16, 24)).astype(np.float32) * 2 - 1)
    # the 1-process reference under the same thread count (OpenMP's split of a small batch
    # can change a convolution's summation order): torchrun with one rank
    res = _torchrun(run_dir, tmp_path / "one", tree, 1, ["--batch-size", "2"])
    assert res.returncode == 0, res.stderr[-2000:]
    res = _torchrun(run_dir, tmp_path / "two", tree, 2, ["--batch-size", "2"])
    assert res.returncode == 0, res.stderr[-2000:]
    one = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.png"))
    two = sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*.png"))
    assert one == two and len(one) == 5
    for p in one:  # the ODE path: the same bytes
        assert _sha(tmp_path / "one" / p) == _sha(tmp_path / "two" / p)
    keep = ("input", "output", "status", "working_size", "tau")
    r1 = [{k: r[k] for k in keep} for r in _rows(tmp_path / "one")]
    r2 = [{k: r[k] for k in keep} for r in _rows(tmp_path / "two")]
    assert r1 == r2
    assert not list((tmp_path / "two").glob(".manifest*"))  # partial manifests merged away


def test_a_failing_rank_leaves_the_others_outputs_complete_and_listed(run_dir, tmp_path):
    tree = tmp_path / "in"
    tree.mkdir()
    for k in range(4):
        write_png16(tree / f"{k}.png", np.full((16, 16), k / 10, np.float32))
    # 1.png: valid chunks and CRCs, but its compressed pixel data do not inflate
    raw = bytearray((tree / "1.png").read_bytes())
    i = raw.index(b"IDAT")
    n = int.from_bytes(raw[i - 4:i], "big")
    raw[i + 4:i + 4 + n] = bytes(b ^ 0x5A for b in raw[i + 4:i + 4 + n])
    raw[i + 4 + n:i + 8 + n] = zlib.crc32(bytes(raw[i:i + 4 + n])).to_bytes(4, "big")
    (tree / "1.png").write_bytes(bytes(raw))
    # every rank vets every input before the first translation: nothing is written
    res = _torchrun(run_dir, tmp_path / "vetted", tree, 2, ["--batch-size", "1"])
    assert res.returncode != 0 and "1.png" in res.stderr
    assert not list((tmp_path / "vetted").glob("*.png"))
    # a failure only the translation meets (rank 1 cannot write its output) stops that rank
    write_png16(tree / "1.png", np.full((16, 16), 0.1, np.float32))
    (tmp_path / "out" / "1_real_normal.png").mkdir(parents=True)
    (tmp_path / "out" / "1_real_normal.png" / "keep").write_text("x")
    res = _torchrun(run_dir, tmp_path / "out", tree, 2, ["--batch-size", "1", "--overwrite"])
    assert res.returncode != 0
    assert (tmp_path / "out" / "0_real_normal.png").is_file()  # rank 0's share: complete
    assert (tmp_path / "out" / "2_real_normal.png").is_file()
    rows = _rows(tmp_path / "out")
    assert {Path(r["output"]).name for r in rows if r["status"] == "written"} >= {
        "0_real_normal.png", "2_real_normal.png"}
    assert any(r["status"] == "failed" for r in rows)
