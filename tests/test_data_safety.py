"""The output-safety rule and weights integrity (issue 23): nothing of the user's is lost.

Every refusal is one line on stderr, exit 2, before any work, and the bytes that were there are
unchanged afterwards (compared by hash). Covered: ``train`` into its own dataset, over files of
an earlier run, ``distill`` onto its teacher, ``demo`` over a previous demo or into a user's
folder, ``simulate`` into a non-empty folder, a flipped bit in the weights, ``--version`` and
help lines carried whole.
"""

from __future__ import annotations

import hashlib
import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from medshift_fast.cli import main
from medshift_fast.data import write_png16
from medshift_fast.errors import MedShiftError


def tree_hash(root: Path) -> dict[str, str]:
    """{relative path: SHA-256} of every file under root."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def one_line(capsys, argv, *needles):
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, (rc, err)
    for n in needles:
        assert n in err[0], (n, err[0])
    return err[0]


@pytest.fixture()
def data(tmp_path):
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for d in ("synthetic_low", "real_normal"):
        for i in range(4):
            write_png16(root / d / f"{i}.png", rng.uniform(-1, 1, (8, 8)))
    return root


def _train(data, out, *extra):
    return ["train", "--data", str(data), "--out", str(out), "--steps", "1", "--batch-size", "2",
            "--image-size", "8", "--model-channels", "16", "--val-every", "0",
            "--sample-every", "0", "--no-progress", *extra]


def tiny_run(path, domains=("synthetic_low", "real_normal")):
    from medshift_fast.models import build_model
    from medshift_fast.run import save_run
    from medshift_fast.train import TrainConfig

    torch.manual_seed(0)
    m = build_model("tiny", num_classes=len(domains), model_channels=16, head_channels=16)
    return save_run(path, TrainConfig(image_size=16), m.config, domains, m.state_dict(),
                    m.state_dict())


# --- train / distill ---------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["same", "inside"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_train_never_writes_into_its_dataset(data, capsys, where, overwrite):
    before = tree_hash(data)
    out = data if where == "same" else data / "real_normal" / "run"
    one_line(capsys, _train(data, out, *(["--overwrite"] if overwrite else [])), "--data",
             str(data))
    assert tree_hash(data) == before and not (out / "config.json").exists()


def test_train_does_not_replace_files_of_an_earlier_run(data, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "log.csv").write_text("my own log\n")
    (out / "notes.md").write_text("mine\n")
    one_line(capsys, _train(data, out), "log.csv", "--overwrite")
    assert (out / "log.csv").read_text() == "my own log\n"
    assert main(_train(data, out, "--overwrite")) == 0
    assert (out / "notes.md").read_text() == "mine\n"  # a name a run never writes: untouched


def test_distill_never_writes_onto_its_teacher(tmp_path, capsys):
    from medshift_fast.train.flow import check_fresh_out

    teacher = tiny_run(tmp_path / "teacher")
    before = tree_hash(teacher)
    cfg = types.SimpleNamespace(out=str(teacher), teacher=str(teacher), data=None, resume=None,
                                overwrite=True)
    with pytest.raises(MedShiftError, match="--teacher"):
        check_fresh_out(cfg)
    one_line(capsys, ["distill", "--teacher", str(teacher), "--out", str(teacher),
                      "--overwrite", "--no-progress"], "--teacher")
    assert tree_hash(teacher) == before


# --- demo ------------------------------------------------------------------------------------
def _demo(out, *extra):
    return ["demo", "--quick", "--out", str(out), "--no-progress", *extra]


def _previous_demo(out: Path, marker: bool = True) -> Path:
    out.mkdir()
    if marker:
        (out / "demo.json").write_text("{}")
    (out / "report.md").write_text("# medshift_fast demo\n\nold numbers\n")
    for d in ("data/real_low", "run", "eval_synthetic_low_to_real_normal"):
        (out / d).mkdir(parents=True)
        (out / d / "f.txt").write_text(d)
    (out / "translator.onnx").write_bytes(b"old engine")
    (out / "translator.onnx.json").write_text("{}")
    return out


@pytest.mark.parametrize("marker", [True, False])
def test_demo_rerun_is_refused_without_overwrite(tmp_path, capsys, marker):
    out = _previous_demo(tmp_path / "demo", marker)
    before = tree_hash(out)
    one_line(capsys, _demo(out), "previous `medshift demo`", "--overwrite")
    assert tree_hash(out) == before


@pytest.mark.parametrize("overwrite", [False, True])
def test_demo_never_mixes_into_a_users_folder(tmp_path, capsys, overwrite):
    out = tmp_path / "mine"
    (out / "data").mkdir(parents=True)
    (out / "data" / "scan.dcm").write_bytes(b"patient data")
    (out / "thesis.tex").write_text("mine")
    before = tree_hash(out)
    one_line(capsys, _demo(out, *(["--overwrite"] if overwrite else [])), "not empty",
             "thesis.tex")
    assert tree_hash(out) == before


def test_demo_overwrite_replaces_only_the_previous_demo(tmp_path, capsys, monkeypatch):
    import medshift_fast.data as data_mod

    def stop(*a, **k):
        raise MedShiftError("stopped after the set-up")

    monkeypatch.setattr(data_mod, "simulate", stop)
    out = _previous_demo(tmp_path / "demo")
    one_line(capsys, _demo(out, "--overwrite"), "stopped after the set-up")
    assert sorted(p.name for p in out.iterdir()) == ["demo.json"]  # the old demo is gone
    assert json.loads((out / "demo.json").read_text())["config"]["quick"] is True


def test_make_demo_reruns_into_its_own_folder():
    mk = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    assert "demo --out runs/demo --overwrite" in mk


# --- simulate --------------------------------------------------------------------------------
def _sim(out, *extra):
    return ["simulate", "--out", str(out), "--subjects", "1", "--views", "1", "--size", "16",
            "--no-progress", *extra]


@pytest.mark.parametrize("overwrite", [False, True])
def test_simulate_never_writes_into_a_users_folder(tmp_path, capsys, overwrite):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    one_line(capsys, _sim(out, *(["--overwrite"] if overwrite else [])), "not empty",
             "notes.txt")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_simulate_overwrite_only_over_its_own_dataset(tmp_path, capsys):
    out = tmp_path / "ds"
    assert main(_sim(out)) == 0
    capsys.readouterr()
    one_line(capsys, _sim(out), "--overwrite")
    (out / "real_low" / "mine.png").write_bytes(b"not from simulate")
    before = tree_hash(out)
    one_line(capsys, _sim(out, "--overwrite"), "does not hold a previous `medshift simulate`")
    assert tree_hash(out) == before
    (out / "real_low" / "mine.png").unlink()
    (out / "manifest.csv").unlink()  # a dataset cut short: still only simulate's own files
    assert main(_sim(out, "--overwrite")) == 0
    assert (out / "manifest.csv").is_file()


# --- weights integrity -----------------------------------------------------------------------
def _flip(path: Path) -> None:
    b = bytearray(path.read_bytes())
    b[-4] ^= 1  # the lowest mantissa bit of the last float: the weights still look fine
    path.write_bytes(bytes(b))


@pytest.mark.parametrize("name, ema", [("model.safetensors", True), ("raw.safetensors", False)])
def test_a_flipped_bit_in_the_weights_is_refused(tmp_path, name, ema):
    from medshift_fast.run import load_run

    run = tiny_run(tmp_path / "run")
    cfg = json.loads((run / "config.json").read_text())
    assert set(cfg["sha256"]) == {"model.safetensors", "raw.safetensors", "config"}
    load_run(run, ema=ema)
    _flip(run / name)
    with pytest.raises(MedShiftError, match=f"{name} are corrupt or tampered.*SHA-256"):
        load_run(run, ema=ema)


def test_a_flipped_bit_is_one_line_on_the_command_line(tmp_path, capsys):
    run = tiny_run(tmp_path / "run")
    _flip(run / "model.safetensors")
    one_line(capsys, ["export", "--checkpoint", str(run), "--format", "onnx", "--out",
                      str(tmp_path / "t.onnx"), "--source", "synthetic_low", "--target",
                      "real_normal", "--device", "cpu"], "corrupt or tampered", "SHA-256")
    assert not (tmp_path / "t.onnx").exists()


def test_runs_saved_before_the_hashes_load_and_can_be_hashed(tmp_path):
    from medshift_fast.errors import MedShiftWarning
    from medshift_fast.run import load_run, record_run_hashes

    run = tiny_run(tmp_path / "run")
    cfg = json.loads((run / "config.json").read_text())
    del cfg["sha256"]
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.warns(MedShiftWarning, match="records no SHA-256"):
        load_run(run)  # an old run still loads, with a warning
    hashes = record_run_hashes(run)
    assert set(hashes) == {"model.safetensors", "raw.safetensors", "config"}
    _flip(run / "model.safetensors")
    with pytest.raises(MedShiftError, match="corrupt or tampered"):
        load_run(run)


# --- small CLI items ---------------------------------------------------------------------------
def test_version(capsys):
    from medshift_fast import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"medshift_fast {__version__}"


def test_help_lines_carry_every_attributes_entry_whole(monkeypatch):
    """Each generated flag's help is its field's whole docstring entry (the --allow-modality
    line was cut at "e.g."), and no help line ends mid-sentence."""
    import argparse

    from medshift_fast.cli import COMMANDS, _flags, build_parser

    used: dict[str, list] = {}
    for mod in COMMANDS:
        orig = mod.__dict__.get("add_config_flags")
        if orig is None:
            continue

        def rec(p, cls, *a, _name=mod.NAME, _orig=orig, **k):
            mine = set(k.get("skip", ())) | set(k.get("extra_help") or {})
            used.setdefault(_name, []).append((cls, mine))
            return _orig(p, cls, *a, **k)

        monkeypatch.setattr(mod, "add_config_flags", rec)
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    checked = 0
    for name, p in sub.choices.items():
        helps = {a.dest: (a.help or "") % {"default": a.default, "prog": name}
                 for a in p._actions}
        for cls, mine in used.get(name, []):
            for field, desc in _flags.field_help(cls).items():
                if field not in mine and helps.get(field):
                    assert helps[field].startswith(desc), (name, field, helps[field])
                    checked += 1
        for dest, text in helps.items():
            body = text.split(" (default:")[0].rstrip()
            assert body.count("(") == body.count(")"), (name, dest, text)
            assert not body.endswith((",", ";", ":", "e.g", "i.e", "(")), (name, dest, text)
    assert checked > 100
    tr = {a.dest: a.help for a in sub.choices["translate"]._actions}
    assert "(comma-separated, e.g. CT,MR; all = any)" in tr["allow_modality"]
    doc = """X.

    Attributes:
        a: first sentence, e.g. this. Second sentence with 5 % and a
            continuation line.
        b: one.
    """
    assert _flags._attributes(doc) == {
        "a": "first sentence, e.g. this. Second sentence with 5 % and a continuation line",
        "b": "one"}
