"""The shipped teacher at the recipe's settings moves the images the right way (fixed seeds).

Directions that could fail, on subjects the teacher never saw (another simulator seed):
structure kept rises with tau (SSIM vs source), the dose translation removes noise rather than
adding it and lands closer to the true high-dose view than the low-dose input, and the one-step
student follows its teacher. 64-px centre windows of 128-px images keep it cheap; the networks
are fully convolutional. No timings.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medshift_fast import Translator, load_run
from medshift_fast.data import DOMAINS, FolderDataset
from medshift_fast.data.simulator import simulate
from medshift_fast.eval.image import psnr, ssim
from medshift_fast.eval.physics import noise_level

ROOT = Path(__file__).resolve().parents[2]
TEACHER = ROOT / "pretrained" / "demo128"
STUDENT = ROOT / "pretrained" / "demo128_student"


@pytest.fixture(scope="module")
def views(tmp_path_factory):
    """{domain: (N, 1, 64, 64)} paired views of 3 unseen subjects (simulator seed 7)."""
    root = simulate(tmp_path_factory.mktemp("unseen"), subjects=3, views=2, size=128, seed=7,
                    progress=False)
    out = {}
    for d in DOMAINS:
        ds = FolderDataset(root, size=128, domains=(d,))
        order = sorted(range(len(ds)), key=lambda i: ds.samples[i].view_id)  # paired views
        x = torch.stack([ds[i][0] for i in order])
        out[d] = x[..., 32:96, 32:96].contiguous()
    return out


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return load_run(TEACHER)


def test_structure_kept_rises_with_tau(teacher, views):
    x = views["synthetic_low"]
    s = [float(ssim(Translator(teacher, "synthetic_low", "real_normal", tau=t).translate(x), x))
         for t in (0.3, 0.45, 0.6)]
    assert s[0] < s[1] < s[2], s


def test_dose_translation_denoises_toward_the_high_dose_view(teacher, views):
    x, y = views["real_low"], views["real_exposure"]
    out = Translator(teacher, "real_low", "real_exposure").translate(x)
    n_in, n_out, n_tgt = (float(noise_level(v, reduction="mean")) for v in (x, out, y))
    assert n_out < 0.8 * n_in, (n_in, n_out, n_tgt)
    assert abs(n_out / n_tgt - 1.0) < abs(n_in / n_tgt - 1.0)
    assert float(psnr(out, y)) > float(psnr(x, y))


def test_student_follows_its_teacher(teacher, views):
    student = load_run(STUDENT)
    x = views["synthetic_low"]
    for tau in (0.3, 0.6):
        t = Translator(teacher, "synthetic_low", "real_normal", tau=tau).translate(x)
        s = Translator(student, "synthetic_low", "real_normal", tau=tau).translate(x)
        assert float(psnr(s, t)) > 30.0
        assert float(psnr(s, t)) > float(psnr(x, t)) + 3.0
