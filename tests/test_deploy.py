"""FrameTranslator: frame after frame equals flow.translate with the same settings."""

import math

import numpy as np
import pytest
import torch
from utils import assert_close

from medshift_fast.deploy import FrameTranslator
from medshift_fast.errors import MedShiftError
from medshift_fast.flow import translate
from medshift_fast.models import build_model
from medshift_fast.models.codec import PixelCodec
from medshift_fast.run import LoadedRun, load_run, save_run
from medshift_fast.train.config import TrainConfig

SETTINGS = dict(tau=0.5, steps=2, solver="heun", guidance_encode=2.0, guidance_decode=1.5)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny forwards on a loaded machine: avoid OpenMP spin-waits
    yield
    torch.set_num_threads(n)


def tiny_model(device="cpu"):
    torch.manual_seed(0)
    m = build_model("tiny", model_channels=16, head_channels=16, num_classes=3)
    with torch.no_grad():  # non-zero output layers: the translation is not the identity
        for p in m.parameters():
            if p.dim() > 1 and p.abs().sum() == 0:
                p.normal_(0, 0.02)
    return m.eval().to(device)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def frame(seed=0, shape=(16, 16)):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_float_frames_equal_translate(model):
    ft = FrameTranslator(model, 0, 2, size=16, **SETTINGS)
    for seed in range(3):
        f = frame(seed)
        ref = translate(model, f[None, None], 0, 2, **SETTINGS).clamp(-1, 1)  # images in [-1, 1]
        y = ft(f)
        assert y.shape == (16, 16) and y.dtype == torch.float32
        assert (ref[0, 0] - f).abs().max() > 1e-2
        assert_close(y, ref[0, 0])
    y4 = ft(f[None, None])
    assert y4.shape == (1, 1, 16, 16)
    assert_close(y4, ref)
    yn = ft(f.numpy())
    assert isinstance(yn, np.ndarray)
    assert_close(torch.from_numpy(yn), ref[0, 0])
    out = torch.empty(16, 16)
    assert ft(f, out=out) is out
    assert_close(out, ref[0, 0])


def test_uint16_frames_round_trip_as_data_io(model):
    raw = torch.randint(0, 65536, (12, 20), generator=torch.Generator().manual_seed(1))
    raw = raw.to(torch.uint16)
    ft = FrameTranslator(model, 1, 0, size=(12, 20), input="uint16", **SETTINGS)
    y = ft(raw.numpy())
    assert y.dtype == np.uint16 and y.shape == (12, 20)
    x = raw.float() * (2.0 / 65535.0) - 1.0
    ref = translate(model, x[None, None], 1, 0, **SETTINGS)[0, 0]
    ref16 = torch.round((ref.clamp(-1, 1) + 1) * 32767.5).to(torch.int64)
    assert int((torch.from_numpy(y.astype(np.int64)) - ref16).abs().max()) <= 1


def test_latency_stats(model):
    ft = FrameTranslator(model, 0, 1, size=16, tau=0.8, steps=1, solver="euler")
    assert ft.latency_stats()["frames"] == 0 and math.isnan(ft.latency_stats()["p50_ms"])
    for seed in range(5):
        ft(frame(seed))
    st = ft.latency_stats()
    assert st["frames"] == 5 and len(ft.latencies) == 5
    assert 0 < st["p50_ms"] <= st["p99_ms"] <= st["max_ms"]
    assert st["fps"] == pytest.approx(1e3 / st["mean_ms"])
    ft.reset_stats()
    assert ft.latency_stats()["frames"] == 0


def test_from_run_directory_with_domain_names(tmp_path, model):
    save_run(tmp_path, TrainConfig(image_size=16), model.config, ("sim", "real", "other"),
             model.state_dict())
    run = load_run(tmp_path)
    ft = FrameTranslator(run, "sim", "real", **SETTINGS)  # size from the run
    f = frame(4)
    assert_close(ft(f), translate(model, f[None, None], 0, 1, **SETTINGS)[0, 0].clamp(-1, 1))
    ft2 = FrameTranslator(str(tmp_path), "sim", "real", warmup=0, **SETTINGS)
    assert_close(ft2(f), ft(f))
    with pytest.raises(MedShiftError, match="unknown domain"):
        FrameTranslator(run, "sim", "nope")


