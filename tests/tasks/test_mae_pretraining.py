import lightning as L
import pytest
import torch
from conftest import trainer

from research.data import SyntheticDataModule
from research.models import create_model
from research.models.mae import MaskedAutoencoderViT
from research.tasks import ImageClassification, MAEPretraining
from research.tasks.mae import masked_patch_mse

# 8 x 12 grey images, 4 x 4 patches: a 2 x 3 grid
TINY = dict(
    img_size=(8, 12),
    patch_size=4,
    in_chans=1,
    embed_dim=16,
    depth=1,
    num_heads=2,
    decoder_embed_dim=8,
    decoder_depth=1,
    decoder_num_heads=2,
)
# the same for the datamodule's square 16 x 16 images
SQUARE = {**TINY, "img_size": 16, "in_chans": 3}




def synthetic(**kw) -> SyntheticDataModule:
    return SyntheticDataModule(
        **{"num_samples": 64, "num_classes": 4, "img_size": 16, "in_chans": 3, "batch_size": 8, **kw}
    )


def reference_loss(imgs, pred, noise, mask_ratio, patch, norm_pix=False):
    """The paper's loss, written from its Sec. 3 and nothing of ours.

    The int(L * (1 - r)) patches with the smallest noise are visible, the rest masked; a patch is
    the P x P square at (row, column) = divmod(l, W / P), its prediction pred[b, l] in (row,
    column, channel) order; the loss is the mean over all masked patches of the mean squared
    error over their pixels.
    """
    b, c, h, w = imgs.shape
    length, cols = (h // patch) * (w // patch), w // patch
    keep = int(length * (1 - mask_ratio))
    errors = []
    for i in range(b):
        visible = set(sorted(range(length), key=lambda n: noise[i, n].item())[:keep])
        for n in range(length):
            if n in visible:
                continue
            r, col = divmod(n, cols)
            square = imgs[i, :, r * patch : (r + 1) * patch, col * patch : (col + 1) * patch]
            target = square.permute(1, 2, 0).reshape(-1)
            if norm_pix:
                target = (target - target.mean()) / (target.var() + 1e-6) ** 0.5
            errors.append(((pred[i, n] - target) ** 2).mean())
    return torch.stack(errors).mean()


@pytest.mark.parametrize("norm_pix", [False, True])
@pytest.mark.parametrize("in_chans", [1, 3])
def test_loss_equals_the_papers_definition(norm_pix, in_chans):
    task = MAEPretraining({**TINY, "name": "mae_vit_tiny_patch4_28", "in_chans": in_chans}, norm_pix_loss=norm_pix)
    imgs = torch.rand(3, in_chans, 8, 12)
    noise = torch.rand(3, 6)
    pred, target, mask = task(imgs, noise)
    expected = reference_loss(imgs, pred, noise, 0.75, 4, norm_pix)
    torch.testing.assert_close(masked_patch_mse(pred, target, mask), expected)


def test_images_are_normalised_first():
    task = MAEPretraining(MaskedAutoencoderViT(**TINY), mean=(0.5,), std=(0.25,), mask_ratio=0.5)
    imgs, noise = torch.rand(2, 1, 8, 12), torch.rand(2, 6)
    pred, target, mask = task(imgs, noise)
    torch.testing.assert_close(target, task.model.patchify((imgs - 0.5) / 0.25))
    torch.testing.assert_close(pred, task.model((imgs - 0.5) / 0.25, 0.5, noise).pred)
    assert mask.sum().item() == 2 * 3


def test_overfits_one_batch():
    L.seed_everything(0)
    task = MAEPretraining(MaskedAutoencoderViT(**{**TINY, "embed_dim": 32, "decoder_embed_dim": 32}))
    imgs, noise = torch.rand(4, 1, 8, 12), torch.rand(4, 6)
    optimizer = torch.optim.AdamW(task.parameters(), lr=5e-3)
    first = masked_patch_mse(*task(imgs, noise)).item()
    for _ in range(60):
        optimizer.zero_grad()
        loss = masked_patch_mse(*task(imgs, noise))
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1 * first


def test_fit_logs_losses_and_scales_the_learning_rate_with_the_effective_batch():
    task = MAEPretraining({**SQUARE, "name": "mae_vit_tiny_patch4_32"}, optim={"warmup_epochs": 0})
    t = trainer(max_epochs=1, limit_train_batches=4, limit_val_batches=2, accumulate_grad_batches=2)
    t.fit(task, datamodule=synthetic())
    assert task.lr == pytest.approx(1.5e-4 * 8 * 2 / 256)  # base_lr x batch x accumulation / 256
    optimizer = t.optimizers[0]
    assert optimizer.defaults["betas"] == (0.9, 0.95)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.05, 0.0]
    assert {"train/loss", "val/loss"} <= set(t.callback_metrics)
    assert task.hparams.mean == tuple(synthetic().mean)
    # frozen sin-cos position embeddings never enter the optimizer
    params = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert id(task.model.encoder.pos_embed) not in params


