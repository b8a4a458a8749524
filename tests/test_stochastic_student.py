"""A stochastic (lean) student through the Translator: its noise maps come from the per-image
generators (the same seed gives byte-identical output, another seed another texture, an image's
output does not depend on its batch mates), they are drawn on the whole image and tiled with it,
and the noise scale setting reaches the network."""

from __future__ import annotations

import torch

from medshift_fast.models.lean import LeanConfig
from medshift_fast.models.student import Student, StudentConfig
from medshift_fast.run import LoadedRun
from medshift_fast.translate import Translator


def _run(noise_channels: int = 1) -> LoadedRun:
    st = Student(StudentConfig(arch="lean", pairs=((0, 1),), lean=LeanConfig(
        num_classes=2, widths=(8, 16), blocks=(1, 1), noise_channels=noise_channels).to_dict()))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in st.parameters():
            p.normal_(0, 0.1)
    return LoadedRun.from_model(st.eval(), ("a", "b"), image_size=32)


def _gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def _images(n=3, size=40, seed=5):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, size, size, generator=g) * 1.6 - 0.8)


def test_same_seed_identical_other_seed_differs():
    tr = Translator(_run(), "a", "b", tile=None)
    x = _images(1)
    a = tr.translate(x, generators=_gens(7))
    assert torch.equal(a, tr.translate(x, generators=_gens(7)))
    b = tr.translate(x, generators=_gens(8))
    assert (a - b).abs().max() > 1e-3


def test_output_does_not_depend_on_batch_mates():
    tr = Translator(_run(), "a", "b", tile=None)
    x = _images(3)
    together = tr.translate(x, generators=_gens(1, 2, 3))
    other = tr.translate(torch.stack([x[0], _images(1, seed=9)[0]]), generators=_gens(1, 4))
    alone = tr.translate(x[:1], generators=_gens(1))
    assert torch.equal(together[0], other[0])  # the same batch size: the same arithmetic
    # another batch size may take another convolution algorithm: float round-off only
    assert torch.allclose(together[0], alone[0], atol=1e-5)


def test_noise_is_drawn_on_the_whole_image_and_tiled_with_it():
    """Tiles see the whole image's noise: the tiled translation is close to the untiled one
    with the same seed, much closer than two seeds are to each other."""
    run = _run()
    x = _images(1, size=96)
    whole = Translator(run, "a", "b", tile=None).translate(x, generators=_gens(3))
    tiled_tr = Translator(run, "a", "b", tile=64, overlap=32)
    tiled = tiled_tr.translate(x, generators=_gens(3))
    assert tiled_tr.last_plan.n_tiles > 1
    seeds = (whole - Translator(run, "a", "b", tile=None).translate(x, generators=_gens(4)))
    assert (tiled - whole).abs().mean() < 0.1 * seeds.abs().mean()


def test_deterministic_lean_student_ignores_generators():
    tr = Translator(_run(noise_channels=0), "a", "b", tile=None)
    x = _images(1)
    assert torch.equal(tr.translate(x, generators=_gens(1)), tr.translate(x, generators=_gens(2)))


def test_noise_scale_setting():
    """noise_scale 0 is the deterministic member, the default is the student's own, a larger
    scale moves the output further from it; runs without a noise input refuse the setting."""
    import dataclasses

    import pytest

    from medshift_fast.errors import MedShiftError

    run = _run()
    x = _images(1)
    det = Translator(run, "a", "b", tile=None, noise_scale=0.0,
                     engine="eager").translate(x, generators=_gens(1))
    plain = run.model.translate(x, 0.6, torch.zeros(1).long(), torch.ones(1).long())
    assert torch.allclose(det, plain.clamp(-1, 1), atol=1e-6)
    tr = Translator(run, "a", "b", tile=None, engine="eager")  # fp32: compared with the net
    assert tr.settings.noise_scale == run.model.config.noise_scale == 1.0
    one = tr.translate(x, generators=_gens(1))
    two = Translator(run, "a", "b", tile=None, noise_scale=2.0,
                     engine="eager").translate(x, generators=_gens(1))
    assert (two - det).abs().mean() > (one - det).abs().mean() > 0
    run.model.config = dataclasses.replace(run.model.config, noise_scale=2.0)
    again = Translator(run, "a", "b", tile=None, engine="eager")
    assert torch.equal(again.translate(x, generators=_gens(1)), two)
    with pytest.raises(MedShiftError, match="deterministic"):
        Translator(_run(noise_channels=0), "a", "b", noise_scale=0.5)
    with pytest.raises(MedShiftError, match="noise_scale must be >= 0"):
        Translator(run, "a", "b", noise_scale=-1)


