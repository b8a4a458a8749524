"""The lean student network (models/lean.py) and its place in the Student: the receptive field it
states is the gradient's support, configs are validated, old configs load as U-Net students, a
lean student round-trips through save/load, the noise input changes only what it should, and the
ONNX export matches eager."""

from __future__ import annotations

import pytest
import torch

from medshift_fast.errors import MedShiftError
from medshift_fast.models.lean import LeanConfig, LeanNet, halo
from medshift_fast.models.student import Student, StudentConfig
from medshift_fast.run import load_run, save_run

CONFIGS = [LeanConfig(), LeanConfig(unshuffle=4, widths=(16,), blocks=(2,)),
           LeanConfig(widths=(8, 16, 16), blocks=(1, 0, 1), kernel=5, block="dw",
                      noise_channels=2)]


def _randomise(m: torch.nn.Module, std: float = 0.1) -> None:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, std)


@pytest.mark.parametrize("cfg", CONFIGS, ids=["default", "r4", "dw3lvl"])
def test_halo_is_the_gradient_support(cfg):
    """No input pixel farther than halo(cfg) changes an output pixel, and one at that distance
    does (the bound is tight) -- for both the image and the noise input."""
    net = LeanNet(cfg)
    _randomise(net)
    s, worst = 2 * halo(cfg) + 4 * cfg.down_factor, 0
    s -= s % cfg.down_factor
    for py, px in [(s // 2, s // 2), (s // 2 + 1, s // 2 + 3), (s // 2 - 2, s // 2 - 1)]:
        x = torch.randn(1, 1, s, s, requires_grad=True)
        n = torch.randn(1, cfg.noise_channels, s, s, requires_grad=True)
        y = net(x, torch.tensor([0.5]), torch.tensor([0]), torch.tensor([3]),
                n if cfg.noise_channels else None)
        y[0, 0, py, px].backward()
        g = x.grad.abs()[0, 0] + (n.grad.abs().sum((0, 1)) if cfg.noise_channels else 0)
        ys, xs = torch.nonzero(g > 0, as_tuple=True)
        worst = max(worst, int((ys - py).abs().max()), int((xs - px).abs().max()))
    assert worst == halo(cfg) == net.halo


def test_lean_config_validation():
    with pytest.raises(MedShiftError, match="kernel must be odd"):
        LeanConfig(kernel=4)
    with pytest.raises(MedShiftError, match="one count >= 0 per level"):
        LeanConfig(widths=(8, 16), blocks=(1,))
    with pytest.raises(MedShiftError, match="block must be one of"):
        LeanConfig(block="attention")
    with pytest.raises(MedShiftError, match="unknown field"):
        LeanConfig.from_dict({"widths": [8], "blocks": [1], "depth": 3})
    assert LeanConfig.from_dict(LeanConfig().to_dict()) == LeanConfig()
    with pytest.raises(MedShiftError, match="divisible by 4"):
        LeanNet(LeanConfig())(torch.zeros(1, 1, 18, 18), torch.zeros(1), torch.zeros(1).long(),
                              torch.zeros(1).long())


def test_student_config_validation_and_old_configs():
    with pytest.raises(MedShiftError, match="unknown student arch"):
        StudentConfig(arch="resnet")
    with pytest.raises(MedShiftError, match="method must be oneshot"):
        StudentConfig(arch="lean", method="meanflow")
    with pytest.raises(MedShiftError, match="noise scale"):
        StudentConfig(arch="lean", noise_scale=-1.0)
    with pytest.raises(MedShiftError, match="needs its U-Net config"):
        StudentConfig()
    with pytest.raises(MedShiftError, match="unknown field"):
        StudentConfig(arch="lean", lean={"width": 3})
    # a config written before the arch existed is a U-Net student
    old = {"unet": {"model_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
                    "attention_ds": [], "mid_attention": False, "head_channels": 8,
                    "num_classes": 2},
           "method": "oneshot", "pairs": [[0, 1]], "tau_min": 0.3, "tau_max": 0.6,
           "teacher": {}}
    c = StudentConfig.from_dict(old)
    assert c.arch == "unet" and not Student(c).stochastic
    lean = StudentConfig(arch="lean", lean={"num_classes": 2, "widths": [8, 16]})
    assert StudentConfig.from_dict(lean.to_dict()) == lean


def _lean_student(noise_channels=1, num_classes=2) -> Student:
    st = Student(StudentConfig(arch="lean", pairs=((0, 1),), lean=LeanConfig(
        num_classes=num_classes, widths=(8, 16), blocks=(1, 1),
        noise_channels=noise_channels).to_dict()))
    _randomise(st, 0.1)
    return st.eval()


def test_lean_student_round_trips_through_save_and_load(tmp_path):
    st = _lean_student()
    save_run(tmp_path, {"image_size": 16}, st.config.to_dict(), ("a", "b"), st.state_dict(),
             kind="student")
    run = load_run(tmp_path)
    assert run.model.config == st.config and run.model.stochastic
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    n = st.draw_noise(x.shape, torch.Generator().manual_seed(0))
    s, t = torch.zeros(2).long(), torch.ones(2).long()
    assert torch.equal(run.model.translate(x, 0.5, s, t, n), st.translate(x, 0.5, s, t, n))


def test_noise_input_and_scale():
    """Same noise -> identical output; other noise -> another output; scale 0 and no noise are
    the deterministic member; a deterministic student ignores noise."""
    st = _lean_student()
    x = torch.rand(1, 1, 32, 32) * 2 - 1
    s, t = torch.zeros(1).long(), torch.ones(1).long()
    n1 = st.draw_noise(x.shape, torch.Generator().manual_seed(1))
    n2 = st.draw_noise(x.shape, torch.Generator().manual_seed(2))
    a, b = st.translate(x, 0.5, s, t, n1), st.translate(x, 0.5, s, t, n1.clone())
    assert torch.equal(a, b)
    assert not torch.allclose(a, st.translate(x, 0.5, s, t, n2))
    det = st.translate(x, 0.5, s, t)
    assert torch.equal(st.translate(x, 0.5, s, t, n1, noise_scale=0.0), det)
    assert not torch.allclose(a, det)
    d = _lean_student(noise_channels=0)
    assert d.draw_noise(x.shape) is None
    assert torch.equal(d.translate(x, 0.5, s, t, n1), d.translate(x, 0.5, s, t))


def test_lean_onnx_export_matches_eager(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    st = _lean_student()

    class Net(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x, noise):
            b = x.shape[0]
            return self.m.oneshot(x, torch.full((b,), 0.45), torch.zeros(b, dtype=torch.long),
                                  torch.ones(b, dtype=torch.long), noise)

    mod = Net(st).eval()
    x = torch.rand(2, 1, 32, 48) * 2 - 1
    n = torch.randn(2, 1, 32, 48)
    path = tmp_path / "lean.onnx"
    torch.onnx.export(mod, (x, n), str(path), input_names=["image", "noise"],
                      output_names=["translated"], dynamo=False, opset_version=17)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"image": x.numpy(), "noise": n.numpy()})[0]
    with torch.no_grad():
        want = mod(x, n).numpy()
    assert abs(got - want).max() < 1e-4
