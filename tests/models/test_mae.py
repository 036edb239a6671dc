from functools import partial

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from research.layers import sincos_grid, sincos_pos_embed_2d
from research.models import create_model, import_weights, list_models
from research.models.mae import MaskedAutoencoderViT, num_visible, random_masking

timm = pytest.importorskip("timm")

# A non-square grid (2 x 3 patches of 4 x 4) and grey images: what the official code cannot do.
TINY = dict(
    img_size=(8, 12),
    patch_size=4,
    in_chans=1,
    embed_dim=16,
    depth=2,
    num_heads=2,
    decoder_embed_dim=8,
    decoder_depth=2,
    decoder_num_heads=2,
)


def tiny(**kw) -> MaskedAutoencoderViT:
    return MaskedAutoencoderViT(**{**TINY, **kw})


def images(b=2, c=1, h=8, w=12, seed=0):
    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(seed))


class OfficialMAE(nn.Module):
    """facebookresearch/mae ``models_mae.MaskedAutoencoderViT``: its modules (timm's) and forward, transcribed.

    Only what the comparison needs: no init (the tests fill the weights) and no loss.
    """

    def __init__(
        self,
        *,
        img_size,
        patch_size,
        in_chans,
        embed_dim,
        depth,
        num_heads,
        decoder_embed_dim,
        decoder_depth,
        decoder_num_heads,
        mlp_ratio=4.0,
    ):
        super().__init__()
        from timm.layers import PatchEmbed
        from timm.models.vision_transformer import Block

        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        n = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer) for _ in range(depth)
        )
        self.norm = norm_layer(embed_dim)
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, n + 1, decoder_embed_dim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
            for _ in range(decoder_depth)
        )
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans, bias=True)

    def forward(self, imgs, mask_ratio, noise):
        # forward_encoder
        x = self.patch_embed(imgs)
        x = x + self.pos_embed[:, 1:, :]
        N, L, D = x.shape  # random_masking
        len_keep = int(L * (1 - mask_ratio))
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :len_keep]
        x = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, D))
        mask = torch.ones([N, L])
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, dim=1, index=ids_restore)
        cls_token = self.cls_token + self.pos_embed[:, :1, :]
        x = torch.cat((cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        # forward_decoder
        x = self.decoder_embed(x)
        mask_tokens = self.mask_token.repeat(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], 1)
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
        x_ = torch.gather(x_, dim=1, index=ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
        x = torch.cat([x[:, :1, :], x_], dim=1)
        x = x + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_norm(x)
        x = self.decoder_pred(x)
        return x[:, 1:, :], mask


def official_state_dict(**kw) -> dict[str, torch.Tensor]:
    """Random weights in the official key names (every tensor non-trivial, so a dropped one shows)."""
    ref = OfficialMAE(**{**TINY, **kw})
    g = torch.Generator().manual_seed(1)
    return {k: torch.randn(v.shape, generator=g) * 0.3 for k, v in ref.state_dict().items()}


# ---- masking invariants -------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(length=st.integers(2, 200), ratio=st.floats(0.01, 0.99), batch=st.integers(1, 3), seed=st.integers(0, 99))
def test_random_masking_invariants(length, ratio, batch, seed):
    keep = int(length * (1 - ratio))
    if keep < 1:
        with pytest.raises(ValueError, match="leaves no visible patch"):
            random_masking(torch.zeros(batch, length, 3), ratio)
        return
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, 3, generator=g)
    noise = torch.rand(batch, length, generator=g)
    visible, mask, ids_restore = random_masking(x, ratio, noise)
    # each sample has exactly L - int(L * (1 - r)) masked patches
    assert torch.equal(mask.sum(1), torch.full((batch,), float(length - keep)))
    # ids_restore inverts the shuffle (argsort of the noise)
    ids_shuffle = torch.argsort(noise, dim=1)
    assert torch.equal(torch.gather(ids_shuffle, 1, ids_restore), torch.arange(length).expand(batch, -1))
    # the kept tokens are those with the smallest noise, and the mask marks the others
    kept = noise <= noise.sort(dim=1).values[:, keep - 1 : keep]
    assert torch.equal(mask, (~kept).float())
    for b in range(batch):
        assert torch.equal(visible[b], x[b, ids_shuffle[b, :keep]])


def test_random_masking_differs_per_sample_and_draws_noise():
    mask = random_masking(torch.zeros(64, 49, 2), 0.75)[1]
    assert len({tuple(m.tolist()) for m in mask}) > 60  # 64 samples, distinct masks
    assert (mask.mean(0) > 0).all() and (mask.mean(0) < 1).all()  # every position masked sometimes


@pytest.mark.parametrize("in_chans", [1, 3])
def test_unpatchify_inverts_patchify(in_chans):
    model = tiny(in_chans=in_chans)
    x = images(c=in_chans)
    patches = model.patchify(x)
    assert patches.shape == (2, 6, 16 * in_chans)
    assert torch.equal(model.unpatchify(patches), x)
    # patch l is the (l // 3, l % 3) square of the image, flattened as (row, column, channel)
    torch.testing.assert_close(patches[:, 4], x[:, :, 4:8, 4:8].permute(0, 2, 3, 1).flatten(1), rtol=0, atol=0)


# ---- the model -----------------------------------------------------------------------------------


def test_forward_backward_every_trainable_parameter_gets_a_gradient():
    model = tiny()
    pred, mask = model(images())
    assert pred.shape == (2, 6, 16) and mask.shape == (2, 6)
    assert mask.sum(1).tolist() == [6 - num_visible(6, 0.75)] * 2
    pred.pow(2).mean().backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(p.grad is not None for n, p in model.named_parameters() if n in trainable)
    # the sin-cos position embeddings are fixed (Sec. 3) and equal MAE's table
    assert not model.encoder.pos_embed.requires_grad and "decoder_pos_embed" in model.state_dict()
    torch.testing.assert_close(model.encoder.pos_embed[0], sincos_pos_embed_2d((2, 3), 16, num_prefix_tokens=1))
    torch.testing.assert_close(model.decoder_pos_embed[0], sincos_pos_embed_2d((2, 3), 8, num_prefix_tokens=1))


def test_predictions_see_only_the_visible_patches():
    model = tiny().eval()
    x, noise = images(), torch.rand(2, 6, generator=torch.Generator().manual_seed(3))
    pred, mask = model(x, noise=noise)
    pixel_mask = model.unpatchify(mask[..., None].expand(-1, -1, 16)).bool()
    changed = torch.where(pixel_mask, torch.rand_like(x), x)  # new pixels in the masked patches only
    torch.testing.assert_close(model(changed, noise=noise).pred, pred, rtol=0, atol=0)
    visible_changed = torch.where(pixel_mask, x, torch.rand_like(x))
    assert not torch.allclose(model(visible_changed, noise=noise).pred, pred)


def test_mask_ratio_per_call_and_same_noise_same_mask():
    model = tiny(mask_ratio=0.5)
    noise = torch.rand(2, 6)
    assert model(images(), noise=noise).mask.sum().item() == 2 * 3
    assert model(images(), mask_ratio=0.8, noise=noise).mask.sum().item() == 2 * 5
    torch.testing.assert_close(model(images(), noise=noise).mask, model(images(seed=1), noise=noise).mask)


def test_official_weights_load_strict_and_give_the_official_predictions():
    sd = official_state_dict()
    ref = OfficialMAE(**TINY).eval()
    ref.load_state_dict(sd, strict=True)
    ours = tiny().eval()
    assert import_weights(ours, {"model": sd}) == "mae"  # the official checkpoints wrap it in "model"
    x, noise = images(), torch.rand(2, 6)
    with torch.no_grad():
        ref_pred, ref_mask = ref(x, 0.75, noise)
        pred, mask = ours(x, noise=noise)
    torch.testing.assert_close(mask, ref_mask, rtol=0, atol=0)
    torch.testing.assert_close(pred, ref_pred, atol=1e-5, rtol=1e-5)


def test_own_checkpoint_round_trip():
    a, b = tiny(), tiny()
    assert import_weights(b, {"state_dict": {f"model.{k}": v for k, v in a.state_dict().items()}}) == "research"
    noise = torch.rand(2, 6)
    torch.testing.assert_close(a(images(), noise=noise).pred, b(images(), noise=noise).pred, rtol=0, atol=0)


@pytest.mark.parametrize(
    "name,encoder",
    [
        ("mae_vit_base_patch16", (768, 12, 12, 16)),
        ("mae_vit_large_patch16", (1024, 24, 16, 16)),
        ("mae_vit_huge_patch14", (1280, 32, 16, 14)),
    ],
)
def test_paper_variants_have_the_official_shapes(name, encoder):
    dim, depth, heads, patch = encoder
    paper_decoder = dict(decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16)
    with torch.device("meta"):  # shapes only
        ours = create_model(name)
        ref = OfficialMAE(
            img_size=224, patch_size=patch, in_chans=3, embed_dim=dim, depth=depth, num_heads=heads, **paper_decoder
        )
    assert ours.decoder_blocks[0].attn.num_heads == 16 and ours.encoder.blocks[0].attn.num_heads == heads
    ours_shapes = {k.removeprefix("encoder."): v.shape for k, v in ours.state_dict().items()}
    assert ours_shapes == {k: v.shape for k, v in ref.state_dict().items()}


def test_small_variants_build_and_run():
    assert {"mae_vit_tiny_patch4_28", "mae_vit_tiny_patch4_32", "mae_vit_small_patch4_32"} <= set(list_models("mae_*"))
    model = create_model("mae_vit_tiny_patch4_28", in_chans=1, depth=1, decoder_depth=1)
    assert model.grid_size == (7, 7) and model(torch.rand(1, 1, 28, 28)).pred.shape == (1, 49, 16)
    assert create_model("mae_vit_small_patch4_32", depth=1).grid_size == (8, 8)


# ---- the encoder in a ViT classifier -------------------------------------------------------------


def vit(**kw):
    spec = dict(img_size=(8, 12), patch_size=4, in_chans=1, embed_dim=16, depth=2, num_heads=2, num_classes=5)
    return create_model("vit_tiny_patch16_224", **{**spec, **kw})


@pytest.mark.parametrize("source", ["ours", "official"])
def test_encoder_loads_into_a_vit_classifier(source):
    mae = tiny()
    sd = mae.state_dict() if source == "ours" else official_state_dict()
    if source == "official":
        import_weights(mae, sd)
    classifier = vit()
    head = {k: v.clone() for k, v in classifier.state_dict().items() if k.startswith("head.")}
    assert import_weights(classifier, sd) == "mae"
    for k, v in mae.encoder.state_dict().items():
        if not k.startswith("head."):
            torch.testing.assert_close(classifier.state_dict()[k], v, rtol=0, atol=0, msg=k)
    for k, v in head.items():  # the head stays freshly initialised
        assert torch.equal(classifier.state_dict()[k], v)
    # the class token's features are the MAE encoder's on the unmasked image
    x = images()
    with torch.no_grad():
        enc = mae.encoder
        tokens = torch.cat([enc.cls_token.expand(2, -1, -1), enc.patch_embed(x)], 1) + enc.pos_embed
        expected = enc.norm(enc.blocks(tokens))[:, 0]
        torch.testing.assert_close(classifier.forward_head(classifier.forward_features(x), pre_logits=True), expected)


def test_encoder_loads_at_another_size_and_with_average_pooling():
    sd = create_model("mae_vit_tiny_patch4_28", in_chans=1, embed_dim=16, num_heads=2, depth=1).state_dict()
    classifier = vit(img_size=32, embed_dim=16, depth=1, global_pool="avg")
    assert import_weights(classifier, sd) == "mae"
    assert classifier.pos_embed.shape == (1, 1 + 64, 16)  # 7x7 grid resampled to 8x8
    assert classifier.pos_embed.requires_grad  # a learned table from here on
    # MAE's fine-tuning with average pooling drops the encoder's norm for a fresh fc_norm
    assert "norm.weight" not in classifier.state_dict() and "fc_norm.weight" in classifier.state_dict()


# ---- bad input -----------------------------------------------------------------------------------


def test_image_size_not_divisible_by_patch_is_a_clear_error():
    with pytest.raises(ValueError, match="not divisible by patch_size=4"):
        tiny(img_size=30)
    with pytest.raises(ValueError, match="input is 8x8 but this was built for 8x12"):
        tiny()(torch.rand(1, 1, 8, 8))


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_mask_ratio_outside_zero_one_is_a_clear_error(ratio):
    with pytest.raises(ValueError, match="mask_ratio must lie strictly between 0 and 1"):
        tiny(mask_ratio=ratio)
    with pytest.raises(ValueError, match="mask_ratio must lie strictly between 0 and 1"):
        tiny()(images(), mask_ratio=ratio)
    with pytest.raises(ValueError, match="leaves no visible patch out of 6"):
        tiny(mask_ratio=0.9)


def test_checkpoint_of_another_architecture_is_refused():
    with pytest.raises(ValueError, match="match none of the layouts known for VisionTransformer"):
        import_weights(vit(), create_model("resnet20").state_dict())
    with pytest.raises(ValueError, match=r"mae weights do not fit this VisionTransformer: .*shape mismatch"):
        import_weights(vit(), tiny(embed_dim=32).state_dict())  # another width
    with pytest.raises(ValueError, match="mae weights do not fit .*missing"):
        import_weights(vit(depth=3), tiny().state_dict())  # another depth
    with pytest.raises(ValueError, match="match none of the layouts known for ResNet"):
        import_weights(create_model("resnet20"), tiny().state_dict())
    with pytest.raises(ValueError, match="match none of the layouts known for MaskedAutoencoderViT"):
        import_weights(tiny(), vit().state_dict())


# ---- position tables of another patch grid -------------------------------------------------------


@pytest.mark.parametrize("source_size,target_size", [((32, 32), (16, 64)), ((16, 64), (32, 32)), ((16, 32), (24, 24))])
def test_encoder_table_is_resampled_from_its_own_grid_into_a_vit(source_size, target_size):
    # 8x8 -> 4x16 has the same 64 tokens: the import used to copy the table (max 1.99 off the resample).
    # A non-square MAE grid is read from its sin-cos table, so 4x16 -> 8x8 and 4x8 -> 6x6 are right too.
    from timm.layers import resample_abs_pos_embed

    mae = tiny(img_size=source_size)
    classifier = vit(img_size=target_size)
    assert import_weights(classifier, mae.state_dict()) == "mae"
    old, new = mae.grid_size, classifier.patch_embed.grid_size
    expected = resample_abs_pos_embed(mae.encoder.pos_embed, list(new), list(old), num_prefix_tokens=1)
    torch.testing.assert_close(classifier.pos_embed.detach(), expected, rtol=0, atol=0)


def test_mae_of_another_grid_keeps_its_own_sincos_tables():
    source, target = tiny(img_size=(32, 32)), tiny(img_size=(16, 64))  # 8x8 and 4x16: 64 patches each
    own = {k: v.clone() for k, v in target.state_dict().items() if "pos_embed" in k}
    import_weights(target, source.state_dict())
    for key, table in own.items():
        torch.testing.assert_close(target.state_dict()[key], table, rtol=0, atol=0, msg=key)
    torch.testing.assert_close(target.encoder.blocks[0].attn.qkv.weight, source.encoder.blocks[0].attn.qkv.weight)
    grown = tiny(img_size=(16, 16))  # 4x4: another count, the model's own tables too
    import_weights(grown, tiny().state_dict())
    assert sincos_grid(grown.decoder_pos_embed) == (4, 4) and sincos_grid(grown.encoder.pos_embed) == (4, 4)
    with pytest.raises(ValueError, match=r"shape mismatch .*patch_embed.proj.weight"):
        import_weights(tiny(img_size=(16, 24), patch_size=8), tiny().state_dict())  # decoder predicts 4x4 patches
