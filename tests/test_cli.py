"""CLI: a train -> translate round trip on a tiny folder dataset; bad input -> exit 2, one line."""

import numpy as np
import pytest

from medshift_fast.cli import main
from medshift_fast.data import read_image, write_png16


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:16, :16] / 15.0
    for d, noise in (("synthetic_low", 0.0), ("real_normal", 0.1)):
        (root / d).mkdir()
        for i in range(10):
            img = 0.6 * np.sin(3 * xx + i) * np.cos(2 * yy) + noise * rng.standard_normal((16, 16))
            write_png16(root / d / f"{i:03d}.png", np.clip(img, -1, 1).astype(np.float32))
    return root


@pytest.fixture(scope="module")
def tiny_run(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    rc = main(
        [
            "train",
            "--data",
            str(tiny_data),
            "--out",
            str(out),
            "--steps",
            "4",
            "--batch-size",
            "4",
            "--image-size",
            "16",
            "--no-progress",
        ]
    )
    assert rc == 0
    return out


def test_train_translate_round_trip(tiny_data, tiny_run, tmp_path, capsys):
    for f in (
        "config.json",
        "model.safetensors",
        "raw.safetensors",
        "training_state.pt",
        "log.csv",
    ):
        assert (tiny_run / f).is_file(), f
    out = tmp_path / "out"
    rc = main(
        [
            "translate",
            "--checkpoint",
            str(tiny_run),
            "--source",
            "synthetic_low",
            "--target",
            "real_normal",
            "--steps",
            "2",
            "--solver",
            "euler",
            "--no-progress",
            "--out",
            str(out),
            str(tiny_data / "synthetic_low" / "000.png"),
            str(tiny_data / "synthetic_low"),
        ]
    )
    assert rc == 0
    files = sorted(out.glob("*.png"))
    assert len(files) == 10  # duplicates map onto the same output name
    img = read_image(files[0])
    assert img.shape == (16, 16) and np.isfinite(img).all()


def _one_line_error(capsys, rc):
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and "error" in err[0]
    return err[0]


def test_unknown_domain_exit_2(tiny_data, tiny_run, tmp_path, capsys):
    rc = main(
        [
            "translate",
            "--checkpoint",
            str(tiny_run),
            "--source",
            "synthetic_low",
            "--target",
            "mars",
            "--out",
            str(tmp_path),
            str(tiny_data / "synthetic_low"),
        ]
    )
    assert "mars" in _one_line_error(capsys, rc)


def test_unreadable_image_exit_2(tiny_run, tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    rc = main(
        [
            "translate",
            "--checkpoint",
            str(tiny_run),
            "--source",
            "synthetic_low",
            "--target",
            "real_normal",
            "--out",
            str(tmp_path / "o"),
            str(bad),
        ]
    )
    assert "broken.png" in _one_line_error(capsys, rc)


def test_missing_checkpoint_exit_2(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    rc = main(
        [
            "translate",
            "--checkpoint",
            str(tmp_path / "nope"),
            "--source",
            "a",
            "--target",
            "b",
            "--out",
            str(tmp_path / "out"),
            str(tmp_path / "in"),
        ]
    )
    assert "nope" in _one_line_error(capsys, rc)


def test_train_missing_data_exit_2(tmp_path, capsys):
    rc = main(
        [
            "train",
            "--data",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path / "r"),
            "--steps",
            "1",
            "--no-progress",
        ]
    )
    _one_line_error(capsys, rc)


def test_env_runs(capsys):
    assert main(["env"]) == 0
    assert "backend reference" in capsys.readouterr().out


def test_translate_compile_and_skip_bad(tiny_data, tiny_run, tmp_path, capsys):
    """--mode compiled (static-shape Sampler, short last batch padded) writes what the eager
    path writes; --skip-bad reports an unreadable file and translates the rest."""
    import shutil

    src = tmp_path / "in"
    shutil.copytree(tiny_data / "synthetic_low", src)
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    common = ["translate", "--checkpoint", str(tiny_run), "--source", "synthetic_low",
              "--target", "real_normal", "--steps", "2", "--solver", "midpoint",
              "--batch-size", "4", "--no-progress", "--skip-bad"]
    assert main(common + ["--out", str(tmp_path / "plain"), str(src)]) == 0
    assert "broken.png" in capsys.readouterr().err
    assert main(common + ["--mode", "compiled", "--out", str(tmp_path / "fast"), str(src)]) == 0
    plain = sorted((tmp_path / "plain").glob("*.png"))
    fast = sorted((tmp_path / "fast").glob("*.png"))
    assert [p.name for p in plain] == [p.name for p in fast] and len(fast) == 10
    for a, b in zip(plain, fast):
        np.testing.assert_allclose(read_image(a), read_image(b), atol=1e-3)
    capsys.readouterr()
    rc = main(common + ["--mode", "compiled", "--solver", "dopri5", "--out", str(tmp_path / "x"),
                        str(src)])
    assert "fixed-step" in _one_line_error(capsys, rc)


@pytest.mark.ext
def test_backend_preference_for_a_whole_translate(tiny_data, tiny_run, tmp_path, monkeypatch):
    """MEDSHIFT_FAST_BACKEND=cpp (attention has no C++ backend: it resolves by auto) and
    =reference both translate, and agree to fp32 tolerance."""
    outs = {}
    for name in ("cpp", "reference"):
        monkeypatch.setenv("MEDSHIFT_FAST_BACKEND", name)
        rc = main(["translate", "--checkpoint", str(tiny_run), "--source", "synthetic_low",
                   "--target", "real_normal", "--steps", "2", "--solver", "heun", "--no-progress",
                   "--out", str(tmp_path / name), str(tiny_data / "synthetic_low")])
        assert rc == 0, name
        outs[name] = [read_image(p) for p in sorted((tmp_path / name).glob("*.png"))]
    assert len(outs["cpp"]) == len(outs["reference"]) == 10
    for a, b in zip(outs["cpp"], outs["reference"]):
        np.testing.assert_allclose(a, b, atol=1e-4)  # 16-bit PNGs: one count is 3e-5
    monkeypatch.setenv("MEDSHIFT_FAST_BACKEND", "cuda")  # not on this machine: one clear line
    import torch

    if not torch.cuda.is_available():
        rc = main(["translate", "--checkpoint", str(tiny_run), "--source", "synthetic_low",
                   "--target", "real_normal", "--out", str(tmp_path / "c"),
                   str(tiny_data / "synthetic_low")])
        assert rc == 2
