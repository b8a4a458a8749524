"""Latent-mode runs export transparently: translate = pixels -> AE encode -> latent ODE -> AE
decode -> pixels (ONNX and AOTI), step stays in latent space, and the sidecar says so.

One tiny latent run per module (a KL autoencoder trained for 2 steps, factor 2, 4 latent
channels, and a one-level U-Net on its 8x8 latents with randomised output layers); the U-Net core
and the two autoencoder cores are exported to ONNX once and reused by every ONNX test.
"""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch

from medshift_fast.cli import main
from medshift_fast.data import to_uint16
from medshift_fast.deploy import load_engine
from medshift_fast.errors import MedShiftError
from medshift_fast.export import ExportSettings, build_module, export_engine, read_sidecar
from medshift_fast.export.graphs import LatentCodec, StepModule, example_inputs
from medshift_fast.export.onnx_export import (
    AE_DECODE,
    AE_ENCODE,
    compose,
    export_codec_cores,
    export_core,
)

ort = pytest.importorskip("onnxruntime")
ATOL = 1e-4  # fp32 (tests/utils.py)
SIZE, FACTOR, ZC = 16, 2, 4  # pixel side, autoencoder factor, latent channels
DOMAINS = ("synthetic_low", "real_normal", "real_low")
TR = ExportSettings(what="translate", size=SIZE, batch=2, source=0, target=2, tau=0.5, steps=2,
                    solver="heun", guidance_encode=2.0, guidance_decode=1.5)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny convolutions on a shared, loaded 2-core CPU: two OpenMP threads spin against each
    # other and make every conv ~100x slower (5 s vs 0.03 s for one eager translation here).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory):
    """A latent-mode run directory (RUN/autoencoder/ inside), loaded with ``load_run``."""
    from medshift_fast.models import build_model
    from medshift_fast.models.codec import AutoencoderCodec
    from medshift_fast.run import load_run, save_run
    from medshift_fast.train.autoencoder import AutoencoderTrainConfig, train_autoencoder
    from medshift_fast.train.config import TrainConfig

    run_dir = tmp_path_factory.mktemp("latent_run")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, SIZE, SIZE, generator=g) * 2 - 1
    ae = AutoencoderTrainConfig(out=str(run_dir / "autoencoder"), image_size=SIZE, channels=8,
                                channel_mult=(1, 2), latent_channels=ZC, steps=2, batch_size=4,
                                log_every=1, val_images=4, device="cpu", precision="fp32")
    train_autoencoder(ae, progress=False, data=(x, x))
    torch.manual_seed(0)
    unet = build_model("tiny", model_channels=16, head_channels=16, num_classes=3,
                       in_channels=ZC, channel_mult=(1,), attention_ds=())
    with torch.no_grad():  # the zero-initialised output layers get weights: a non-trivial field
        for p in unet.parameters():
            if p.dim() > 1 and p.abs().sum() == 0:
                p.normal_(0, 0.05)
    ref = AutoencoderCodec(run_dir / "autoencoder").reference()
    save_run(run_dir, TrainConfig(image_size=SIZE, latent=str(run_dir / "autoencoder")),
             unet.config, DOMAINS, unet.state_dict(), extra={"latent": ref})
    run = load_run(run_dir)
    assert run.latent and run.codec.factor == FACTOR and run.model_shape == (ZC, 8, 8)
    return run