def test_an_explicit_lr_wins_and_validation_masks_are_fixed():
    task = MAEPretraining({**SQUARE, "name": "mae_vit_tiny_patch4_32"},
                          optim={"lr": 1e-3, "reference_batch": None, "warmup_epochs": 0})
    t = trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=2)
    t.fit(task, datamodule=synthetic())
    assert task.lr == 1e-3
    first = t.validate(task, datamodule=synthetic(), verbose=False)[0]["val/loss"]
    again = t.validate(task, datamodule=synthetic(), verbose=False)[0]["val/loss"]
    assert first == again


def test_bad_input_stops_before_training():
    with pytest.raises(ValueError, match="mask_ratio must lie strictly between 0 and 1"):
        MAEPretraining({**SQUARE, "name": "mae_vit_tiny_patch4_32"}, mask_ratio=1.0)
    with pytest.raises(ValueError, match="not divisible by patch_size=4"):
        MAEPretraining({**SQUARE, "name": "mae_vit_tiny_patch4_32", "img_size": 18})
    with pytest.raises(ValueError, match="needs a masked autoencoder"):
        MAEPretraining({"name": "resnet20", "num_classes": 4})
    task = MAEPretraining({**SQUARE, "name": "mae_vit_tiny_patch4_32", "img_size": 32})
    with pytest.raises(ValueError, match="cannot take this data's images .*built for 32x32"):
        trainer(max_steps=1).fit(task, datamodule=synthetic())


def pretrain_checkpoint(tmp_path):
    task = MAEPretraining({**SQUARE, "name": "mae_vit_tiny_patch4_32"}, optim={"warmup_epochs": 0})
    t = trainer(max_steps=2, limit_val_batches=0)
    t.fit(task, datamodule=synthetic())
    t.save_checkpoint(tmp_path / "mae.ckpt")
    return tmp_path / "mae.ckpt", task


VIT = {
    "name": "vit_tiny_patch4_32",
    "img_size": 16,
    "in_chans": 3,
    "embed_dim": 16,
    "depth": 1,
    "num_heads": 2,
    "num_classes": 4,
}


def test_fine_tune_and_linear_probe_from_an_mae_checkpoint(tmp_path):
    ckpt, mae = pretrain_checkpoint(tmp_path)
    encoder = mae.model.encoder.state_dict()
    finetune = ImageClassification(VIT, pretrained=str(ckpt))
    for k, v in finetune.model.state_dict().items():
        if not k.startswith("head."):
            torch.testing.assert_close(v, encoder[k], rtol=0, atol=0, msg=k)
    # at another image size the position embeddings are resampled (4x4 grid -> 6x6)
    bigger = ImageClassification({**VIT, "img_size": 24}, pretrained=str(ckpt))
    assert bigger.model.pos_embed.shape == (1, 37, 16)

    probe = ImageClassification(VIT, pretrained=str(ckpt), linear_probe=True, optim={"lr": 0.1, "name": "sgd"})
    before = {k: v.clone() for k, v in probe.model.state_dict().items()}
    t = trainer(max_steps=3, limit_val_batches=1)
    t.fit(probe, datamodule=synthetic())
    for k, v in probe.model.state_dict().items():
        assert torch.equal(v, before[k]), k  # the encoder is frozen
    # the probe's checkpoint holds every weight: it loads without the pre-training checkpoint
    t.save_checkpoint(tmp_path / "probe.ckpt")
    ckpt.unlink()
    restored = ImageClassification.load_from_checkpoint(tmp_path / "probe.ckpt", weights_only=True)
    assert restored.probe is not None and torch.equal(restored.probe[1].weight, probe.probe[1].weight)


def test_checkpoint_of_another_architecture_for_fine_tuning_is_refused(tmp_path):
    ckpt, _ = pretrain_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="cannot initialise .*mae weights do not fit"):
        ImageClassification({**VIT, "embed_dim": 32}, pretrained=str(ckpt))
    with pytest.raises(ValueError, match="cannot initialise .*match none of the layouts known for ResNet"):
        ImageClassification({"name": "resnet20", "num_classes": 4}, pretrained=str(ckpt))
    torch.save({"state_dict": create_model("resnet20").state_dict()}, tmp_path / "resnet.ckpt")
    with pytest.raises(ValueError, match="match none of the layouts known for VisionTransformer"):
        ImageClassification(VIT, pretrained=str(tmp_path / "resnet.ckpt"))
