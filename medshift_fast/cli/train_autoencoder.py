"""Train the small KL autoencoder for latent-mode training (``medshift train --latent RUN_AE``)."""

from ._flags import add_config_flags, config_from_args

NAME = "train-autoencoder"
HELP = "train the small KL autoencoder for latent-mode training"


def add_arguments(p) -> None:
    """Add the flags of `medshift train-autoencoder` to its parser ``p``."""
    from ..train.autoencoder import AutoencoderTrainConfig

    add_config_flags(p, AutoencoderTrainConfig, required=("data", "out"),
                     aliases={"image_size": ["--size"]})
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    """Run `medshift train-autoencoder` with the parsed flags; returns the exit status."""
    from ..train.autoencoder import AutoencoderTrainConfig, train_autoencoder

    res = train_autoencoder(config_from_args(AutoencoderTrainConfig, args),
                            progress=not args.no_progress)
    print(f"autoencoder written to {res['out']}: reconstruction PSNR {res['val_psnr']:.2f} dB on "
          f"{res['val_images']} validation image(s), latent scale {res['latent_scale']:.4f}")
    return 0
