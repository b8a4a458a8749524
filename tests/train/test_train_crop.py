"""Random-crop training (TrainConfig.crop): windows, rank sharding, exact resume, checks."""

import os
import signal

import pytest
import torch
from conftest import make_images
from safetensors.torch import load_file

from medshift_fast.errors import MedShiftError
from medshift_fast.train import TrainConfig, TrainingInterrupted, train
from medshift_fast.train.data import random_crop
from medshift_fast.train.distributed import DistInfo
from medshift_fast.train.flow import flow_trainer as Trainer

DATA = (*make_images(12), ("a", "b"))


def _cfg(out, **kw):
    base = dict(out=str(out), model_channels=16, image_size=16, crop=8, steps=5, batch_size=4,
                val_every=0, ckpt_every=2, sample_every=0, log_every=1, ema_decay=0.9, seed=3)
    return TrainConfig(**{**base, **kw})


def test_random_crop_windows_and_rank_slices():
    x = torch.arange(4 * 2 * 6 * 6, dtype=torch.float32).reshape(4, 2, 6, 6)
    g = torch.Generator().manual_seed(0)
    c = random_crop(x, 3, g, DistInfo())
    assert c.shape == (4, 2, 3, 3)
    for i in range(4):  # every crop is a contiguous window of its own image, all channels
        hits = [(r, q) for r in range(4) for q in range(4)
                if torch.equal(x[i, :, r:r + 3, q:q + 3], c[i])]
        assert len(hits) == 1
    # two ranks with half the batch each draw the same global windows as one process
    parts = [random_crop(x[2 * r:2 * r + 2], 3, torch.Generator().manual_seed(0),
                         DistInfo(rank=r, world=2)) for r in range(2)]
    assert torch.equal(torch.cat(parts), random_crop(x, 3, torch.Generator().manual_seed(0),
                                                     DistInfo()))
    with pytest.raises(MedShiftError, match="larger"):
        random_crop(x, 7, g, DistInfo())


def test_crop_training_trains_on_windows_and_resumes_exactly(tmp_path):
    seen = []
    tr = Trainer(_cfg(tmp_path / "probe"), data=DATA)
    orig = tr.fwd
    tr.fwd = lambda x, t, y: (seen.append(tuple(x.shape)), orig(x, t, y))[1]
    tr.train_step()  # the task's loss runs through tr.fwd
    assert seen == [(4, 1, 8, 8)]
    full, part = [], []
    train(_cfg(tmp_path / "a"), progress=False, data=DATA,
          on_step=lambda tr, m: full.append(m["loss"]))

    def interrupt(tr, m):
        part.append(m["loss"])
        if tr.step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted):
        train(_cfg(tmp_path / "b"), progress=False, data=DATA, on_step=interrupt)
    train(_cfg(tmp_path / "b", resume="last"), progress=False, data=DATA,
          on_step=lambda tr, m: part.append(m["loss"]))
    assert part == full and len(set(full)) == 5
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" /
                                                                        "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_crop_checks(tmp_path):
    with pytest.raises(MedShiftError, match="crop"):
        TrainConfig(crop=4)
    with pytest.raises(MedShiftError, match="crop"):  # larger than the images
        Trainer(_cfg(tmp_path, crop=32), data=DATA)
    with pytest.raises(MedShiftError, match="divisible"):  # not a multiple of the down factor
        Trainer(_cfg(tmp_path, crop=10), data=DATA)
