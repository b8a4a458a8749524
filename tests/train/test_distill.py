"""medshift distill: the student learns the teacher's translation; it round-trips, exports,
resumes exactly, and refuses what it did not learn."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from medshift_fast.cli import main
from medshift_fast.errors import MedShiftError
from medshift_fast.models import build_model
from medshift_fast.models.student import Student, StudentConfig
from medshift_fast.run import load_run, save_run
from medshift_fast.train import TrainConfig, TrainingInterrupted
from medshift_fast.train.distill import DistillConfig, distill
from medshift_fast.translate import Translator

PAIR = "synthetic_low:real_normal"


@pytest.fixture(scope="module")
def teacher(tiny_folder, tmp_path_factory):
    """A teacher with random (non-zero) output layers over the tiny folder's two domains."""
    d = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(0)
    m = build_model("tiny", num_classes=2, model_channels=16, head_channels=16)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() > 1 and p.abs().sum() == 0:
                p.normal_(0, 0.05)
    save_run(d, TrainConfig(data=str(tiny_folder), image_size=16), m.config,
             ("synthetic_low", "real_normal"), m.state_dict())
    return d


def _cfg(teacher, out, **kw):
    base = dict(teacher=str(teacher), out=str(out), pairs=PAIR, steps=30, batch_size=4,
                lr=2e-3, warmup_frac=0.0, solver_steps=2, val_every=10, val_images=2,
                log_every=1, ckpt_every=10, seed=1, ema_decay=0.5)
    return DistillConfig(**{**base, **kw})


def _held_out(n=3, seed=9):
    """Unseen images of the training images' kind (smooth patterns, see conftest)."""
    from conftest import make_images

    return make_images(n, seed=seed)[0]


def test_oneshot_student_learns_the_teachers_translation(teacher, tmp_path):
    out = distill(_cfg(teacher, tmp_path / "st", steps=60, lr=5e-4, taus_per_image=4),
                  progress=False)
    st, t = load_run(out), load_run(teacher)
    assert st.kind == "student" and st.model.calls == 1
    x = _held_out()
    kw = dict(tau=0.45)
    y_t = Translator(t, "synthetic_low", "real_normal", steps=2, **kw).translate(x)
    y_s = Translator(st, "synthetic_low", "real_normal", **kw).translate(x)
    ident = float(((x - y_t) ** 2).mean())
    err = float(((y_s - y_t) ** 2).mean())
    assert ident > 1e-3  # the teacher's translation is not the identity
    assert err < 0.75 * ident, (err, ident)  # the student (it starts as the identity) learned
    rows = (out / "log.csv").read_text().splitlines()[1:]
    assert any(r.split(",")[5] for r in rows)  # validated against the teacher
    assert (out / "teacher_cache.safetensors").is_file()
    # the student's settings are its teacher's: they need not be repeated
    assert Translator(st, "synthetic_low", "real_normal").settings.steps == 2


def test_distillation_resumes_exactly(teacher, tmp_path):
    full, part = [], []
    distill_kw = dict(steps=6, val_every=0)
    from medshift_fast.train.distill import DistillTask
    from medshift_fast.train.trainer import run_training

    run_training(_cfg(teacher, tmp_path / "a", **distill_kw), DistillTask(
        _cfg(teacher, tmp_path / "a", **distill_kw)), False, lambda tr, m: full.append(m["loss"]))

    def interrupt(tr, m):
        part.append(m["loss"])
        if tr.step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    cfg_b = _cfg(teacher, tmp_path / "b", **distill_kw)
    with pytest.raises(TrainingInterrupted):
        run_training(cfg_b, DistillTask(cfg_b), False, interrupt)
    cfg_r = _cfg(teacher, tmp_path / "b", resume="last", **distill_kw)
    run_training(cfg_r, DistillTask(cfg_r), False, lambda tr, m: part.append(m["loss"]))
    assert part == full and len(full) == 6


