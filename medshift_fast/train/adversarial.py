"""``medshift distill --method adversarial``: a one-call student that may beat its teacher.

The student is the one-call network of ``--method oneshot`` (``models.student``: Translator,
export and the deployment path take it unchanged), started from a regression student
(``--init``) or from the teacher, and trained by the shared loop (``train.trainer``: progress,
exact resume, EMA, the non-finite guard) with the sum of

* an **adversarial** term (``adv_weight``): the hinge generator loss of a multi-scale patch
  discriminator (``models.discriminator``: spectral norm, projection conditioning on the target
  domain) that is trained, one Adam step per micro-step, to tell crops of the student's
  translations from random crops of REAL training images of the same target domain (unpaired:
  another subject, another view, another window). It judges noise grain, edge sharpness,
  contrast and the scatter floor -- what the teacher's translations lacked (``disc_whiten``:
  its residual in units of the target's grain, ``noise_terms.whitening_weight``);
* an **anchor** to the teacher (``anchor_weight``): L1 between Gaussian low-passes (std
  ``anchor_sigma`` px; 0 = the full band) of the student's and the teacher's translation of the
  same image at the same tau (the teacher cache of ``--method oneshot``; or, with
  ``anchor_run``, a regression student's translation -- the teacher's map distilled, one call
  instead of 30, so computed on the fly for every training image at any tau), so the student
  keeps the teacher's tau-dependent mapping where it is right and is free where the teacher is
  wrong in texture;
* a **diversity** term (``diversity_weight``, stochastic students only): mode seeking on the
  fine band -- -log of the mean absolute difference between the high-passes of two
  translations of the same crops under independent noise draws (:meth:`_diversity`), so the
  texture comes from the noise input rather than from the source's own noise;
* with ``--texture detector``, the discriminator judges the student's translation *plus* the
  target domain's detector noise (``models.texture``, fitted here to the real training images
  of each target domain, recorded in the student's config): the network learns the noise-free
  image under that noise, and the mottle at translation time is the model's. A saved run's
  model is *topped up* (:meth:`DetectorNoise.top_up`): the EMA student's noise-free
  translations of (up to 96) training sources per target at the default tau are measured and
  the model adds, per signal level, only the variance they lack (``texture_top_up``: in
  training too, per batch, ``noise_terms.batch_texture``);
* a **consistency** term (``consistency_weight``): L1 between the translations of a crop and
  of the same crop plus fresh noise from the source domain's own detector noise model (fitted
  to its training images): the map has to become insensitive to the source's noise, i.e.
  remove it -- what ``--texture detector`` needs of the noise-free translation;
* a **denoise** term (``denoise_weight``): recorrupted-to-recorrupted (:meth:`_denoise`), the
  self-supervised denoising loss whose minimiser is the noise-free translation when the source
  domain's fitted noise model has the noise's covariance (docs/distill.md measures what it
  does when it does not);
* a **dose** term (``dose_weight``, ``dose_pairs`` only): Noisier2Noise (:meth:`_dose`) on
  real target crops given the source dose's extra noise (no teacher, no pairs);
* a **structure** term against the source (``structure_weight``), on Gaussian low-passes (std
  ``structure_sigma``) of the translation and of the source image, so the anatomy stays:
  ``matched`` (default): L1 to the source's low-pass passed through the intensity map that
  matches the source domain's low-passed training histogram to the target domain's (quantile
  matching, unpaired: ``train.intensity``) -- where the two domains share their intensities
  (a dose change) it pins the low band to the source, bias-free; where they do not (synthetic
  -> real) it allows the global change and keeps the spatial layout; ``l1``: L1 to the source's
  low-pass itself; ``ssim``: 1 - SSIM (tolerant of contrast changes, blind to small biases).

Nothing uses the evaluation's feature network (EfficientNet-Lite0) or any pretrained network.
The discriminator, its optimizer state and its skipped-step count travel in the training state
(``Task.state``), so ``--resume`` continues exactly; its weights are also written to
RUN/discriminator.safetensors. Validation: the mean NPS distance (eval.physics, dB) between the
EMA student's translations of held-out (val) images and the target domain's training images.
Per-term losses go to RUN/adversarial.csv every ``log_every`` steps.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from ..errors import MedShiftError
from ..fileio import save_safetensors
from ..models.discriminator import PatchDiscriminator, hinge_d_loss, hinge_g_loss, lowpass
from .data import random_crop
from .distill_task import DistillTask
from .intensity import apply_map, intensity_map, map_slope, per_pair
from .noise_terms import (
    batch_texture,
    dose_input,
    dose_labels,
    dose_pairs_of,
    saved_texture,
    source_noise,
    whitening_weight,
)
from .teacher_pass import say
from .trainer import Trainer

__all__ = ["AdversarialTask", "DISC_WEIGHTS", "lowpass"]

DISC_WEIGHTS = "discriminator.safetensors"
TERMS = ("adv", "anchor", "structure", "d_loss", "d_real", "d_fake", "diversity", "consistency",
         "denoise", "dose")


def _ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    return ssim(a, b, data_range=2.0, kernel_size=11, sigma=1.5)


def _mean(logits: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([m.detach().float().mean() for m in logits]).mean()


class AdversarialTask(DistillTask):
    """The one-call student against a discriminator on real target-domain images."""

    VAL_TEACHER = False  # scored by the NPS distance, no teacher translations

    desc = "distill (adversarial)"

    # ------------------------------------------------------------------------------ set-up
    def setup(self, tr: Trainer) -> None:
        """Task hook: the distillation data and the real target images the discriminator sees."""
        super().setup(tr)  # teacher, data, teacher cache, validation images
        tgts = sorted({b for _, b in self.pairs})
        self.real = {g: self.x[self.y == g] for g in tgts}
        for g, imgs in self.real.items():
            if imgs.shape[0] == 0:
                raise MedShiftError(f"no training images of the target domain "
                                    f"{self.domains[g]!r}: the discriminator needs real ones")
        from ..eval.physics import noise_power_spectrum

        self.ref_nps = {g: noise_power_spectrum(self._pixels(imgs)) for g, imgs in
                        self.real.items()}
        self.texture, self.source_noise, self.whiten, self.dose_noise = {}, {}, {}, {}
        self.dose_pairs = dose_pairs_of(self.cfg, self.pairs, self.domains)
        second = max(self.cfg.consistency_weight, self.cfg.denoise_weight) > 0 or self.dose_pairs
        if second and tr.dist.enabled:
            raise MedShiftError("--consistency-weight, --denoise-weight and --dose-weight run in "
                                "one process (their second forward does not go through DDP); "
                                "drop them, or run without torchrun")
        whiten = self.cfg.disc_whiten
        if self.cfg.texture == "detector" or second or whiten:
            if getattr(self.teacher.codec, "kind", "pixel") != "pixel":
                raise MedShiftError("--texture detector, --consistency-weight, "
                                    "--denoise-weight, --dose-weight and --disc-whiten need a "
                                    "pixel-space teacher (the noise models live on pixels); "
                                    "this teacher has a latent codec")
            from ..models.texture import DetectorNoise

            fits = {}
            if self.cfg.texture == "detector" or whiten or self.dose_pairs:
                fits.update({(g, "target"): imgs for g, imgs in self.real.items()})
            if second:
                fits.update({(a, "source"): self.x[self.y == a] for a in
                             sorted({a for a, _ in self.pairs})})
            for (g, role), imgs in fits.items():
                model = DetectorNoise.fit(self._pixels(imgs))
                if role == "source":
                    self.source_noise[g] = model
                if role == "target" and whiten:
                    self.whiten[g] = model
                if role == "target" and self.cfg.texture == "detector":
                    self.texture[str(g)] = model.to_dict()
                if role == "target":  # the dose term's target models
                    self.dose_noise[g] = model
                if tr.dist.is_main:
                    say(f"{self.domains[g]} ({role}): {model.describe()}")
        sig, dev = self.cfg.structure_sigma, tr.device
        self.maps = {}  # (src, tgt) -> per-channel knots of the low-passed intensity map
        for a, b in self.pairs:
            la = lowpass(self.x[self.y == a], sig)
            lb = lowpass(self.real[b], sig)
            self.maps[a, b] = [tuple(k.to(dev) for k in intensity_map(la[:, c], lb[:, c]))
                               for c in range(la.shape[1])]
        self.d_skipped = 0
        self._terms = None

    def _pixels(self, z: torch.Tensor) -> torch.Tensor:
        codec = self.teacher.codec
        if getattr(codec, "kind", "pixel") == "pixel":
            return z.float().cpu()
        return torch.cat([codec.decode(z[k:k + 16].to(self.teacher.device)).float().cpu()
                          for k in range(0, z.shape[0], 16)])

    def build_model(self, tr: Trainer):
        """Task hook: the one-call student, and beside it the discriminator and its optimizer."""
        st = super().build_model(tr)
        cfg = self.cfg
        self.disc = PatchDiscriminator(len(self.domains), in_channels=st.in_channels,
                                       channels=cfg.disc_channels,
                                       scales=cfg.disc_scales,
                                       gain=cfg.disc_gain).to(tr.device)
        size = cfg.crop or self.x.shape[-1]
        if size < self.disc.min_size:
            raise MedShiftError(f"the discriminator's {cfg.disc_scales} scales need crops of at "
                                f"least {self.disc.min_size} px, got {size}; raise --crop or "
                                "lower --disc-scales")
        self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=cfg.disc_lr, betas=(0.0, 0.99))
        return st

    # ------------------------------------------------------------------------------ one step
    def _real_batch(self, tr: Trainer, y: torch.Tensor) -> torch.Tensor:
        """Random real images (random windows) of the domains y (this rank's share)."""
        b, info = y.shape[0], tr.dist
        u = torch.rand(b * info.world, generator=tr.gen)[info.rank * b:(info.rank + 1) * b]
        imgs = torch.stack([self.real[int(g)][int(v * self.real[int(g)].shape[0])]
                            for g, v in zip(y.tolist(), u)])
        if self.cfg.crop is not None and self.cfg.crop < imgs.shape[-1]:
            imgs = random_crop(imgs, self.cfg.crop, tr.gen, info)
        return imgs.to(tr.device)

    def _disc_step(self, tr: Trainer, real, fake, y) -> torch.Tensor:
        """One Adam step of the discriminator (skipped when its loss is not finite)."""
        d = self.disc.requires_grad_(True).train()
        with tr.autocast():
            lr_ = d(real, y, whitening_weight(self.whiten, real, y))
            lf_ = d(fake, y, whitening_weight(self.whiten, fake, y))
            loss = hinge_d_loss(lr_, lf_)
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        if tr.dist.enabled:  # the discriminator is not wrapped in DDP: average its gradients
            import torch.distributed as dist

            for p in d.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= tr.dist.world
        if bool(torch.isfinite(loss)):
            self.opt_d.step()
        else:
            self.d_skipped += 1
            self.opt_d.zero_grad(set_to_none=True)
        d.requires_grad_(False)  # the generator's loss does not train it
        return torch.stack([loss.detach().float(), _mean(lr_), _mean(lf_)])

    def loss(self, tr: Trainer, fwd, batch) -> torch.Tensor:
        """Task hook: a discriminator step, then adversarial + anchor + structure loss."""
        cfg = self.cfg
        x, target, ys, yt, tau = batch
        x, target = self._pair(tr, x, target, ys, yt, tau)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        noise = self._noise(tr, x)
        fake2 = None
        with tr.autocast():
            if noise is None:
                fake = fwd(x, tau, ys, yt)
            elif cfg.diversity_weight > 0:  # a second noise draw, in the same forward
                two = (torch.cat([v, v]) for v in (x, tau, ys, yt))
                fake, fake2 = fwd(*two, torch.cat([noise, self._noise(tr, x)])).chunk(2)
            else:
                fake = fwd(x, tau, ys, yt, noise)
        clean = fake
        if noise is not None and getattr(tr.model, "textures", None):
            fake = clean + (batch_texture(self.texture, clean, noise[:, -1:], yt, self._pixels)
                            if cfg.texture_top_up else
                            tr.model.texture_noise(clean, noise[:, -1:], yt))
        zero = torch.zeros((), device=fake.device)
        consistency = zero
        if cfg.consistency_weight > 0:
            with tr.autocast():
                again = fwd(x + self._source_noise(tr, x, ys), tau, ys, yt,
                            *(() if noise is None else (noise,)))
            consistency = (again.float() - clean.float()).abs().mean()
        denoise = zero
        if cfg.denoise_weight > 0:
            denoise = self._denoise(tr, fwd, x, tau, ys, yt, noise)
        dose = zero
        if self.dose_pairs:
            dose = self._dose(tr, fwd, x, tau, noise)
        if cfg.adv_weight > 0:
            d_stats = self._disc_step(tr, self._real_batch(tr, yt), fake.detach(), yt)
            with tr.autocast():
                adv = hinge_g_loss(self.disc(fake, yt, whitening_weight(self.whiten, fake,
                                                                        yt))).float()
        else:
            d_stats, adv = torch.zeros(3, device=fake.device), zero
        f32, x32 = clean.float(), x.float()
        anchor = ((lowpass(f32, cfg.anchor_sigma) - lowpass(target.float(), cfg.anchor_sigma))
                  .abs().mean() if cfg.anchor_weight > 0 else zero)
        structure = zero
        if cfg.structure_weight > 0:
            lf, lx = lowpass(f32, cfg.structure_sigma), lowpass(x32, cfg.structure_sigma)
            if cfg.structure_loss == "ssim":
                structure = 1.0 - _ssim(lf, lx)
            else:
                if cfg.structure_loss == "matched":
                    lx = self._matched(lx, ys, yt)
                structure = (lf - lx).abs().mean()
        diversity = zero if fake2 is None else self._diversity(f32, fake2.float())
        self._terms = torch.cat([torch.stack([adv.detach(), anchor.detach(),
                                              structure.detach()]), d_stats,
                                 diversity.detach()[None], consistency.detach()[None],
                                 denoise.detach()[None], dose.detach()[None]])
        return (cfg.adv_weight * adv + cfg.anchor_weight * anchor
                + cfg.structure_weight * structure + cfg.diversity_weight * diversity
                + cfg.consistency_weight * consistency + cfg.denoise_weight * denoise
                + cfg.dose_weight * dose)

    def _dose(self, tr: Trainer, fwd, x, tau, noise) -> torch.Tensor:
        """Noisier2Noise on the dose pairs (``noise_terms.dose_input``): MSE between the
        student's noise-free translation of real target crops y at the source dose's noise
        level and y; one batch of x's size, cycling through the dose pairs."""
        ys, yt = dose_labels(self.dose_pairs, x.shape[0], x.device)
        y = self._real_batch(tr, yt).float()
        n = torch.randn(y[:, :1].shape, generator=tr.noise_gen,
                        device=tr.noise_gen.device).to(y.device)
        noisy = dose_input(self.source_noise, self.dose_noise, y, ys, yt, n)
        with tr.autocast():
            pred = fwd(noisy.to(x.dtype), tau, ys, yt, *(() if noise is None else (noise,)))
        return (pred.float() - y).pow(2).mean()

    def _denoise(self, tr: Trainer, fwd, x, tau, ys, yt, noise) -> torch.Tensor:
        """Recorrupted-to-recorrupted (Pang et al. 2021): with z from the source domain's
        noise model, the noises of x + alpha z and of x - z / alpha are uncorrelated (equal
        covariances), so E|G(x + alpha z) - M(x - z / alpha)|^2 is the error against the
        noise-free translation plus a constant. M is the pair's intensity map (the structure
        term's), linearised at the crop's low-pass: M(lx) + M'(lx) (x - z / alpha - lx)."""
        a = self.cfg.denoise_alpha
        z = self._source_noise(tr, x, ys).float()
        with tr.autocast():
            pred = fwd((x.float() + a * z).to(x.dtype), tau, ys, yt,
                       *(() if noise is None else (noise,)))
        x32 = x.float()
        with torch.no_grad():
            lx = lowpass(x32, self.cfg.structure_sigma)
            target = self._matched(lx, ys, yt) + self._slope(lx, ys, yt) * (x32 - z / a - lx)
        return (pred.float() - target).pow(2).mean()

    def _source_noise(self, tr: Trainer, x: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """Fresh noise of each crop's source domain (``noise_terms.source_noise``), its maps
        drawn from the run's checkpointed noise generator (this rank's share)."""
        b, info = x.shape[0], tr.dist
        n = torch.randn((b * info.world, 1, *x.shape[-2:]), generator=tr.noise_gen,
                        device=tr.noise_gen.device)[info.rank * b:(info.rank + 1) * b]
        return source_noise(self.source_noise, x, ys, n.to(x.device, torch.float32))

    def _diversity(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Mode seeking on the fine band: -log of the mean absolute difference between the
        high-passes (x - G_sigma * x, sigma = structure_sigma) of the translations ``a``, ``b``
        of the same crops under two independent noise draws. A deterministic texture (e.g. the
        source's own noise passed through) scores -log(0): the term makes the texture come
        from the noise input, the adversarial term keeps it realistic, the structure term
        keeps the low band (Mao et al. 2019's mode-seeking loss, on the high band, in log
        form)."""
        sig = self.cfg.structure_sigma
        d = ((a - lowpass(a, sig)) - (b - lowpass(b, sig))).abs().mean()
        return -torch.log(d + 1e-6)

    def _noise(self, tr: Trainer, x: torch.Tensor) -> torch.Tensor | None:
        """A stochastic student's standard-normal noise maps for this rank's crops x (drawn for
        the whole global micro-batch from the run's checkpointed noise generator, this rank's
        share kept: ranks stay in step and --resume continues exactly); None otherwise."""
        st = tr.model
        c = int(getattr(st, "noise_channels", 0))
        if not c:
            return None
        b, info = x.shape[0], tr.dist
        n = torch.randn((b * info.world, c, *x.shape[-2:]), generator=tr.noise_gen,
                        device=tr.noise_gen.device)
        return n[info.rank * b:(info.rank + 1) * b].to(x.device, x.dtype)

    def _matched(self, lx: torch.Tensor, ys: torch.Tensor, yt: torch.Tensor) -> torch.Tensor:
        """Low-passed sources through their pair's intensity map."""
        return per_pair(self.maps, apply_map, lx.clone(), lx, ys, yt)

    def _slope(self, lx: torch.Tensor, ys: torch.Tensor, yt: torch.Tensor) -> torch.Tensor:
        """The slope of each crop's pair intensity map at the low-passed source lx."""
        return per_pair(self.maps, map_slope, torch.ones_like(lx), lx, ys, yt)

    @torch.no_grad()
    def validate(self, tr: Trainer) -> float:
        """Mean NPS distance (dB) to the target domain over the validation pairs and taus."""
        from ..eval.physics import nps_distance

        st, v, dev = tr.ema.module.eval(), self.val, tr.device
        scores = []
        keys = torch.stack([v["s"], v["g"], (v["tau"] * 1e6).round()], 1)
        for key in torch.unique(keys, dim=0):
            m = (keys == key).all(1)
            tau = float(key[2]) / 1e6
            gen = torch.Generator().manual_seed(int(key[0]) * 7_919 + int(key[1]))
            pred = []
            for k in range(0, int(m.sum()), 8):
                xb = v["x"][m][k:k + 8].to(dev)
                pred.append(st.translate(xb, tau, v["s"][m][k:k + 8].to(dev),
                                         v["g"][m][k:k + 8].to(dev),
                                         st.draw_noise(xb.shape, gen, dev)))
            pred = torch.cat(pred)
            scores.append(nps_distance(self._pixels(pred).clamp(-1, 1),
                                       self.ref_nps[int(key[1])]))
        return float(sum(scores) / len(scores))

    def on_step(self, tr: Trainer, step: int, out: Path, logger) -> None:
        """Task hook: the per-term losses into RUN/adversarial.csv every ``log_every`` steps."""
        if self._terms is None or step % self.cfg.log_every:
            return
        path = out / "adversarial.csv"
        head = ("step", *TERMS, "d_skipped")
        if path.is_file():  # a run begun by an older version keeps its file's columns
            with path.open(newline="") as fh:
                head = tuple(next(csv.reader(fh), head))
        vals = {"step": step, "d_skipped": self.d_skipped,
                **{k: f"{float(t):.6g}" for k, t in zip(TERMS, self._terms.cpu())}}
        new = not path.is_file()
        with path.open("a", newline="") as fh:
            w = csv.writer(fh)
            if new:
                w.writerow(head)
            w.writerow(tuple(vals.get(k, "") for k in head))

    # ---------------------------------------------------------------------------- checkpoints
    def state(self, tr: Trainer) -> dict:
        """Task hook: the discriminator, its optimizer and skipped steps (exact resume)."""
        return {"disc": {k: t.detach().cpu() for k, t in self.disc.state_dict().items()},
                "disc_opt": self.opt_d.state_dict(), "disc_skipped": self.d_skipped}

    def load_state(self, tr: Trainer, state) -> None:
        """Task hook: restore what ``state`` saved (refused for a checkpoint of another method)."""
        if not state or "disc" not in state:
            raise MedShiftError("this checkpoint holds no discriminator state: it was not "
                                "written by `medshift distill --method adversarial`; resume it "
                                "with its own --method")
        self.disc.load_state_dict(state["disc"])
        self.opt_d.load_state_dict(state["disc_opt"])
        self.d_skipped = int(state.get("disc_skipped", 0))

    @torch.no_grad()
    def _topped_up(self, tr: Trainer) -> dict:
        """The texture models as saved: each topped up by the EMA student's own residual noise
        on training sources of its pairs (noise-free translations at the default tau)."""
        from ..translate.settings import RECIPE

        tau = min(max(float(RECIPE["tau"]), self.cfg.tau_min), self.cfg.tau_max)
        return saved_texture(self.texture, tr.ema.module.eval(), self.pairs, self.x, self.y,
                             tau, self._pixels, tr.device)

    def save(self, tr: Trainer, run_dir: Path) -> None:
        """Task hook: the student run plus RUN/discriminator.safetensors."""
        if self.texture:  # the saved run's models are topped up; training keeps the fitted ones
            import dataclasses

            training_cfg = self.student_cfg
            self.student_cfg = dataclasses.replace(training_cfg, texture=self._topped_up(tr))
            try:
                self._save(tr, run_dir)
            finally:
                self.student_cfg = training_cfg
            return
        self._save(tr, run_dir)

    def _save(self, tr: Trainer, run_dir: Path) -> None:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        save_safetensors(run_dir / DISC_WEIGHTS,
                         {k: t.detach().cpu().contiguous() for k, t in
                          self.disc.state_dict().items()},
                         {"config": json.dumps(self.disc.config), "step": str(tr.step)})
        super().save(tr, run_dir)