def test_a_flow_run_refuses_noise_scale():
    import pytest

    from medshift_fast.errors import MedShiftError
    from medshift_fast.models import build_model

    m = build_model("tiny", num_classes=2, model_channels=8, head_channels=8)
    with pytest.raises(MedShiftError, match="stochastic distilled student"):
        Translator(LoadedRun.from_model(m), 0, 1, noise_scale=0.5)


def test_translate_cli_reruns_byte_identical_and_seed_changes_mottle(tmp_path):
    """`medshift translate` seeds each image's noise from --seed and its relative path: a rerun
    writes the same bytes, another --seed another texture (same anatomy), --noise-scale 0 the
    deterministic member (the same for every seed)."""
    import numpy as np

    from medshift_fast.cli import main
    from medshift_fast.data import read_image, write_png16
    from medshift_fast.run import save_run

    run = _run()
    d = tmp_path / "run"
    save_run(d, {"image_size": 32}, run.model.config.to_dict(), ("a", "b"),
             run.model.state_dict(), kind="student")
    src = tmp_path / "in"
    src.mkdir()
    for k, img in enumerate(_images(2, size=48)):
        write_png16(src / f"{k}.png", np.rint((img[0].numpy() + 1) * 32767.5).astype(np.uint16))

    def go(name, *extra):
        rc = main(["translate", "--checkpoint", str(d), "--source", "a", "--target", "b",
                   "--no-progress", "--out", str(tmp_path / name), *extra, str(src)])
        assert rc == 0
        return sorted((tmp_path / name).glob("*.png"))

    a, b, c = go("a"), go("b"), go("c", "--seed", "1")
    assert all(p.read_bytes() == q.read_bytes() for p, q in zip(a, b))
    assert all(p.read_bytes() != q.read_bytes() for p, q in zip(a, c))
    assert np.abs(read_image(a[0]) - read_image(a[1])).max() > 0.05  # not one texture for all
    z0, z1 = go("z0", "--noise-scale", "0"), go("z1", "--noise-scale", "0", "--seed", "1")
    assert all(p.read_bytes() == q.read_bytes() for p, q in zip(z0, z1))


def test_export_of_a_stochastic_student(tmp_path):
    """Its deterministic member (--noise-scale 0) exports a graph of the image alone; at its
    own scale the graph takes the noise maps as a second input (issue 30) and matches the
    Translator given the same maps."""
    import pytest

    from medshift_fast.export.graphs import ExportSettings
    from medshift_fast.export.onnx_export import export_onnx
    from medshift_fast.flow.solvers import PerSampleGenerators

    ort = pytest.importorskip("onnxruntime")
    run = _run()
    x = _images(2, size=32)
    tr = Translator(run, "a", "b", engine="eager")
    export_onnx(run.model, ExportSettings.from_translator(tr, size=32), tmp_path / "n.onnx")
    sess = ort.InferenceSession(str(tmp_path / "n.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["image", "noise"]
    n = run.model.draw_noise(tuple(x.shape), PerSampleGenerators(_gens(3, 4)))
    got = sess.run(None, {"image": x.numpy(), "noise": n.numpy()})[0]
    assert abs(got - tr.translate(x, generators=_gens(3, 4)).numpy()).max() < 1e-4
    tr = Translator(run, "a", "b", noise_scale=0.0, engine="eager")
    export_onnx(run.model, ExportSettings.from_translator(tr, size=32), tmp_path / "d.onnx")
    sess = ort.InferenceSession(str(tmp_path / "d.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["image"]
    got = sess.run(None, {"image": x.numpy()})[0]
    assert abs(got - tr.translate(x).numpy()).max() < 1e-4