@pytest.fixture(scope="module")
def cores(latent_run):
    """(U-Net core at the latent size, (encoder, decoder) cores): the slow step, done once."""
    run = latent_run
    core, _ = export_core(run.model, ExportSettings(what="step", size=SIZE // FACTOR))
    enc, dec, which = export_codec_cores(run.codec, TR)
    assert which in ("dynamo", "torchscript")
    return core, (enc, dec)


@pytest.fixture()
def cached(monkeypatch, cores):
    """export_onnx reuses the module's cores (composition, sidecar and verification still run)."""
    from medshift_fast.export import onnx_export

    monkeypatch.setattr(onnx_export, "export_core", lambda *a, **k: (cores[0], "dynamo"))
    monkeypatch.setattr(onnx_export, "export_codec_cores", lambda *a, **k: (*cores[1], "dynamo"))
    return cores


def _session(proto):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def _library(run, x, s: ExportSettings) -> torch.Tensor:
    """The eager library path: the Translator (codec encode, translate, decode, clamp)."""
    from medshift_fast.translate import Translator

    return Translator(run, s.source, s.target, tau=s.tau, steps=s.steps, solver=s.solver,
                      guidance_encode=s.guidance_encode,
                      guidance_decode=s.guidance_decode).translate(x)


def test_translate_graph_matches_eager_codec_pipeline(latent_run, cores):
    run = latent_run
    m = compose(cores[0], run.model, TR, {}, codec=run.codec, codec_cores=cores[1])
    shape = [d.dim_value or d.dim_param for d in m.graph.input[0].type.tensor_type.shape.dim]
    assert shape == ["batch", 1, SIZE, SIZE]  # pixel I/O
    (x,) = example_inputs(TR, run.model.num_classes, 1, batch=3)
    out = torch.from_numpy(_session(m).run(None, {"image": x.numpy()})[0])
    with torch.no_grad():
        ref = build_module(run.model, TR, run.codec)(x)
        round_trip = run.decode_image(run.encode_image(x))
    assert (ref - _library(run, x, TR)).abs().max() < 1e-6  # the eager module IS the library
    assert (ref - round_trip).abs().max() > 1e-2  # the latent flow does something
    assert (out - ref).abs().max().item() < ATOL
    # the raw cores reuse names (conv2d, val_*); the composed graph's names are all unique
    raw = [{o for n in p.graph.node for o in n.output} for p in (cores[0], *cores[1])]
    assert raw[0] & raw[1] and raw[1] & raw[2]
    inits = [t.name for t in m.graph.initializer]
    values = [o for n in m.graph.node for o in n.output]
    names = [n.name for n in m.graph.node]
    assert len(set(inits)) == len(inits) and len(set(values)) == len(values)
    assert len(set(names)) == len(names) and not set(inits) & set(values)
    n_enc, n_dec = (len(p.graph.initializer) for p in cores[1])
    assert sum(i.startswith(AE_ENCODE) for i in inits) == n_enc
    assert sum(i.startswith(AE_DECODE) for i in inits) == n_dec
    # the autoencoder is spliced once each; the U-Net once per evaluation
    convs = [sum(n.op_type == "Conv" for n in p.graph.node) for p in (cores[0], *cores[1])]
    assert sum(n.op_type == "Conv" for n in m.graph.node) == TR.nfe() * convs[0] + sum(convs[1:])


def test_uint16_tau_one_is_the_autoencoder_round_trip(latent_run, cores):
    run = latent_run
    s = dataclasses.replace(TR, io="uint16", tau=1.0)
    m = compose(cores[0], run.model, s, {}, codec=run.codec, codec_cores=cores[1])
    assert not any(i.name.startswith("unet") for i in m.graph.initializer)
    (u,) = example_inputs(s, run.model.num_classes, 1, batch=2)
    u_np = u.to(torch.int32).numpy().astype(np.uint16)
    out = _session(m).run(None, {"image": u_np})[0]
    assert out.dtype == np.uint16 and out.shape == (2, 1, SIZE, SIZE)
    x = torch.from_numpy(u_np.astype(np.float32) * np.float32(2 / 65535) - np.float32(1))
    ref = np.stack([to_uint16(img[0])[None] for img in run.decode_image(run.encode_image(x))])
    assert np.abs(out.astype(np.int64) - ref.astype(np.int64)).max() <= 1  # rounding ties only


def test_export_engine_latent_translate_and_step(latent_run, cached, tmp_path):
    run = latent_run
    report = export_engine(run, "onnx", tmp_path / "tr.onnx", TR)  # a LoadedRun: its codec
    assert report.ok and report.verify.max_abs < ATOL, str(report.verify)
    meta = read_sidecar(tmp_path / "tr.onnx")
    assert meta["space"] == "latent" and meta["latent"] == run.codec.reference()
    assert meta["latent"]["kind"] == "medshift" and meta["latent"]["factor"] == FACTOR
    assert (meta["size"], meta["in_channels"], meta["model_size"]) == (SIZE, 1, SIZE // FACTOR)
    assert meta["inputs"][0]["shape"] == ["batch", 1, SIZE, SIZE] and "autoencoder" in \
        meta["io_contract"]
    assert meta["domains"] == list(DOMAINS) and meta["settings"]["size"] == SIZE
    eng = load_engine(tmp_path / "tr.onnx")
    assert eng.space == "latent" and "latent" in repr(eng)
    x = torch.rand(3, 1, SIZE, SIZE) * 2 - 1  # another batch size than exported
    assert (eng(x) - _library(run, x, TR)).abs().max() < ATOL
    with pytest.raises(MedShiftError, match="images"):  # latents are not what it takes
        eng(torch.zeros(1, ZC, SIZE // FACTOR, SIZE // FACTOR))

    step = ExportSettings(what="step", size=SIZE, guidance=2.0)
    report = export_engine(run.model, "onnx", tmp_path / "step.onnx", step, domains=DOMAINS,
                           codec=run.codec)
    assert report.ok and report.verify.max_abs < ATOL, str(report.verify)
    meta = read_sidecar(tmp_path / "step.onnx")
    assert meta["space"] == "latent" and meta["latent"]["scale"] == run.codec.scale
    assert (meta["size"], meta["in_channels"], meta["image_size"]) == (SIZE // FACTOR, ZC, SIZE)
    assert meta["inputs"][0]["shape"] == ["batch", ZC, SIZE // FACTOR, SIZE // FACTOR]
    assert "latent space" in meta["io_contract"]
    eng = load_engine(tmp_path / "step.onnx")
    z = torch.randn(2, ZC, SIZE // FACTOR, SIZE // FACTOR)
    with torch.no_grad():
        ref = StepModule(run.model, step)(z, torch.full((2,), 0.3), torch.tensor([1, 1]))
    assert (eng(z, 0.3, 1) - ref).abs().max() < ATOL and ref.abs().max() > 1e-2
    with pytest.raises(MedShiftError, match="latents"):  # pixel images are not what it takes
        eng(torch.zeros(1, 1, SIZE, SIZE), 0.3, 1)


def test_size_not_divisible_by_the_factor_is_refused(latent_run, tmp_path):
    run = latent_run
    bad = dataclasses.replace(TR, size=SIZE + 1)
    for call in (lambda: export_engine(run, "onnx", tmp_path / "x.onnx", bad),
                 lambda: build_module(run.model, bad, run.codec),
                 lambda: export_engine(run, "onnx", tmp_path / "x.onnx",
                                       ExportSettings(what="step", size=SIZE + 1))):
        with pytest.raises(MedShiftError, match="divisible by the autoencoder's downsampling "
                                                "factor 2"):
            call()
    assert not (tmp_path / "x.onnx").exists()


def test_diffusers_and_foreign_codecs_are_refused(latent_run, tmp_path):
    run = latent_run

    class Diffusers:  # what models.codec.DiffusersCodec looks like to export
        kind, factor, channels, scale, shift = "diffusers", 8, ZC, 0.18215, 0.0
        module = torch.nn.Identity()

    with pytest.raises(MedShiftError, match="export of diffusers-latent runs is not supported"):
        export_engine(run.model, "onnx", tmp_path / "x.onnx", TR, codec=Diffusers())
    with pytest.raises(MedShiftError, match="latent channels"):
        wrong = LatentCodec(run.codec)
        wrong.channels = ZC + 1
        build_module(run.model, TR, wrong)
    # the eager reference keeps its own fp32 copy of the autoencoder, frozen
    mod = build_module(run.model, dataclasses.replace(TR, dtype="bf16"), run.codec)
    assert mod.codec.ae is not run.codec.module
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in mod.codec.parameters())
    assert next(mod.model.parameters()).dtype == torch.bfloat16


def test_cli_export_latent_run(latent_run, cached, tmp_path, capsys):
    run = latent_run
    out = tmp_path / "cli.onnx"
    rc = main(["export", "--checkpoint", str(run.path), "--format", "onnx", "--out", str(out),
               "--source", "synthetic_low", "--target", "real_low", "--tau", "0.5",
               "--steps", "1", "--solver", "euler", "--device", "cpu"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "latent run" in text and "OK" in text
    meta = read_sidecar(out)
    assert meta["space"] == "latent" and meta["size"] == SIZE and meta["in_channels"] == 1
    assert meta["checkpoint"] == str(run.path) and meta["latent"]["path"] == "autoencoder"
    rc = main(["export", "--checkpoint", str(run.path), "--format", "onnx", "--out", str(out),
               "--what", "step", "--device", "cpu", "--overwrite"])
    assert rc == 0 and read_sidecar(out)["size"] == SIZE // FACTOR
    rc = main(["export", "--checkpoint", str(run.path), "--format", "onnx", "--out", str(out),
               "--what", "step", "--size", "15", "--device", "cpu", "--overwrite"])
    err = capsys.readouterr().err
    assert rc == 2 and "divisible" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_aoti_latent_translate(latent_run, tmp_path):
    """AOTInductor package of a latent run (uint16, 2 U-Net calls + the autoencoder; ~50 s)."""
    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        pytest.skip("AOTInductor needs a C++ compiler")
    run = latent_run
    s = ExportSettings(what="translate", size=SIZE, batch=2, io="uint16", source=0, target=2,
                       tau=0.5, steps=1, solver="euler")
    report = export_engine(run, "aoti", tmp_path / "tr.pt2", s)
    assert report.ok and report.verify.max_abs <= 2 / 65535 + 1e-7, str(report.verify)
    eng = load_engine(tmp_path / "tr.pt2")
    assert eng.space == "latent" and eng.meta["model_size"] == SIZE // FACTOR
    (u,) = example_inputs(s, run.model.num_classes, 1, batch=3, seed=4)
    frames = u.to(torch.int32).numpy().astype(np.uint16)
    out = eng(frames)
    assert out.dtype == np.uint16 and out.shape == frames.shape
    x = torch.from_numpy(frames.astype(np.float32) * np.float32(2 / 65535) - np.float32(1))
    ref = np.stack([to_uint16(img[0])[None] for img in _library(run, x, s)])
    assert np.abs(out.astype(np.int64) - ref.astype(np.int64)).max() <= 1
