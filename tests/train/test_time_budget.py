"""The wall-clock budget (``--minutes``): training stops on the clock whatever a step costs.

The budget's clock is driven by the test (``train.budget._now``): every training step "takes"
10 s of it, as on a machine slowed down by another job, so nothing here sleeps or times itself.
"""

import csv

import pytest
from conftest import make_images

from medshift_fast.cli import main
from medshift_fast.errors import MedShiftError
from medshift_fast.run import load_run
from medshift_fast.train import TrainConfig, train
from medshift_fast.train import budget as budget_mod
from medshift_fast.train.flow import FlowTask

DATA = (*make_images(12), ("a", "b"))
STEP_S = 10.0  # fake seconds per optimizer step


@pytest.fixture()
def slow_steps(monkeypatch):
    """A fake clock that advances STEP_S per optimizer step (inside the step, in its data)."""
    now = [1000.0]
    monkeypatch.setattr(budget_mod, "_now", lambda: now[0])
    batch = FlowTask.batch

    def slow_batch(self, tr, m):
        now[0] += STEP_S / tr.cfg.grad_accum
        return batch(self, tr, m)

    monkeypatch.setattr(FlowTask, "batch", slow_batch)
    return now


def _cfg(out, **kw):
    base = dict(out=str(out), model_channels=16, image_size=16, steps=1000, batch_size=4,
                grad_accum=2, val_every=0, ckpt_every=100, sample_every=0, log_every=1,
                warmup_frac=0.1, ema_decay=0.9, seed=1, minutes=1.0)
    return TrainConfig(**{**base, **kw})


def _lrs(run):
    return [float(r["lr"]) for r in csv.DictReader(open(run / "log.csv"))]


def test_training_stops_within_its_budget_however_slow_the_steps(tmp_path, slow_steps, capsys):
    t0 = slow_steps[0]
    train(_cfg(tmp_path / "r"), progress=False, data=DATA)
    spent = slow_steps[0] - t0
    run = load_run(tmp_path / "r")
    steps = run.config["step"]
    # 60 s at 10 s a step: it stops after the step a next one could not follow in time
    assert 1 <= steps < 1000 and spent <= 60.0, (steps, spent)
    assert steps == 5 and "time budget of 1 min reached" in capsys.readouterr().out
    # the schedule ran on the clock: warmed up and decayed within the budget (on steps alone,
    # 5 of 1000 steps would still be in the 100-step warm-up)
    lrs = _lrs(tmp_path / "r")
    assert len(lrs) == steps and max(lrs) > 0.9e-3 and lrs[-1] < 0.5 * max(lrs)


def test_a_spent_budget_carries_over_a_resume(tmp_path, slow_steps):
    t0 = slow_steps[0]
    train(_cfg(tmp_path / "r"), progress=False, data=DATA)
    first = load_run(tmp_path / "r").config["step"]
    # the same budget again: only what is left of it (10 s: one step) is used
    train(_cfg(tmp_path / "r", resume="last"), progress=False, data=DATA)
    second = load_run(tmp_path / "r").config["step"]
    assert first <= second <= first + 1 and slow_steps[0] - t0 <= 60.0
    train(_cfg(tmp_path / "r", resume="last"), progress=False, data=DATA)  # spent: no step
    assert load_run(tmp_path / "r").config["step"] == second
    # a larger budget on resume (minutes may change): the minute added gives ~6 more steps
    train(_cfg(tmp_path / "r", resume="last", minutes=2.0), progress=False, data=DATA)
    assert second < load_run(tmp_path / "r").config["step"] <= second + 6
    assert slow_steps[0] - t0 <= 120.0


def test_without_a_budget_the_steps_decide(tmp_path, slow_steps):
    train(_cfg(tmp_path / "r", minutes=None, steps=8), progress=False, data=DATA)
    assert load_run(tmp_path / "r").config["step"] == 8  # 80 fake seconds: no clock involved


@pytest.mark.parametrize("bad", ["0", "-1", "nan", "inf"])
def test_a_bad_budget_is_refused(tmp_path, bad, capsys):
    rc = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--minutes", bad,
               "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "minutes" in err[0]


def test_the_demo_trains_on_the_wall_clock(monkeypatch, tmp_path):
    """The demo's own run gets the budget itself, not a step count calibrated beforehand."""
    import medshift_fast.demo.pipeline as demo
    import medshift_fast.train as train_mod

    seen = {}

    def fake_train(cfg, progress=True):
        seen["cfg"] = cfg
        raise MedShiftError("stop here")

    monkeypatch.setattr(demo, "calibrate", lambda *a, **k: (1, 100.0))  # "slow" steps
    monkeypatch.setattr(train_mod, "train", fake_train)
    cfg = demo.DemoConfig(out=str(tmp_path), train_minutes=2.5, max_steps=1500)
    with pytest.raises(MedShiftError, match="stop here"):
        demo._train_own(cfg, tmp_path / "data", tmp_path / "run", lambda m: None, {}, False)
    assert seen["cfg"].minutes == 2.5 and seen["cfg"].steps == 1500


def test_budget_state_round_trip():
    clock = budget_mod.WallClock(1.0)
    st = clock.state()
    other = budget_mod.WallClock(1.0)
    other.load({**st, "elapsed_s": 59.0, "loop_s": 30.0})
    assert other.elapsed() >= 59.0 and other.loop_seconds() == 30.0
    assert budget_mod.WallClock(None).late(budget_mod.WallClock.now()) is False
    with pytest.raises(MedShiftError, match="minutes"):
        TrainConfig(minutes=0.0)
