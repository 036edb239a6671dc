"""MAE's Table 1c ablation, "encoder w/ [M]" (He et al. 2022): the encoder runs on every patch, the masked
ones replaced by the learned mask token; the paper's default skips them (tests/models/test_mae.py)."""

import torch
from torch.utils.flop_counter import FlopCounterMode

from research.models import create_model, import_weights
from research.models.mae import MaskedAutoencoderViT

TINY = dict(img_size=(8, 12), patch_size=4, in_chans=1, embed_dim=16, depth=2, num_heads=2, decoder_embed_dim=8,
            decoder_depth=1, decoder_num_heads=2)


def images(seed=0):
    return torch.rand(2, 1, 8, 12, generator=torch.Generator().manual_seed(seed))


def test_the_encoder_sees_every_position_and_the_masked_ones_only_as_the_mask_token():
    model = MaskedAutoencoderViT(**TINY, mask_token_in_encoder=True).eval()
    x, noise = images(), torch.rand(2, 6, generator=torch.Generator().manual_seed(3))
    latent, mask, _ = model.forward_encoder(x, 0.5, noise)
    assert latent.shape == (2, 1 + 6, 16) and model.mask_token.shape == (1, 1, 16)  # the encoder's width
    default = MaskedAutoencoderViT(**TINY)
    torch.testing.assert_close(mask, default.forward_encoder(x, 0.5, noise)[1])  # the same noise, the same mask
    pred = model(x, 0.5, noise).pred
    pixel_mask = model.unpatchify(mask[..., None].expand(-1, -1, 16)).bool()
    changed = torch.where(pixel_mask, torch.rand_like(x), x)  # new pixels where masked: the [M] hides them
    torch.testing.assert_close(model(changed, 0.5, noise).pred, pred, rtol=0, atol=0)
    # the encoder's input: the patch embeddings with [M] in place of the masked ones, then the positions
    enc = model.encoder
    tokens = torch.where(mask[..., None].bool(), model.mask_token, enc.patch_embed(x)) + enc.pos_embed[:, 1:]
    tokens = torch.cat([(enc.cls_token + enc.pos_embed[:, :1]).expand(2, -1, -1), tokens], 1)
    torch.testing.assert_close(latent, enc.norm(enc.blocks(tokens)))


def test_every_parameter_trains_and_the_encoder_loads_into_a_vit():
    model = MaskedAutoencoderViT(**TINY, mask_token_in_encoder=True)
    model(images()).pred.pow(2).mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    vit = create_model("vit_tiny_patch16_224", img_size=(8, 12), patch_size=4, in_chans=1, embed_dim=16, depth=2,
                       num_heads=2, num_classes=5)
    assert import_weights(vit, model.state_dict()) == "mae"  # the mask token goes with the decoder's keys
    torch.testing.assert_close(vit.blocks[0].attn.qkv.weight, model.encoder.blocks[0].attn.qkv.weight)


def test_the_encoder_costs_l_plus_1_over_visible_plus_1_times_in_its_linear_layers():
    counts = {}
    for inside in (True, False):
        model = create_model("mae_vit_tiny_patch4_28", in_chans=1, mask_token_in_encoder=inside)
        with FlopCounterMode(display=False) as counter:
            model.forward_encoder(torch.rand(2, 1, 28, 28), 0.75)
        counts[inside] = counter.get_flop_counts()["Global"]
    # linear layers scale with the tokens: 49 + 1 with [M], 12 + 1 without; attention with their square
    linear = {inside: counts[inside][torch.ops.aten.addmm] for inside in counts}
    assert linear[True] * 13 == linear[False] * 50