class _PoolCodec(PixelCodec):
    kind, factor, image_channels = "pool", 2, 1

    @staticmethod
    def encode(x):
        return torch.nn.functional.avg_pool2d(x, 2)

    @staticmethod
    def decode(z):
        return torch.nn.functional.interpolate(z, scale_factor=2.0, mode="nearest")


def test_latent_run_goes_through_the_codec(model):
    run = LoadedRun(None, model, model.config, ("a", "b", "c"), {"train": {"image_size": 32}},
                    _PoolCodec())
    ft = FrameTranslator(run, "a", "c", **SETTINGS)
    assert ft.sampler.shape == (1, 1, 16, 16)
    f = frame(5, (32, 32))
    ref = _PoolCodec.decode(translate(model, _PoolCodec.encode(f[None, None]), 0, 2, **SETTINGS))
    assert_close(ft(f), ref[0, 0].clamp(-1, 1))


def test_errors(model):
    with pytest.raises(MedShiftError, match="size"):
        FrameTranslator(model, 0, 1)
    with pytest.raises(MedShiftError, match="input"):
        FrameTranslator(model, 0, 1, size=16, input="int8")
    ft = FrameTranslator(model, 0, 1, size=16, steps=1, warmup=0)
    with pytest.raises(MedShiftError, match="shape"):
        ft(frame(shape=(16, 8)))
    with pytest.raises(MedShiftError, match="uint16"):
        ft(torch.zeros(16, 16, dtype=torch.int32))
    with pytest.raises(MedShiftError, match="NaN"):
        ft(torch.full((16, 16), float("nan")))
    ft16 = FrameTranslator(model, 0, 1, size=16, steps=1, warmup=0, input="uint16")
    with pytest.raises(MedShiftError, match="uint16"):
        ft16(frame())


@pytest.mark.cuda
def test_cuda_graph_frames_equal_translate():
    m = tiny_model("cuda")
    ft = FrameTranslator(m, 0, 2, size=16, **SETTINGS)
    assert ft.sampler.cuda_graph
    for seed in range(3):
        f = frame(seed)
        y = ft(f)  # CPU frame in, CPU frame out
        assert y.device.type == "cpu"
        ref = translate(m, f[None, None].cuda(), 0, 2, **SETTINGS)[0, 0].cpu().clamp(-1, 1)
        assert_close(y, ref, atol=2e-3, rtol=2e-3)  # TF32 convolutions
    yd = ft(frame(0).cuda())
    assert yd.device.type == "cuda"
    assert ft.latency_stats()["frames"] == 4


def test_frame_size_must_match_the_run_unless_asked(tmp_path, model):
    save_run(tmp_path, TrainConfig(image_size=16), model.config, ("a", "b", "c"),
             model.state_dict())
    with pytest.raises(MedShiftError, match="any_size"):
        FrameTranslator(str(tmp_path), "a", "b", size=32, steps=1)
    ft = FrameTranslator(str(tmp_path), "a", "b", size=(16, 24), steps=1, any_size=True)
    assert ft(frame(0, (16, 24))).shape == (16, 24)  # non-square frames, as translate does


def test_monochrome1_frames_are_inverted_in_and_out(model):
    raw = torch.randint(0, 65536, (16, 16), generator=torch.Generator().manual_seed(2))
    raw = raw.to(torch.uint16)
    kw = dict(size=16, input="uint16", steps=1, warmup=0)
    plain = FrameTranslator(model, 0, 1, **kw)
    mono1 = FrameTranslator(model, 0, 1, monochrome1=True, **kw)
    inv = (65535 - raw.to(torch.int32)).to(torch.uint16)
    want = 65535 - plain(inv).to(torch.int32)
    assert int((mono1(raw).to(torch.int32) - want).abs().max()) <= 1
