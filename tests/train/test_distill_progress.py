"""`medshift distill` talks from its first second and its teacher pass survives SIGINT (issue 32):
a plan line before the teacher pass, a required --pairs for a teacher of more than two domains
(refused before any work), and a child process interrupted in the teacher pass resumes it to the
same cache an uninterrupted run computes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from utils import tiny_run

from medshift_fast.cli import main
from medshift_fast.fileio import load_safetensors
from medshift_fast.models import build_model
from medshift_fast.run import save_run
from medshift_fast.train import TrainConfig

REPO = Path(__file__).resolve().parents[2]
PAIR = "synthetic_low:real_normal"


@pytest.fixture(scope="module")
def teacher(tiny_folder, tmp_path_factory):
    """A two-domain teacher with random (non-zero) output layers over the tiny folder."""
    return tiny_run(tmp_path_factory.mktemp("teacher"), ("synthetic_low", "real_normal"), 16,
                    data=str(tiny_folder), std=0.05)


def _argv(teacher, out, *extra):
    return ["distill", "--teacher", str(teacher), "--out", str(out), "--pairs", PAIR,
            "--steps", "1", "--batch-size", "2", "--val-every", "0", "--solver-steps", "4",
            "--taus-per-image", "4", "--val-images", "2", "--no-progress", *extra]


def test_the_plan_comes_before_the_teacher_pass(teacher, tmp_path, capsys):
    assert main(_argv(teacher, tmp_path / "st", "--taus-per-image", "1")) == 0
    err = capsys.readouterr().err.splitlines()
    lines = [e for e in err if e.startswith("medshift distill:")]
    assert "loading the teacher" in lines[0]
    plan = next(e for e in lines if "plan:" in e)
    assert "synthetic_low->real_normal" in plan and "tau in [0.3, 0.6]" in plan
    m = re.search(r"teacher pass: (\d+) translations \((\d+) for the cache, (\d+) for "
                  r"validation\)", plan)
    assert m and int(m[1]) == int(m[2]) + int(m[3]) and int(m[2]) >= 1, plan
    assert int(m[3]) == 3 * 2  # tau_min, mid, tau_max x 2 held-out images (--val-images)
    assert "12 network calls each" in plan  # 4 euler steps per leg: 4 unguided + 2 x 4 guided
    assert any("s per image; teacher pass ~" in e for e in lines)
    assert any("teacher pass done" in e for e in lines)
    assert not (tmp_path / "st" / "teacher_cache.partial.safetensors").exists()


def test_pairs_are_required_for_more_than_two_domains(tiny_folder, tmp_path, capsys):
    from medshift_fast.data import DOMAINS

    d = tmp_path / "t5"
    m = build_model("tiny", num_classes=5, model_channels=16, head_channels=16)
    save_run(d, TrainConfig(data=str(tiny_folder), image_size=16), m.config, DOMAINS,
             m.state_dict())
    rc = main(["distill", "--teacher", str(d), "--out", str(tmp_path / "st"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "pass --pairs SOURCE:TARGET" in err[0] and "20 ordered pairs" in err[0], err[0]
    assert not (tmp_path / "st").exists()  # refused before any work


def _cache(out: Path) -> dict[str, torch.Tensor]:
    return load_safetensors(out / "teacher_cache.safetensors", "teacher cache")[0]


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_sigint_in_the_teacher_pass_then_resume(teacher, tmp_path):
    """A child process interrupted in the teacher pass saves what it did; --resume continues
    from there to the cache an uninterrupted run computes, bit for bit."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "medshift_fast", *_argv(teacher, tmp_path / "cut")]
    partial = tmp_path / "cut" / "teacher_cache.partial.safetensors"
    # SIGINT at its default in the child: a suite started in the background (`make test &`)
    # passes SIG_IGN down, and Python then never raises KeyboardInterrupt
    child = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, preexec_fn=_default_sigint)
    t0 = time.monotonic()
    while not partial.exists() and child.poll() is None and time.monotonic() - t0 < 300:
        time.sleep(0.05)  # saved after the first translation
    assert child.poll() is None, child.communicate()
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=300)
    assert child.returncode == 130, err
    line = next(e for e in err.splitlines() if "interrupted" in e)
    assert "in the teacher pass after" in line and "--resume" in line, line
    done = int(line.split("after ")[1].split(" of ")[0])
    total = int(line.split(" of ")[1].split()[0])
    assert 1 <= done < total and partial.exists()
    assert not (tmp_path / "cut" / "teacher_cache.safetensors").exists()

    res = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"continuing after {done} done by an interrupted run" in res.stderr
    assert not partial.exists()
    assert main(_argv(teacher, tmp_path / "whole")) == 0
    a, b = _cache(tmp_path / "cut"), _cache(tmp_path / "whole")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
