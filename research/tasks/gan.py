"""Generative adversarial networks (Goodfellow et al. 2014, https://arxiv.org/abs/1406.2661).

The discriminator D and generator G play the minimax game of equation (1),
``min_G max_D E_x[log D(x)] + E_z[log(1 - D(G(z)))]``, trained by alternating steps as in
Algorithm 1 (k = 1 discriminator step per generator step). The generator minimises the
non-saturating ``-log D(G(z))`` instead of ``log(1 - D(G(z)))``, which "provides much stronger
gradients early in learning" (section 3). Optimiser and its settings are DCGAN's (Radford et al.
2016, section 4): Adam, learning rate 2e-4, beta1 0.5.

Images arrive from the datamodule in [0, 1] and are mapped to [-1, 1], the range of the
generator's tanh, as the task's first step. Validation and test log the discriminator's losses
and mean outputs on held-out real images and on as many fresh samples (drawn from a fixed seed,
so every epoch is scored on the same noise; the discriminator on batch statistics, see
:func:`batch_statistics`) and, given an extractor checkpoint, FID (:mod:`research.metrics.fid`)
of the generator's samples in eval mode.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from research.metrics.fid import ClassifierFeatures, classifier_fid
from research.models import build_model
from research.tasks.base import Task
from research.tasks.checks import check_checkpoint
from research.tasks.optim import OptimizerSettings, configure_optimization

log = logging.getLogger(__name__)


@contextmanager
def batch_statistics(module: nn.Module) -> Iterator[None]:
    """Run ``module``'s BatchNorm layers on batch statistics, as in training, without updating their running ones.

    The discriminator meets real and generated batches separately, so its running statistics
    average two different distributions and in eval mode it misjudges both (on MNIST it called
    held-out digits fake with D(x) < 0.01 after a short run). Its held-out losses are therefore
    measured the way training sees it. With ``track_running_stats`` off, a BatchNorm layer in
    training mode normalises by the batch and leaves its buffers alone.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.training, m.track_running_stats) for m in norms]
    for m in norms:
        m.train()
        m.track_running_stats = False
    try:
        yield
    finally:
        for m, (training, track) in zip(norms, saved):
            m.train(training)
            m.track_running_stats = track


