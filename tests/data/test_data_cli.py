"""`medshift simulate` and bad --data folders through the CLI: exit 2 and one stderr line."""

from __future__ import annotations

import pytest

from medshift_fast.cli import main


def _one_line_error(capsys, argv, match):
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and match in err, err
    return err


def test_simulate_cli_writes_dataset(tmp_path, capsys):
    out = tmp_path / "ds"
    rc = main(["simulate", "--out", str(out), "--subjects", "1", "--views", "2", "--size", "16",
               "--seed", "3", "--no-progress"])
    assert rc == 0
    assert "wrote 10 images" in capsys.readouterr().out
    assert len(list(out.glob("*/*.png"))) == 10 and (out / "manifest.csv").is_file()
    _one_line_error(capsys, ["simulate", "--out", str(out), "--size", "16", "--no-progress"],
                    "--overwrite")
    assert main(["simulate", "--out", str(out), "--subjects", "1", "--views", "1", "--size", "16",
                 "--overwrite", "--no-progress"]) == 0
    assert len(list(out.glob("*/*.png"))) == 5  # stale files of the old dataset removed


@pytest.mark.parametrize("args, match", [
    (["--size", "0"], "--size"),
    (["--subjects", "-2"], "--subjects"),
    (["--domains", "real_low,real_hi"], "real_hi"),
])
def test_simulate_cli_bad_args(tmp_path, capsys, args, match):
    err = _one_line_error(capsys, ["simulate", "--out", str(tmp_path / "x"), *args,
                                   "--no-progress"], match)
    assert err.startswith("medshift simulate: error:")


def test_simulate_cli_out_is_a_file(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    _one_line_error(capsys, ["simulate", "--out", str(f), "--no-progress"], "not a folder")


def _train_argv(data, tmp_path, *extra):
    return ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--steps", "1",
            "--no-progress", *extra]


def test_bad_data_folder_via_cli(tmp_path, capsys):
    _one_line_error(capsys, _train_argv(tmp_path / "missing", tmp_path), "does not exist")
    root = tmp_path / "data"
    (root / "real_low").mkdir(parents=True)
    _one_line_error(capsys, _train_argv(root, tmp_path), "contains no images")


def test_unknown_domain_via_cli(sim_root, tmp_path, capsys):
    _one_line_error(capsys, _train_argv(sim_root, tmp_path, "--domains", "real_low,real_hi"),
                    "available: synthetic_low")


def test_corrupt_file_via_cli(tmp_path, capsys):
    from medshift_fast.data import simulate

    root = simulate(tmp_path / "d", subjects=1, views=1, size=16, progress=False)
    (root / "real_low" / "s000_v00.png").write_text("corrupt")
    _one_line_error(capsys, _train_argv(root, tmp_path), "s000_v00.png")
