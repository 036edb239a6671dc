import pytest
import torch

from research.models import create_model, import_weights, list_models
from research.models.vit import VisionTransformer

timm = pytest.importorskip("timm")

TINY = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=5)


def images(size, batch=2, chans=3):
    return torch.randn(batch, chans, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("vit_tiny_patch16_224", {}),
        ("vit_small_patch16_224", {}),
        # the pooling variants differ only after the blocks: two blocks keep them fast
        ("vit_tiny_patch16_224", {"global_pool": "avg", "depth": 2}),
        ("vit_tiny_patch16_224", {"global_pool": "avg", "class_token": False, "depth": 2}),
    ],
)
def test_timm_weights_give_timm_logits(name, kwargs):
    ref = timm.create_model(name, pretrained=False, **kwargs).eval()
    ours = create_model(name, **kwargs).eval()
    assert import_weights(ours, ref.state_dict()) == "timm"
    x = images(224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("img_size", [160, 256])
def test_weights_from_224_are_resampled_like_timm(img_size):
    from timm.models.vision_transformer import checkpoint_filter_fn

    weights_224 = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2).state_dict()
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2, img_size=img_size).eval()
    ref.load_state_dict(checkpoint_filter_fn(weights_224, ref), strict=True)
    ours = create_model("vit_tiny_patch16_224", depth=2, img_size=img_size).eval()
    import_weights(ours, weights_224)
    assert ours.pos_embed.shape == (1, 1 + (img_size // 16) ** 2, 192)
    x = images(img_size)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-4, rtol=1e-4)


def test_own_checkpoint_round_trip():
    a, b = VisionTransformer(**TINY).eval(), VisionTransformer(**TINY).eval()
    import_weights(b, {"state_dict": {f"model.{k}": v for k, v in a.state_dict().items()}})
    x = images(16)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


def test_vit_base_parameter_count():
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = create_model("vit_base_patch16_224")
    assert sum(p.numel() for p in model.parameters()) == 86_567_656


@pytest.mark.parametrize("name", list_models("vit_*"))
def test_variants_have_timm_shapes(name):
    # timm has no patch4_32 variants: compare with its same-width model rebuilt for 32x32 images
    timm_name, overrides = name, {}
    if name.endswith("_patch4_32"):
        timm_name, overrides = name.replace("patch4_32", "patch16_224"), dict(img_size=32, patch_size=4)
    with torch.device("meta"):  # shapes only: no memory, no init cost
        ours = create_model(name)
        # num_classes pinned: some timm configs default to 0 or 21843 (ImageNet-21k heads)
        ref = timm.create_model(timm_name, pretrained=False, num_classes=1000, **overrides)
    shapes = {k: v.shape for k, v in ours.state_dict().items()}
    assert shapes == {k: v.shape for k, v in ref.state_dict().items()}


def test_factory_overrides():
    model = create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=4, in_chans=1)
    assert model.patch_embed.grid_size == (8, 8) and model.embed_dim == 192
    assert model(images(32, chans=1)).shape == (2, 10)


@pytest.mark.parametrize("global_pool,class_token", [("token", True), ("avg", True), ("avg", False)])
def test_forward_backward_every_parameter_gets_a_gradient(global_pool, class_token):
    torch.manual_seed(0)
    model = VisionTransformer(
        **TINY, global_pool=global_pool, class_token=class_token, drop_rate=0.1, drop_path_rate=0.1
    ).train()
    logits = model(images(16))
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    logits.logsumexp(dim=1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for {name}"


def test_features_head_and_headless():
    model = VisionTransformer(**TINY).eval()
    x = images(16)
    tokens = model.forward_features(x)
    assert tokens.shape == (2, 1 + 16, 32)
    torch.testing.assert_close(model.forward_head(tokens), model(x))
    pooled = model.forward_head(tokens, pre_logits=True)
    torch.testing.assert_close(model.head(pooled), model(x))
    headless = VisionTransformer(**{**TINY, "num_classes": 0}).eval()
    headless.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("head.")})
    torch.testing.assert_close(headless(x), pooled)


def test_drop_path_rises_linearly_and_init_matches_timm():
    model = VisionTransformer(**{**TINY, "depth": 5}, drop_path_rate=0.2)
    rates = [getattr(block.drop_path, "drop_prob", 0.0) for block in model.blocks]  # Identity at 0
    assert rates == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    assert model.cls_token.std() < 1e-4 and 0.01 < model.pos_embed.std() < 0.03
    assert torch.equal(model.blocks[0].attn.qkv.bias, torch.zeros(96))


