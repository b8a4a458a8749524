"""Latent mode: the KL autoencoder round trip, flow training in its latent space, load_run."""

import pytest
import torch
from conftest import make_images

from medshift_fast.cli import main
from medshift_fast.errors import MedShiftError
from medshift_fast.models.codec import PixelCodec
from medshift_fast.run import load_run
from medshift_fast.train import TrainConfig, train
from medshift_fast.train.autoencoder import load_autoencoder, psnr, reconstruct
from medshift_fast.translate import Translator


@pytest.fixture(scope="module")
def ae_run(tiny_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("ae")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc = main(["train-autoencoder", "--data", str(tiny_folder), "--out", str(out),
                   "--image-size", "16", "--channels", "16", "--channel-mult", "1,2", "--steps",
                   "80", "--batch-size", "8", "--lr", "2e-3", "--log-every", "20",
                   "--no-progress"])
    finally:
        torch.set_num_threads(n)
    assert rc == 0
    return out


def test_autoencoder_round_trip_psnr(ae_run, capsys):
    model, meta = load_autoencoder(ae_run)
    assert meta["latent_scale"] > 0 and (ae_run / "log.csv").is_file()
    x, _ = make_images(8, seed=5)  # unseen images of the same kind
    rec = reconstruct(model, x)
    p, p_mean = psnr(rec, x), psnr(x.mean(0, keepdim=True).expand_as(x), x)
    assert p > 22.0 and p > p_mean + 8.0, (p, p_mean)
    assert meta["metrics"]["val_psnr"] > 22.0
    z = model.encode(x)[0]
    assert z.shape == (8, 4, 8, 8)


def test_flow_in_latent_space_decodes_transparently(ae_run, tmp_path, tiny_folder):
    cfg = TrainConfig(data=str(tiny_folder), out=str(tmp_path / "run"), latent=str(ae_run),
                      model_channels=16, image_size=16, steps=2, batch_size=4, val_every=2,
                      sample_every=2, sample_steps=1, sample_images=1, log_every=1)
    train(cfg, progress=False)
    run = load_run(tmp_path / "run")
    assert run.latent and run.config["latent"]["path"] == "autoencoder"  # copied into the run
    assert (tmp_path / "run" / "autoencoder" / "autoencoder.safetensors").is_file()
    assert run.model_config.in_channels == 4 and run.model_shape == (4, 8, 8)
    x, _ = make_images(3)
    z = run.encode_image(x)
    assert z.shape == (3, 4, 8, 8)
    assert psnr(run.decode_image(z), x) > 22.0
    y = Translator(run, "synthetic_low", "real_normal", tau=0.6, steps=1,
                   solver="euler").translate(x)
    assert y.shape == (3, 1, 16, 16) and torch.isfinite(y).all()
    assert run.sample_images("real_normal", 2, steps=1, solver="euler",
                             guidance=2.0).shape == (2, 1, 16, 16)
    assert (tmp_path / "run" / "samples" / "step_0000002.png").is_file()
    # pixel mode: identity helpers
    px = PixelCodec()
    assert px.encode(x) is x and px.decode(z) is z and px.reference() is None


def test_latent_diffusers_without_diffusers_is_a_clear_error(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers -> ImportError
    x, y = make_images(4)
    cfg = TrainConfig(out=str(tmp_path), latent_diffusers=str(tmp_path), image_size=16, steps=1)
    with pytest.raises(MedShiftError, match="diffusers"):
        train(cfg, progress=False, data=(x, y, ("a", "b")))


@pytest.mark.parametrize("flags", [dict(texture="detector"), dict(consistency_weight=5.0),
                                   dict(disc_whiten=True)])
def test_noise_model_terms_refuse_a_latent_teacher(ae_run, tmp_path, tiny_folder, flags):
    """The detector noise model, the consistency term and the whitened discriminator live on
    pixels: a teacher with a latent codec is refused before any step, naming the flags."""
    from medshift_fast.train.distill import DistillConfig, distill

    teacher = tmp_path / "run"
    train(TrainConfig(data=str(tiny_folder), out=str(teacher), latent=str(ae_run),
                      model_channels=16, image_size=16, steps=1, batch_size=4, val_every=0,
                      sample_every=0, log_every=1), progress=False)
    cfg = DistillConfig(teacher=str(teacher), out=str(tmp_path / "st"),
                        pairs="synthetic_low:real_normal", method="adversarial", steps=2,
                        batch_size=2, solver_steps=1, val_every=0, val_images=1,
                        taus_per_image=1, disc_channels=8, disc_scales=1, **flags)
    with pytest.raises(MedShiftError, match="need a pixel-space teacher.*latent codec"):
        distill(cfg, progress=False)
    assert not (tmp_path / "st" / "config.json").exists()
