"""Everything that changes a translation is verified at load (issue 31): the weights AND the
config entries that decide the translation (tau range, pairs, domains, architecture, learned
scale and intensity rule) are hashed by every run the package writes; a flipped bit or an
edited tau range -- in a fresh run or in any shipped run -- is refused in one line (exit 2); a
run without the hashes loads with a one-line warning."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from medshift_fast.cli import main
from medshift_fast.errors import MedShiftError, MedShiftWarning
from medshift_fast.models import build_model
from medshift_fast.models.student import Student, StudentConfig
from medshift_fast.run import (
    BOOKKEEPING,
    load_run,
    read_run_config,
    record_run_hashes,
    run_digest,
    save_run,
    update_run_config,
)
from medshift_fast.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p for p in (ROOT / "pretrained").iterdir() if (p / "config.json").is_file())
DOMAINS = ("synthetic_low", "real_normal")


def _student(path: Path) -> Path:
    torch.manual_seed(0)
    m = build_model("tiny", num_classes=2, model_channels=16, head_channels=16)
    st = Student(StudentConfig(unet=m.config.to_dict(), pairs=((0, 1),), tau_min=0.3,
                               tau_max=0.6, teacher={"steps": 2, "solver": "euler"}))
    return save_run(path, TrainConfig(image_size=16), st.config.to_dict(), DOMAINS,
                    st.state_dict(), kind="student")


def _edit(run: Path, fn) -> None:
    cfg = json.loads((run / "config.json").read_text())
    fn(cfg)
    (run / "config.json").write_text(json.dumps(cfg, indent=2))


def _flip(path: Path) -> None:
    b = bytearray(path.read_bytes())
    b[-4] ^= 1  # the lowest mantissa bit of the last float: the weights still look fine
    path.write_bytes(bytes(b))


def _one_line(capsys, argv, *needles) -> str:
    rc = main(argv)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ": error: " in ln]
    assert rc == 2 and len(err) == 1, (rc, err)
    for n in needles:
        assert n in err[0], err[0]
    return err[0]


def test_every_saved_run_records_its_config_digests(tmp_path):
    run = _student(tmp_path / "s")
    cfg = read_run_config(run)
    digests = cfg["sha256"]["config"]
    assert {"model", "domains", "train", "kind"} <= set(digests)
    assert not set(digests) & BOOKKEEPING
    loaded = load_run(run)  # verified: no warning
    assert loaded.digest == run_digest(run, cfg) and len(loaded.digest) == 64
    assert loaded.identity() == f"s sha256:{loaded.digest[:16]}"


@pytest.mark.parametrize("edit, entry", [
    (lambda c: c["model"].update(tau_min=0.9, tau_max=0.95), "'model'"),  # run at tau 0.95
    (lambda c: c["model"].update(pairs=[[1, 0]]), "'model'"),
    (lambda c: c["model"]["teacher"].update(steps=20), "'model'"),
    (lambda c: c["domains"].reverse(), "'domains'"),
    (lambda c: c.update(learned={"scale": {"kind": "native"}}), "'learned' (added)"),
])
def test_an_edited_config_entry_is_refused(tmp_path, edit, entry):
    run = _student(tmp_path / "s")
    _edit(run, edit)
    with pytest.raises(MedShiftError, match=f"config.json was edited .*{re.escape(entry)}"):
        load_run(run)


def test_bookkeeping_entries_may_change(tmp_path):
    run = _student(tmp_path / "s")
    _edit(run, lambda c: c.update(step=7, best_val=0.5, teacher="/elsewhere/teacher"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_run(run)


def test_a_run_without_hashes_warns_once_in_one_line_and_can_be_hashed(tmp_path, capsys):
    run = _student(tmp_path / "s")
    _edit(run, lambda c: c.pop("sha256"))
    rc = main(["translate", "--checkpoint", str(run), "--source", "synthetic_low", "--target",
               "real_normal", "--out", str(tmp_path / "o"), "--no-progress",
               str(tmp_path / "missing.png")])
    err = capsys.readouterr().err.splitlines()
    warn = [ln for ln in err if "warning:" in ln and "SHA-256" in ln]
    assert rc == 2 and len(warn) == 1, err  # the warning, then the (unrelated) missing input
    assert "scripts/hash_run_weights.py" in warn[0]
    rec = record_run_hashes(run)
    assert set(rec) == {"model.safetensors", "config"}
    _edit(run, lambda c: c["model"].update(tau_max=0.95))
    with pytest.raises(MedShiftError, match="edited"):
        load_run(run)
    with pytest.raises(MedShiftError, match="edited"):
        record_run_hashes(run)  # never re-vouches for an edited run ...
    record_run_hashes(run, force=True)  # ... unless told the edit was on purpose
    assert load_run(run).model.tau_range == (0.3, 0.95)
    _flip(run / "model.safetensors")
    with pytest.raises(MedShiftError, match="corrupt or tampered"):
        record_run_hashes(run, force=True)  # force never vouches for other weights


def test_update_run_config_rehashes(tmp_path):
    run = _student(tmp_path / "s")
    before = load_run(run).digest
    update_run_config(run, learned={"scale": {"kind": "native", "size": 16}, "tile": 16})
    after = load_run(run)
    assert after.digest != before and after.config["learned"]["tile"] == 16


@pytest.mark.skipif(not SHIPPED, reason="no shipped runs")
@pytest.mark.parametrize("name", [p.name for p in SHIPPED])
def test_shipped_runs_are_hashed_and_refuse_a_flipped_bit_or_an_edited_tau(tmp_path, capsys,
                                                                          name):
    src = ROOT / "pretrained" / name
    cfg = read_run_config(src)
    assert "config" in cfg["sha256"] and "model.safetensors" in cfg["sha256"], (
        f"{name} is not republished: run python scripts/hash_run_weights.py {src}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", MedShiftWarning)
        load_run(src)
    argv = ["export", "--format", "onnx", "--source", "real_low", "--target",
            "real_exposure", "--device", "cpu"]
    flipped = tmp_path / "flipped"
    shutil.copytree(src, flipped)
    _flip(flipped / "model.safetensors")
    _one_line(capsys, [*argv, "--checkpoint", str(flipped), "--out", str(tmp_path / "a.onnx")],
              "corrupt or tampered")
    edited = tmp_path / "edited"
    shutil.copytree(src, edited)
    if cfg["kind"] == "student":
        _edit(edited, lambda c: c["model"].update(tau_min=0.9, tau_max=0.95))
    else:
        _edit(edited, lambda c: c["model"].update(num_res_blocks=2))
    _one_line(capsys, [*argv, "--checkpoint", str(edited), "--out", str(tmp_path / "b.onnx")],
              "config.json was edited", "'model'")
    assert not (tmp_path / "a.onnx").exists() and not (tmp_path / "b.onnx").exists()