class GAN(Task):
    """Adversarial training of a generator and a discriminator, with manual optimisation.

    Each training batch takes one discriminator step (real images labelled 1, detached samples
    labelled 0), then one generator step on the same samples labelled 1 (the non-saturating
    loss), each with its own Adam. Both count as optimizer steps, so ``trainer.global_step``
    advances by 2 per batch.

    Args:
        generator: a registered model, e.g. ``{"name": "dcgan_generator", "img_size": 28}``, or an
            ``nn.Module`` with ``latent_dim`` mapping (B, latent_dim) noise to images in [-1, 1].
        discriminator: a registered model, e.g. ``{"name": "dcgan_discriminator"}``, or an
            ``nn.Module`` mapping images in [-1, 1] to (B,) logits.
        optim: the optimizer of both networks (:class:`~research.tasks.optim.OptimizerSettings`);
            by default DCGAN's Adam (AdamW without weight decay), lr 2e-4, betas (0.5, 0.999) (beta1
            lowered from 0.9 for stability). Both are stepped by hand: the schedule stays constant.
        fid_extractor: path of an :class:`~research.tasks.ImageClassification` checkpoint whose
            penultimate features define FID for validation and test (``val/fid``, ``test/fid``;
            the best checkpoint is then the lowest ``val/fid``). None skips FID with a warning.
        eval_seed: seed of the noise that validation and test draw.
    """

    default_optim = OptimizerSettings(name="adamw", lr=2e-4, betas=(0.5, 0.999), weight_decay=0.0)

    def __init__(
        self,
        generator: nn.Module | dict | str = "dcgan_generator",
        discriminator: nn.Module | dict | str = "dcgan_discriminator",
        *,
        optim: OptimizerSettings = default_optim,
        fid_extractor: str | None = None,
        eval_seed: int = 0,
    ) -> None:
        super().__init__(optim)
        self.automatic_optimization = False  # two optimizers, stepped in turn (Algorithm 1)
        self.generator, self.discriminator = build_model(generator), build_model(discriminator)
        self.latent_dim = getattr(self.generator, "latent_dim", None)
        if not isinstance(self.latent_dim, int):
            raise ValueError(
                f"the generator must have an int latent_dim (the size of its noise input); "
                f"{type(self.generator).__name__} has {self.latent_dim!r}"
            )
        if self.optim.schedule != "constant":
            raise ValueError("the GAN steps its two optimizers by hand, without schedule: set optim.schedule: constant")
        self.val_fid = self.test_fid = None
        if fid_extractor is None:
            log.warning("GAN: no fid_extractor checkpoint given, so FID is skipped (the losses are still logged)")
        else:
            features = ClassifierFeatures.from_checkpoint(fid_extractor)
            self.val_fid, self.test_fid = classifier_fid(features), classifier_fid(features)

    @property
    def checkpoint_monitor(self) -> tuple[str | None, str]:
        """The metric that picks the best checkpoint: the lowest FID if measured, else none (the last)."""
        return ("val/fid", "min") if self.val_fid is not None else (None, "min")

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A checkpoint of another model stops here with a readable message, before torch's strict load."""
        check_checkpoint(self, checkpoint, model="generator/discriminator")

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Generate. Shape: (B, latent_dim) -> (B, C, H, W) images in [-1, 1]."""
        return self.generator(z)

    def sample_noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, latent_dim) standard normal noise on the task's device (from ``generator`` if given, on the CPU)."""
        if generator is None:
            return torch.randn(n, self.latent_dim, device=self.device)
        return torch.randn(n, self.latent_dim, generator=generator).to(self.device)

    @torch.no_grad()
    def sample(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] for noise ``z`` (B, latent_dim), the generator in eval mode (BatchNorm running statistics).

        Returns:
            (B, C, H, W) in [0, 1].
        """
        training = self.generator.training
        self.generator.eval()
        try:
            return self.generator(z.to(self.device)).add(1).div(2).clamp(0, 1)
        finally:
            self.generator.train(training)

    def discriminator_loss(
        self, real: torch.Tensor, fake: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``-log D(x) - log(1 - D(G(z)))``, the negated objective of D in eq. (1).

        Args:
            real: (B, C, H, W) real images in [-1, 1].
            fake: (B', C, H, W) generated images in [-1, 1] (detach them for a discriminator step).

        Returns:
            The loss, and the mean D(x) and mean D(G(z)) (probabilities, detached).
        """
        real_logits, fake_logits = self.discriminator(real), self.discriminator(fake)
        # BCE with logits: log D = -softplus(-logit), log(1 - D) = -softplus(logit), without overflow
        loss = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits)) + \
            F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
        return loss, real_logits.detach().sigmoid().mean(), fake_logits.detach().sigmoid().mean()

    def generator_loss(self, fake: torch.Tensor) -> torch.Tensor:
        """Non-saturating ``-log D(G(z))`` (Goodfellow et al., section 3). Shape: (B, C, H, W) -> scalar."""
        logits = self.discriminator(fake)
        return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))

    @staticmethod
    def to_model_range(images: torch.Tensor) -> torch.Tensor:
        """[0, 1] -> [-1, 1], the range of the generator's tanh."""
        return images * 2 - 1

    def training_step(self, batch, batch_idx: int) -> None:
        real = self.to_model_range(batch[0] if isinstance(batch, list | tuple) else batch)
        opt_d, opt_g = self.optimizers()
        fake = self.generator(self.sample_noise(len(real)))

        with self.toggled_optimizer(opt_d):  # only D's parameters need gradients
            d_loss, d_real, d_fake = self.discriminator_loss(real, fake.detach())
            opt_d.zero_grad()
            self.manual_backward(d_loss)
            opt_d.step()

        with self.toggled_optimizer(opt_g):  # D's parameters are frozen: its step above is not undone
            g_loss = self.generator_loss(fake)
            opt_g.zero_grad()
            self.manual_backward(g_loss)
            opt_g.step()

        n = len(real)
        self.log_dict({"train/d_loss": d_loss.detach(), "train/g_loss": g_loss.detach()}, prog_bar=True, batch_size=n)
        self.log_dict({"train/d_real": d_real, "train/d_fake": d_fake}, batch_size=n)

    def _eval_step(self, batch, batch_idx: int, stage: str) -> None:
        images = batch[0] if isinstance(batch, list | tuple) else batch
        # the same noise for a batch index every epoch; ranks draw different noise
        seed = hash((self.hparams.eval_seed, self.global_rank, batch_idx)) & 0xFFFF_FFFF
        z = self.sample_noise(len(images), torch.Generator().manual_seed(seed))
        fake = self.generator(z)
        with batch_statistics(self.discriminator):
            d_loss, d_real, d_fake = self.discriminator_loss(self.to_model_range(images), fake)
            g_loss = self.generator_loss(fake)
        metrics = {"d_loss": d_loss, "g_loss": g_loss, "d_real": d_real, "d_fake": d_fake}
        self.log_dict({f"{stage}/{k}": v for k, v in metrics.items()}, batch_size=len(images), sync_dist=True)
        fid = self.val_fid if stage == "val" else self.test_fid
        if fid is not None:
            fid.update(images, real=True)
            fid.update(fake.add(1).div(2).clamp(0, 1), real=False)
            self.log(f"{stage}/fid", fid, prog_bar=True)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "test")

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """An optimizer for D, then one for G (DCGAN, section 4), both from ``optim``."""
        return [configure_optimization(net, self.optim, self._trainer, lr=self.optim.lr)
                for net in (self.discriminator, self.generator)]
