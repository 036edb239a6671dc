import copy
import logging
from functools import partial

import pytest
import torch
from conftest import trainer as quiet_trainer
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from research.callbacks import GANSamples
from research.models import create_model
from research.tasks import GAN
from research.tasks.gan import batch_statistics

LATENT, SIZE, BATCH = 8, 16, 16
GENERATOR = {"name": "dcgan_generator", "latent_dim": LATENT, "img_size": SIZE, "out_chans": 1, "base_width": 4}
DISCRIMINATOR = {"name": "dcgan_discriminator", "img_size": SIZE, "in_chans": 1, "base_width": 4}


def images(n=BATCH, seed=0):
    """Bright squares on black, in [0, 1], each at a random place: a tiny stand-in for digits."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, SIZE, SIZE)
    for i, (r, c) in enumerate(torch.randint(0, SIZE - 6, (n, 2), generator=g).tolist()):
        x[i, :, r : r + 6, c : c + 6] = 1
    return x


def loader(x):
    return DataLoader(TensorDataset(x, torch.zeros(len(x), dtype=torch.long)), batch_size=BATCH)


trainer = partial(quiet_trainer, num_sanity_val_steps=0)


@pytest.fixture
def one_step():
    """A tiny GAN before and after one training step (one D step, then one G step) on a fixed batch and noise."""
    task = GAN(GENERATOR, DISCRIMINATOR)
    z = torch.randn(BATCH, LATENT)
    task.sample_noise = lambda n, generator=None: z[:n]  # the step's noise, known to the test
    before = copy.deepcopy(task)
    real = images()
    trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0).fit(task, train_dataloaders=loader(real))
    assert task.trainer.global_step == 2  # the two optimizer steps
    return before.train(), task.train(), GAN.to_model_range(real), z


def test_one_discriminator_step_lowers_the_discriminator_loss(one_step):
    before, after, real, z = one_step
    with torch.no_grad():
        fake = before.generator(z)  # the samples the D step saw (G in train mode, as in the step)
        loss_before = before.discriminator_loss(real, fake)[0]
        loss_after = after.discriminator_loss(real, fake)[0]
    assert loss_after < loss_before


def test_one_generator_step_lowers_the_non_saturating_loss(one_step):
    before, after, _, z = one_step
    with torch.no_grad():  # both under the discriminator after its step, which the G step faced
        loss_before = after.generator_loss(before.generator(z))
        loss_after = after.generator_loss(after.generator(z))
    assert loss_after < loss_before
    # the G step leaves D alone: its parameters changed only through the D step, once
    assert not torch.equal(next(before.discriminator.parameters()), next(after.discriminator.parameters()))


def test_losses_are_the_papers():
    task = GAN(GENERATOR, DISCRIMINATOR)
    real, fake = GAN.to_model_range(images(4)), task.generator(torch.randn(4, LATENT))
    d_real, d_fake = task.discriminator(real).sigmoid(), task.discriminator(fake).sigmoid()
    loss, mean_real, mean_fake = task.discriminator_loss(real, fake)
    # eq. (1), negated and averaged: -log D(x) - log(1 - D(G(z)))
    torch.testing.assert_close(loss, -(d_real.log().mean() + (1 - d_fake).log().mean()))
    torch.testing.assert_close(mean_real, d_real.mean().detach())
    torch.testing.assert_close(mean_fake, d_fake.mean().detach())
    # the non-saturating generator loss -log D(G(z)), not log(1 - D(G(z)))
    torch.testing.assert_close(task.generator_loss(fake), -d_fake.log().mean())


def test_held_out_discriminator_uses_batch_statistics_and_leaves_running_ones():
    task = GAN(GENERATOR, DISCRIMINATOR).eval()
    x = GAN.to_model_range(images(8))
    norm = next(m for m in task.discriminator.modules() if isinstance(m, torch.nn.BatchNorm2d))
    running = norm.running_mean.clone()
    with torch.no_grad(), batch_statistics(task.discriminator):
        held_out = task.discriminator(x)
    torch.testing.assert_close(norm.running_mean, running)  # no update
    assert not task.discriminator.training and norm.track_running_stats  # modes restored
    with torch.no_grad():
        training_view = task.discriminator.train()(x)  # what the training step sees
        eval_view = task.discriminator.eval()(x)
    torch.testing.assert_close(held_out, training_view)
    assert not torch.allclose(held_out, eval_view)


def tiny_classifier_checkpoint(path):
    """What ImageClassification writes, reduced to what the FID extractor reads."""
    spec = {"name": "five_layer_cnn", "num_classes": 2, "img_size": SIZE, "hidden_dim": 6}
    model = create_model(**spec)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"hyper_parameters": {"model": spec, "mean": (0.2,), "std": (0.4,)}, "state_dict": state}, path)
    return path


def test_fid_is_logged_and_stays_out_of_checkpoints(tmp_path):
    extractor = tiny_classifier_checkpoint(tmp_path / "classifier.ckpt")
    task = GAN(GENERATOR, DISCRIMINATOR, fid_extractor=str(extractor))
    assert task.checkpoint_monitor == ("val/fid", "min")
    run = trainer(max_epochs=1, limit_train_batches=2)
    run.fit(task, train_dataloaders=loader(images(32)), val_dataloaders=loader(images(32, seed=1)))
    assert torch.isfinite(run.callback_metrics["val/fid"]) and run.callback_metrics["val/fid"] > 0
    assert not any("fid" in k for k in task.state_dict())  # the extractor is rebuilt from its own checkpoint
    run.save_checkpoint(tmp_path / "gan.ckpt")
    metrics = trainer().test(task, dataloaders=loader(images(32, seed=1)), ckpt_path=tmp_path / "gan.ckpt")[0]
    assert {"test/fid", "test/d_loss", "test/g_loss", "test/d_real", "test/d_fake"} <= set(metrics)


def test_a_checkpoint_of_other_networks_is_a_clear_error(tmp_path):
    task = GAN(GENERATOR, DISCRIMINATOR)
    trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0).fit(task, train_dataloaders=loader(images()))
    task.trainer.save_checkpoint(tmp_path / "gan.ckpt")
    wider = GAN({**GENERATOR, "base_width": 8}, DISCRIMINATOR)
    with pytest.raises(ValueError, match="does not hold this run's generator/discriminator.*shape mismatch"):
        trainer().test(wider, dataloaders=loader(images()), ckpt_path=tmp_path / "gan.ckpt")


def test_fid_orders_same_set_other_real_set_and_noise(tmp_path):
    task = GAN(GENERATOR, DISCRIMINATOR, fid_extractor=str(tiny_classifier_checkpoint(tmp_path / "c.ckpt")))
    real = images(64)

    def fid(other):
        task.val_fid.reset()
        task.val_fid.update(real, real=True)
        task.val_fid.update(other, real=False)
        return task.val_fid.compute().item()

    same, other_real, noise = fid(real), fid(images(64, seed=1)), fid(torch.rand_like(real))
    assert abs(same) < 1e-4 < other_real < noise


def test_without_extractor_fid_is_skipped_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        task = GAN(GENERATOR, DISCRIMINATOR)
    assert "FID is skipped" in caplog.text and task.checkpoint_monitor == (None, "min")
    metrics = trainer().test(task, dataloaders=loader(images()))[0]
    assert set(metrics) == {"test/d_loss", "test/g_loss", "test/d_real", "test/d_fake"}


def test_missing_extractor_checkpoint_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="mnist_five_layer_cnn.yaml"):
        GAN(GENERATOR, DISCRIMINATOR, fid_extractor=str(tmp_path / "nope.ckpt"))


def test_samples_callback_draws_the_same_noise_every_epoch(tmp_path):
    task = GAN(GENERATOR, DISCRIMINATOR)
    callback = GANSamples(num_images=6, nrow=3, dirpath=tmp_path)
    run = trainer(max_epochs=2, limit_train_batches=1, limit_val_batches=0, callbacks=[callback])
    run.fit(task, train_dataloaders=loader(images()))
    grids = sorted((tmp_path / "gan_samples").glob("*.png"))
    assert [p.name for p in grids] == ["epoch=000.png", "epoch=001.png"] and callback.last_path == grids[-1]
    assert Image.open(grids[-1]).size == (3 * SIZE + 4 * 2, 2 * SIZE + 3 * 2)  # 3 x 2 images, 2-pixel padding
    again = task.sample(callback._noise)
    torch.testing.assert_close(task.sample(callback._noise), again)


def test_sample_restores_the_generator_mode():
    task = GAN(GENERATOR, DISCRIMINATOR).train()
    out = task.sample(torch.randn(2, LATENT))
    assert task.generator.training and out.min() >= 0 and out.max() <= 1


def test_a_generator_without_latent_dim_is_a_clear_error():
    with pytest.raises(ValueError, match="must have an int latent_dim"):
        GAN(torch.nn.Linear(2, 2), DISCRIMINATOR)
    with pytest.raises(ValueError, match="GANSamples draws a generator's samples"):
        GANSamples().setup(None, torch.nn.Linear(2, 2), "fit")
