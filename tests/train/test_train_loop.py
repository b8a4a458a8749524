"""The training loop: exact resume, checkpoints, non-finite guard, incompatible resume, sampling."""

import os
import signal

import pytest
import torch
from conftest import make_images
from safetensors.torch import load_file

from medshift_fast.cli import main
from medshift_fast.errors import MedShiftError
from medshift_fast.run import load_run
from medshift_fast.train import TrainConfig, TrainingInterrupted, train
from medshift_fast.train.data import IndexStream
from medshift_fast.train.distributed import DistInfo
from medshift_fast.train.flow import flow_trainer as Trainer

DATA = (*make_images(12), ("a", "b"))


def _cfg(out, **kw):
    base = dict(out=str(out), model_channels=16, image_size=16, steps=6, batch_size=4,
                grad_accum=2, val_every=2, ckpt_every=2, keep_ckpts=1, sample_every=3,
                sample_steps=2, sample_images=2, log_every=1, warmup_frac=0.3, ema_decay=0.9,
                seed=3)
    return TrainConfig(**{**base, **kw})


def test_exact_resume_after_sigint(tmp_path):
    """Interrupted at step 3 by SIGINT, then --resume: same loss sequence and EMA, bit for bit."""
    full, part = [], []
    train(_cfg(tmp_path / "a"), progress=False, data=DATA,
          on_step=lambda tr, m: full.append(m["loss"]))

    def interrupt(tr, m):
        part.append(m["loss"])
        if tr.step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted):
        train(_cfg(tmp_path / "b"), progress=False, data=DATA, on_step=interrupt)
    assert len(part) == 3  # stopped right after the step that saw the signal
    assert load_run(tmp_path / "b").config["step"] == 3
    train(_cfg(tmp_path / "b", resume="last"), progress=False, data=DATA,
          on_step=lambda tr, m: part.append(m["loss"]))
    assert part == full and len(set(full)) == 6
    for name in ("model.safetensors", "raw.safetensors"):
        a, b = load_file(tmp_path / "a" / name), load_file(tmp_path / "b" / name)
        assert all(torch.equal(a[k], b[k]) for k in a)
    log = (tmp_path / "b" / "log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in log[1:]] == ["1", "2", "3", "4", "5", "6"]
    assert log[2].split(",")[5] != ""  # val loss at step 2
    # checkpoints: last + retention 1 of every-2-steps + best + sample grids
    assert [p.name for p in (tmp_path / "b" / "checkpoints").iterdir()] == ["step_0000004"]
    best = load_run(tmp_path / "b" / "best")
    assert best.config["best_val"] is not None and best.config["step"] in (2, 4, 6)
    assert sorted(p.name for p in (tmp_path / "b" / "samples").iterdir()) == [
        "step_0000003.png", "step_0000006.png"]


def test_resume_from_step_checkpoint_and_refusal(tmp_path, tiny_folder, capsys):
    args = ["train", "--data", str(tiny_folder), "--out", str(tmp_path), "--steps", "2",
            "--batch-size", "4", "--image-size", "16", "--model-channels", "16", "--ckpt-every",
            "1", "--val-every", "0", "--sample-every", "0", "--log-every", "1", "--no-progress"]
    assert main(args) == 0
    assert (tmp_path / "checkpoints" / "step_0000001").is_dir()
    capsys.readouterr()
    rc = main(["train", "--out", str(tmp_path), "--resume", "--steps", "3", "--batch-size", "8",
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "batch_size" in err and len(err.strip().splitlines()) == 1
    rc = main(["train", "--out", str(tmp_path), "--resume", "--model-channels", "32",
               "--no-progress"])
    assert rc == 2 and "model_channels" in capsys.readouterr().err
    # a flag that does not change the math is accepted; the saved config fills in the rest
    assert main(["train", "--out", str(tmp_path), "--resume", "--steps", "3", "--no-progress"]) == 0
    assert load_run(tmp_path).config["step"] == 3
    rows = (tmp_path / "log.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["1", "2", "3"]
    # resume from an older step checkpoint folder: the log is rewound to its step
    assert main(["train", "--out", str(tmp_path), "--resume",
                 str(tmp_path / "checkpoints" / "step_0000001"), "--steps", "3",
                 "--no-progress"]) == 0
    rows = (tmp_path / "log.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["1", "2", "3"]


def test_nonfinite_guard_skips_counts_and_stops(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, grad_accum=1, val_every=0, sample_every=0, max_nonfinite=3)
    tr = Trainer(cfg, data=DATA)
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    real_fwd = tr.fwd
    tr.fwd = lambda x, t, y: real_fwd(x, t, y) * float("nan")
    m = tr.train_step()
    assert m["skipped"] == 1 and tr.step == 0 and tr.n_skipped == 1 and tr.n_nonfinite == 1
    assert all(torch.equal(before[k], v) for k, v in tr.model.state_dict().items())
    tr.fwd = real_fwd
    assert tr.train_step()["skipped"] == 0 and tr.step == 1 and tr.n_nonfinite == 0
    assert tr.n_skipped == 1

    from medshift_fast.models.unet import UNet

    real = UNet.forward
    monkeypatch.setattr(UNet, "forward", lambda self, x, t, y: real(self, x, t, y) * float("inf"))
    with pytest.raises(MedShiftError, match="3 non-finite"):
        train(cfg, progress=False, data=DATA)
    monkeypatch.undo()
    assert load_run(tmp_path).config["n_skipped"] == 3


def test_atomic_checkpoint_survives_crash_mid_write(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, val_every=0, sample_every=0)
    tr = Trainer(cfg, data=DATA)
    tr.train_step()
    tr.save()
    tr.save_dir(tmp_path / "best")
    good = load_file(tmp_path / "model.safetensors")
    tr.train_step()
    import safetensors.torch

    def crash(sd, path, metadata=None):
        with open(path, "wb") as fh:
            fh.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    for save in (tr.save, lambda: tr.save_dir(tmp_path / "best")):
        with pytest.raises(OSError):
            save()
    monkeypatch.undo()
    for run_dir in (tmp_path, tmp_path / "best"):
        run = load_run(run_dir)
        assert run.config["step"] == 1
        assert all(torch.equal(good[k], v) for k, v in run.model.state_dict().items())
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]
    tr2 = Trainer(cfg, data=DATA)
    tr2.load_state(tmp_path)
    assert tr2.step == 1 and tr2.micro == 2


def test_index_stream_shards_epochs_and_balance():
    stream = IndexStream(10, 4, seed=1)
    epoch = torch.cat([stream.global_batch(m) for m in range(5)])  # 20 = two epochs
    assert sorted(epoch[:10].tolist()) == list(range(10))
    assert sorted(epoch[10:].tolist()) == list(range(10))
    ranks = [stream.rank_batch(3, DistInfo(rank=r, world=2)) for r in range(2)]
    assert torch.equal(torch.cat(ranks), stream.global_batch(3))
    labels = torch.tensor([0] * 90 + [1] * 10)
    bal = IndexStream(100, 500, seed=0, labels=labels, balanced=True).global_batch(0)
    frac = (labels[bal] == 1).float().mean().item()
    assert 0.4 < frac < 0.6  # uniform sampling would give 0.1


def test_config_checks():
    with pytest.raises(MedShiftError, match="divisible by grad_accum"):
        TrainConfig(batch_size=6, grad_accum=4)
    with pytest.raises(MedShiftError, match="either latent"):
        TrainConfig(latent="a", latent_diffusers="b")
    with pytest.raises(MedShiftError, match="divisible by the 4"):
        Trainer(_cfg("x", batch_size=6, grad_accum=1), data=DATA,
                dist_info=DistInfo(world=4))


def test_stream_mode_with_workers_sees_the_memory_order(tmp_path, tiny_folder):
    """DataLoader workers (stream mode) train on exactly the batches of the in-memory path."""
    losses = {}
    for mode, workers in (("memory", 0), ("stream", 1)):
        cfg = _cfg(tmp_path / mode, data=str(tiny_folder), steps=2, val_every=0, sample_every=0,
                   data_mode=mode, num_workers=workers, balanced=True)
        losses[mode] = []
        train(cfg, progress=False, on_step=lambda tr, m, k=mode: losses[k].append(m["loss"]))
    assert losses["memory"] == losses["stream"]


def test_tensorboard_flag(tmp_path):
    import importlib.util

    cfg = _cfg(tmp_path, steps=1, val_every=0, sample_every=0, tensorboard=True)
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(MedShiftError, match="pip install tensorboard"):
            train(cfg, progress=False, data=DATA)
    else:
        train(cfg, progress=False, data=DATA)
        assert any((tmp_path / "tb").iterdir())


def _copy_with_corrupt_file(src, dst, split):
    """A copy of the dataset at ``src`` with one file of ``split`` truncated; returns its path."""
    import shutil

    from medshift_fast.data.dataset import hash_split

    shutil.copytree(src, dst)
    bad = next(p for p in sorted(dst.rglob("*.png"))
               if hash_split(p.relative_to(dst).as_posix()) == split)
    bad.write_bytes(bad.read_bytes()[:40])
    return bad


def test_bad_val_file_is_an_error_not_a_silent_no_validation(tmp_path, tiny_folder, capsys):
    from medshift_fast.train.data import open_split

    data = tmp_path / "data"
    bad = _copy_with_corrupt_file(tiny_folder, data, "val")
    cfg = _cfg(tmp_path / "run", data=str(data))
    assert open_split(cfg, "train") is not None  # the bad file is not in the train split
    with pytest.raises(MedShiftError, match=bad.name):
        open_split(cfg, "val")
    assert open_split(cfg.replace(skip_bad=True), "val") is not None
    assert open_split(cfg, "no_such_split") is None  # a split that does not exist: no val set
    # the CLI: --skip-bad trains past the file, --domain-map renames the domains
    args = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--steps", "1",
            "--batch-size", "4", "--image-size", "16", "--model-channels", "16",
            "--val-every", "1", "--sample-every", "0", "--no-progress"]
    assert main(args) == 2
    assert bad.name in capsys.readouterr().err
    assert main(args + ["--skip-bad", "--domain-map",
                        "synthetic_low=sim,real_normal=real", "--resize", "pad"]) == 0
    run = load_run(tmp_path / "run")
    assert set(run.domains) == {"sim", "real"}
    assert run.train["resize"] == "pad" and run.train["skip_bad"]


def test_every_split_is_checked_before_the_first_step(tmp_path, tiny_folder, capsys):
    """A corrupt file that hashes into the TEST split stops training before any step."""
    data = tmp_path / "data"
    bad = _copy_with_corrupt_file(tiny_folder, data, "test")
    args = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--steps", "1",
            "--batch-size", "4", "--image-size", "16", "--model-channels", "16",
            "--val-every", "0", "--sample-every", "0", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and bad.name in err[0]
    assert not (tmp_path / "run" / "config.json").exists()
    assert main(args + ["--skip-bad"]) == 0  # logged and left out


def test_an_existing_run_folder_is_not_overwritten(tmp_path, tiny_folder, capsys):
    args = ["train", "--data", str(tiny_folder), "--out", str(tmp_path), "--steps", "2",
            "--batch-size", "4", "--image-size", "16", "--model-channels", "16",
            "--ckpt-every", "1", "--val-every", "0", "--sample-every", "0", "--no-progress"]
    assert main(args) == 0
    before = (tmp_path / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "model.safetensors").read_bytes() == before
    again = ["train", "--data", str(tiny_folder), "--out", str(tmp_path), "--steps", "1",
             "--batch-size", "4", "--image-size", "16", "--model-channels", "16",
             "--ckpt-every", "5", "--val-every", "0", "--sample-every", "0", "--no-progress",
             "--overwrite"]
    assert main(again) == 0
    assert load_run(tmp_path).config["step"] == 1
    assert not (tmp_path / "checkpoints" / "step_0000001").exists()  # the old run's files went