def test_refused_requests_exit_2_with_one_line(teacher, tmp_path, tiny_folder, capsys):
    out = distill(_cfg(teacher, tmp_path / "st", steps=2, val_every=0), progress=False)
    capsys.readouterr()
    img = next((tiny_folder / "synthetic_low").glob("*.png"))
    base = ["translate", "--checkpoint", str(out), "--out", str(tmp_path / "o"),
            "--no-progress", str(img)]
    for extra, needle in ((["--source", "real_normal", "--target", "synthetic_low"],
                           "never learned"),
                          (["--source", "synthetic_low", "--target", "real_normal", "--tau",
                            "0.9"], "0.3, 0.6"),
                          (["--source", "synthetic_low", "--target", "real_normal", "--solver",
                            "heun"], "solver")):
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
    assert main(base + ["--source", "synthetic_low", "--target", "real_normal"]) == 0


def test_student_export_equals_eager(teacher, tmp_path):
    from medshift_fast.deploy import load_engine
    from medshift_fast.export import export_engine

    pytest.importorskip("onnxruntime")
    t = load_run(teacher)
    torch.manual_seed(3)
    st = Student(StudentConfig(unet=t.model.config.to_dict(), pairs=((0, 1),),
                               teacher={"guidance_encode": 2.0, "guidance_decode": 2.0,
                                        "steps": 2, "solver": "euler"}))
    st.init_from_teacher(t.model)
    with torch.no_grad():  # a student that is not the identity
        for p in st.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_run(tmp_path / "st", {"image_size": 16}, st.config.to_dict(), t.domains,
             st.state_dict(), kind="student")
    run = load_run(tmp_path / "st")
    tr = Translator(run, "synthetic_low", "real_normal", tau=0.5)
    rep = export_engine(tr, "onnx", tmp_path / "st.onnx", size=16, batch=2)
    assert rep.ok and rep.info["unet_calls"] == 1
    x = _held_out(3)
    eng = load_engine(tmp_path / "st.onnx")
    assert (eng(x) - tr.translate(x)).abs().max() <= 1e-4
    assert (tr.translate(x) - x).abs().max() > 1e-2


def test_meanflow_student_starts_as_one_euler_step_of_the_teacher(teacher):
    """At initialisation u(z, s, e) = v(z, s): two jumps = one Euler step per leg (w = 1)."""
    t = load_run(teacher)
    st = Student(StudentConfig(unet=t.model.config.to_dict(), method="meanflow",
                               pairs=((0, 1),), teacher={"guidance_encode": 1.0,
                                                         "guidance_decode": 1.0, "steps": 1,
                                                         "solver": "euler"}))
    st.init_from_teacher(t.model)
    x = _held_out(2)
    from medshift_fast.flow import translate

    want = translate(t.model, x, 0, 1, tau=0.4, guidance_encode=1.0, guidance_decode=1.0,
                     steps=1, solver="euler")
    got = st.translate(x, 0.4, torch.zeros(2, dtype=torch.long), torch.ones(2, dtype=torch.long))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_meanflow_distillation_runs(teacher, tmp_path):
    out = distill(_cfg(teacher, tmp_path / "mf", method="meanflow", steps=3, val_every=3),
                  progress=False)
    run = load_run(out)
    assert run.model.calls == 2
    y = Translator(run, "synthetic_low", "real_normal", tau=0.5).translate(_held_out(2))
    assert y.shape == (2, 1, 16, 16) and torch.isfinite(y).all()


def test_config_checks(teacher):
    with pytest.raises(MedShiftError, match="tau_min"):
        DistillConfig(teacher="x", tau_min=0.7, tau_max=0.2)
    with pytest.raises(MedShiftError, match="teacher"):
        DistillConfig()
    with pytest.raises(MedShiftError, match="mars"):
        distill(DistillConfig(teacher=str(teacher), out="/tmp/never", pairs="mars:real_normal"),
                progress=False)