def test_errors():
    with pytest.raises(ValueError, match="global_pool must be 'token' or 'avg', got 'max'"):
        VisionTransformer(**TINY, global_pool="max")
    with pytest.raises(ValueError, match="pass class_token=True or global_pool='avg'"):
        VisionTransformer(**TINY, class_token=False)
    with pytest.raises(ValueError, match="img_size=.* is not divisible by patch_size=16"):
        create_model("vit_tiny_patch16_224", img_size=100)
    model = VisionTransformer(**TINY)
    with pytest.raises(ValueError, match="input is 32x32 but this was built for 16x16; pass img_size=32"):
        model(images(32))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\).*pass in_chans=1"):
        model(images(16, chans=1))


def test_foreign_or_mismatched_weights_are_refused():
    torchvision = pytest.importorskip("torchvision")
    model = VisionTransformer(**TINY)
    with pytest.raises(ValueError, match="match none of the layouts"):
        import_weights(model, torchvision.models.resnet18().state_dict())
    # an MAE pre-training checkpoint has a ViT's keys and more: not ours to claim as "timm"
    mae_like = {
        **model.state_dict(),
        "mask_token": torch.zeros(1, 1, 32),
        "decoder_embed.weight": torch.zeros(8, 32),
    }
    with pytest.raises(ValueError, match="match none of the layouts"):
        import_weights(model, mae_like)
    other = VisionTransformer(**{**TINY, "num_classes": 7}).state_dict()
    with pytest.raises(ValueError, match="do not fit"):
        import_weights(model, other)


# ---- grid-shaped tensors are converted by their grid, not their size ----------------------------


def test_an_8x8_checkpoint_at_a_4x16_grid_is_resampled_not_copied():
    # Same 64 tokens: the import used to copy pos_embed unchanged, scrambling the layout (max 0.086 off).
    from timm.layers import resample_abs_pos_embed

    source = VisionTransformer(**{**TINY, "img_size": 32}).eval()  # 8x8 patches
    target = VisionTransformer(**{**TINY, "img_size": (16, 64)}).eval()  # 4x16 patches
    with pytest.warns(UserWarning, match="read as a square 8x8 grid"):
        import_weights(target, source.state_dict())
    expected = resample_abs_pos_embed(source.pos_embed.detach(), [4, 16], [8, 8], num_prefix_tokens=1)
    torch.testing.assert_close(target.pos_embed.detach(), expected, rtol=0, atol=0)
    # stating the grid gives the same, silently; a 4x16 checkpoint (our own round trip) loads as is
    again = VisionTransformer(**{**TINY, "img_size": (16, 64)})
    import_weights(again, source.state_dict(), source_grid=(8, 8))
    torch.testing.assert_close(again.pos_embed, target.pos_embed, rtol=0, atol=0)
    import_weights(again, target.state_dict(), source_grid=(4, 16))
    torch.testing.assert_close(again.pos_embed, target.pos_embed, rtol=0, atol=0)


def test_timm_weights_at_a_non_square_size_equal_timms_own_resampling():
    from timm.models.vision_transformer import checkpoint_filter_fn

    weights = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2).state_dict()  # 14x14
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2, img_size=(112, 448)).eval()
    ref.load_state_dict(checkpoint_filter_fn(weights, ref), strict=True)
    ours = create_model("vit_tiny_patch16_224", depth=2, img_size=(112, 448)).eval()  # 7x28: 196 tokens too
    with pytest.warns(UserWarning, match="14x14"):
        import_weights(ours, weights)
    torch.testing.assert_close(ours.pos_embed, ref.pos_embed, rtol=0, atol=0)
    x = torch.randn(1, 3, 112, 448, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-4, rtol=1e-4)


def test_another_patch_size_resamples_the_kernel_like_timm():
    from timm.models.vision_transformer import checkpoint_filter_fn

    weights = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2).state_dict()
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2, patch_size=32).eval()
    ref.load_state_dict(checkpoint_filter_fn(weights, ref), strict=True)
    ours = create_model("vit_tiny_patch16_224", depth=2, patch_size=32).eval()
    import_weights(ours, weights)
    torch.testing.assert_close(ours.patch_embed.proj.weight, ref.patch_embed.proj.weight, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(ours(images(224)), ref(images(224)), atol=1e-4, rtol=1e-4)


def test_a_grid_the_checkpoint_cannot_tell_is_refused_until_given():
    source = VisionTransformer(**{**TINY, "img_size": (16, 32)})  # 4x8: 32 tokens, not a square
    target = VisionTransformer(**{**TINY, "img_size": 32})
    with pytest.raises(ValueError, match=r"32 grid positions, which is not a square.*pass source_grid"):
        import_weights(target, source.state_dict())
    import_weights(target, source.state_dict(), source_grid=(4, 8))
    assert target.pos_embed.shape == (1, 1 + 64, 32)
    with pytest.raises(ValueError, match=r"source_grid=\(3, 3\) has 9 positions"):
        import_weights(target, source.state_dict(), source_grid=(3, 3))
    with pytest.raises(ValueError, match="ResNet has none to resample: drop source_grid"):
        import_weights(create_model("resnet20"), create_model("resnet20").state_dict(), source_grid=(4, 4))
