import pytest
import torch

from medshift_fast.errors import MedShiftError
from medshift_fast.models import EMA, PRESETS, build_model, count_parameters, preset_config


def test_presets_sizes():
    tiny = count_parameters(build_model("tiny"))
    small4 = count_parameters(build_model("small", in_channels=4))
    assert 0.7e6 < tiny < 1.5e6
    assert 5.5e6 < small4 < 8e6  # authors' earlier default: ~6.5 M in latent space
    assert set(PRESETS) == {"tiny", "small", "base"}


def test_forward_shapes_null_label_and_zero_init():
    m = build_model("tiny", num_classes=5)
    x = torch.randn(3, 1, 32, 32)
    v = m(x, torch.rand(3), torch.tensor([0, 4, 5]))  # 5 = null label
    assert v.shape == x.shape
    assert torch.count_nonzero(v) == 0  # zero-initialised output: the field starts at v = 0
    with pytest.raises(IndexError):
        m(x, torch.rand(3), torch.tensor([0, 1, 6]))
    with pytest.raises(MedShiftError):
        m(torch.randn(1, 1, 30, 30), torch.rand(1), torch.tensor([0]))


def test_label_changes_output_after_training_step():
    torch.manual_seed(0)
    m = build_model("tiny", num_classes=2, model_channels=16, head_channels=16)
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    x = torch.randn(4, 1, 16, 16)
    for _ in range(3):
        loss = (m(x, torch.rand(4), torch.tensor([0, 1, 0, 1])) - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    t = torch.full((4,), 0.5)
    a = m(x, t, torch.zeros(4, dtype=torch.long))
    b = m(x, t, torch.ones(4, dtype=torch.long))
    assert (a - b).abs().max() > 1e-6


def test_unknown_preset():
    with pytest.raises(MedShiftError):
        preset_config("huge")


def test_ema_update_formula():
    m = build_model("tiny", model_channels=16, head_channels=16)
    ema = EMA(m, decay=0.9)
    p0 = {k: v.clone() for k, v in ema.module.named_parameters()}
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
    ema.update(m)
    for k, v in ema.module.named_parameters():
        expected = 0.9 * p0[k] + 0.1 * dict(m.named_parameters())[k]
        torch.testing.assert_close(v, expected)


def test_unet_traces_as_one_graph():
    """torch.compile sees the whole forward: the backend dispatch inside the attention block is
    read at trace time, not through a graph break per op call."""
    import torch._dynamo

    m = build_model("tiny", num_classes=2, model_channels=16, head_channels=16).eval()
    x, t, y = torch.randn(2, 1, 16, 16), torch.rand(2), torch.tensor([0, 2])
    torch._dynamo.reset()
    with torch.no_grad():
        explained = torch._dynamo.explain(m)(x, t, y)
    torch._dynamo.reset()
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
