import re

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from research.models import create_model, import_weights, list_models
from research.models.swin import SwinTransformer

timm = pytest.importorskip("timm")

# Two stages with 4x4 windows: the shift, the mask and one patch merging, in milliseconds.
TINY = dict(img_size=16, patch_size=2, embed_dim=8, depths=(2, 2), num_heads=(1, 2), window_size=4, num_classes=5)


def images(size, batch=2, chans=3):
    h, w = (size, size) if isinstance(size, int) else size
    return torch.randn(batch, chans, h, w, generator=torch.Generator().manual_seed(0))


def timm_tiny(**kwargs):
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, **kwargs).eval()


def test_timm_swin_tiny_weights_give_timm_logits():
    ref = timm_tiny()
    ours = create_model("swin_tiny_patch4_window7_224").eval()
    assert import_weights(ours, ref.state_dict()) == "timm"
    x = images(224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-4, rtol=1e-4)


def test_non_square_images_shrink_and_shift_each_axis_like_timm():
    # (224, 112): stage 3 is 14x7, so only the height shifts; stage 4 is 7x4 with a 7x4 window
    kwargs = dict(img_size=(224, 112), depths=(2, 2, 2, 2))
    ref = timm_tiny(**kwargs)
    ours = create_model("swin_tiny_patch4_window7_224", **kwargs).eval()
    assert ours.layers[3].blocks[0].attn.window_size == (7, 4)
    import_weights(ours, ref.state_dict())
    x = images((224, 112))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-4, rtol=1e-4)


def microsoft_layout(timm_state_dict):
    """timm's weights written as the official repo saves them: merging closes a stage, bare head, buffers."""
    sd = {}
    for key, value in timm_state_dict.items():
        key = re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m[1]) - 1}.downsample", key)
        sd[key.replace("head.fc.", "head.")] = value
    n = 49
    for stage, blocks in enumerate((2, 2, 2, 2)):
        for block in range(blocks):
            sd[f"layers.{stage}.blocks.{block}.attn.relative_position_index"] = torch.zeros(n, n, dtype=torch.long)
            if block % 2:
                sd[f"layers.{stage}.blocks.{block}.attn_mask"] = torch.zeros(1, n, n)
    return {"model": sd}


def test_official_microsoft_checkpoints_load_too():
    ref = timm_tiny(depths=(2, 2, 2, 2))
    checkpoint = microsoft_layout(ref.state_dict())
    assert "layers.0.downsample.reduction.weight" in checkpoint["model"]
    ours = create_model("swin_tiny_patch4_window7_224", depths=(2, 2, 2, 2)).eval()
    assert import_weights(ours, checkpoint) == "microsoft"
    x = images(224, batch=1)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-4, rtol=1e-4)


def test_weights_for_larger_windows_are_cropped_to_what_a_smaller_model_sees():
    # At 112 px the last stage is 4x4, so a model built for 112 has 7x7-row tables there. A model
    # built for 224 run on 112 px shrinks the same window at run time: the two must agree.
    weights = timm_tiny(depths=(2, 2, 2, 2)).state_dict()
    built_224 = create_model("swin_tiny_patch4_window7_224", depths=(2, 2, 2, 2)).eval()
    built_112 = create_model("swin_tiny_patch4_window7_224", depths=(2, 2, 2, 2), img_size=112).eval()
    import_weights(built_224, weights)
    import_weights(built_112, weights)
    assert built_112.layers[3].blocks[0].attn.relative_position_bias_table.shape == (49, 24)
    x = images(112, batch=1)
    with torch.no_grad():
        torch.testing.assert_close(built_112(x), built_224(x), atol=1e-5, rtol=1e-5)


def test_swin_tiny_parameter_count():
    with torch.device("meta"):
        model = create_model("swin_tiny_patch4_window7_224")
    assert sum(p.numel() for p in model.parameters()) == 28_288_354


def count_flops(model, size):
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.empty(1, 3, size, size, device="meta"))
    return counter.get_total_flops()


def test_flops_equal_timms():
    # The paper's 4.5G / 8.7G / 15.4G multiply-adds (within 3%) are rows of research/reproduce/complexity.py,
    # checked by tests/reproduce/test_complexity.py; here: the very same operations as timm (8.98 GFLOPs).
    with torch.device("meta"):
        ours, ref = create_model("swin_tiny_patch4_window7_224").eval(), timm_tiny()
    assert count_flops(ours, 224) == count_flops(ref, 224) == 8_981_133_312


@pytest.mark.parametrize("name", list_models("swin_*"))
def test_variants_have_timm_shapes(name):
    timm_name, overrides = name, {}
    if name.endswith(("_32", "_28")):  # timm has no small-image Swin: rebuild its tiny one the same way
        patch, window, size = re.search(r"patch(\d+)_window(\d+)_(\d+)$", name).groups()
        timm_name = "swin_tiny_patch4_window7_224"
        overrides = dict(patch_size=int(patch), window_size=int(window), img_size=int(size))
    with torch.device("meta"):
        ours = create_model(name)
        ref = timm.create_model(timm_name, pretrained=False, num_classes=1000, **overrides)
    ref_shapes = {k.replace("patch_embed.norm.", "patch_norm.").replace("head.fc.", "head."): v.shape
                  for k, v in ref.state_dict().items()}
    assert {k: v.shape for k, v in ours.state_dict().items()} == ref_shapes


@pytest.mark.parametrize("size,chans", [(28, 1), (32, 3)])
def test_small_images_train(size, chans):
    # 28 px with 2x2 patches: 14x14 and 7x7 maps, both padded for 4x4 windows; 32 px: 16x16 and 8x8.
    torch.manual_seed(0)
    model = SwinTransformer(**{**TINY, "img_size": size, "in_chans": chans, "embed_dim": 16})
    x, y = images(size, batch=8, chans=chans), torch.arange(8) % 5
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]


def test_other_input_sizes_run_and_the_size_cache_switches_back():
    model = SwinTransformer(**TINY).eval()
    with torch.no_grad():
        first = model(images(16))
        assert model(images(24)).shape == model(images(8)).shape == (2, 5)  # padded; shrunk windows
        torch.testing.assert_close(model(images(16)), first, rtol=0, atol=0)


def test_forward_backward_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = SwinTransformer(**TINY, drop_rate=0.1, drop_path_rate=0.1).train()
    logits = model(images(16))
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    logits.logsumexp(dim=1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for {name}"


def test_blocks_alternate_w_msa_and_sw_msa_and_drop_path_rises_over_all_blocks():
    model = SwinTransformer(**{**TINY, "depths": (2, 3)}, drop_path_rate=0.4)
    blocks = [block for stage in model.layers for block in stage.blocks]
    assert [b.attn.shifted for b in blocks] == [False, True, False, True, False]
    assert [getattr(b.drop_path, "drop_prob", 0.0) for b in blocks] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])


def test_features_head_and_headless():
    model = SwinTransformer(**TINY).eval()
    x = images(16)
    features = model.forward_features(x)
    assert features.shape == (2, 4, 4, 16)  # (B, H', W', C): 16 px / patch 2 / one merging
    torch.testing.assert_close(model.forward_head(features), model(x))
    pooled = model.forward_head(features, pre_logits=True)
    assert pooled.shape == (2, model.num_features)
    headless = SwinTransformer(**{**TINY, "num_classes": 0}).eval()
    headless.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("head.")})
    torch.testing.assert_close(headless(x), pooled)


def test_patch_merging_concatenates_neighbours_in_the_official_order():
    ref = timm.models.swin_transformer.PatchMerging(dim=3)
    model = create_model("swin_tiny_patch4_window7_224", embed_dim=3, depths=(1, 1), num_heads=(1, 2))
    ours = model.layers[1].downsample
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 5, 7, 3)  # odd sides are padded
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)


def test_own_checkpoint_round_trip():
    a, b = SwinTransformer(**TINY).eval(), SwinTransformer(**TINY).eval()
    assert import_weights(b, {"state_dict": {f"model.{k}": v for k, v in a.state_dict().items()}}) == "research"
    torch.testing.assert_close(a(images(16)), b(images(16)), rtol=0, atol=0)


def test_errors():
    with pytest.raises(ValueError, match=r"img_size=\(30, 30\) is not divisible by patch_size=4"):
        create_model("swin_tiny_patch4_window7_224", img_size=30)
    model = SwinTransformer(**TINY)
    with pytest.raises(ValueError, match="a 15x16 image is not divisible into 2x2 patches"):
        model(images((15, 16)))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\).*pass in_chans=1"):
        model(images(16, chans=1))
    with pytest.raises(ValueError, match="one entry per stage"):
        SwinTransformer(**{**TINY, "num_heads": (1, 2, 4)})


def test_foreign_or_mismatched_weights_are_refused():
    model = SwinTransformer(**TINY)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1, img_size=16, patch_size=4)
    with pytest.raises(ValueError, match="match none of the layouts"):
        import_weights(model, vit.state_dict())
    other = SwinTransformer(**{**TINY, "num_classes": 7}).state_dict()
    with pytest.raises(ValueError, match="do not fit"):
        import_weights(model, other)


def test_images_the_patch_size_does_not_divide_stop_before_training():
    lightning = pytest.importorskip("lightning")
    from research.data import SyntheticDataModule
    from research.tasks import ImageClassification

    task = ImageClassification({"name": "swin_tiny_patch2_window4_32", "num_classes": 4, "embed_dim": 8,
                                "depths": (2,), "num_heads": (1,)})
    data = SyntheticDataModule(num_samples=16, num_classes=4, img_size=31, batch_size=4)
    trainer = lightning.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False, accelerator="cpu")
    with pytest.raises(ValueError, match="a 31x31 image is not divisible into 2x2 patches"):
        trainer.fit(task, data)
    assert trainer.global_step == 0


# ---- relative position biases and patch kernels of another size ----------------------------------


def test_a_larger_window_interpolates_the_bias_tables_like_timm():
    from timm.layers import resize_rel_pos_bias_table

    weights = timm_tiny(depths=(2, 2, 2, 2)).state_dict()  # 7x7 windows, and the index buffers
    ours = create_model("swin_tiny_patch4_window7_224", depths=(2, 2, 2, 2), window_size=12)
    import_weights(ours, microsoft_layout(weights))  # its zero index buffers must not be loaded
    for key, table in ours.state_dict().items():
        if key.endswith("relative_position_bias_table"):
            window = ours.get_submodule(key.rsplit(".", 1)[0]).window_size  # 12, but 7 where the map is 7
            expected = resize_rel_pos_bias_table(weights[key], window, table.shape)
            torch.testing.assert_close(table, expected, rtol=0, atol=0, msg=key)
    assert ours.layers[0].blocks[0].attn.relative_position_bias_table.shape == (23 * 23, 3)
    assert not any(k.endswith("relative_position_index") for k in ours.state_dict())  # rebuilt per window
    ours.eval()(images(224, batch=1))
    attn = ours.layers[0].blocks[0].attn
    assert attn.relative_position_index.max() == 23 * 23 - 1


def test_own_checkpoint_at_another_window_and_patch_size():
    from timm.layers import resample_patch_embed

    source = SwinTransformer(**{**TINY, "window_size": 8, "img_size": 32})  # 15x15-offset tables
    target = SwinTransformer(**{**TINY, "patch_size": 4, "img_size": 32})  # 4x4 windows, 4x4 patches
    assert import_weights(target, source.state_dict()) == "research"
    table = source.layers[0].blocks[0].attn.relative_position_bias_table.reshape(15, 15, -1)
    torch.testing.assert_close(
        target.layers[0].blocks[0].attn.relative_position_bias_table, table[4:11, 4:11].reshape(49, -1)
    )
    expected = resample_patch_embed(source.patch_embed.proj.weight, [4, 4])
    torch.testing.assert_close(target.patch_embed.proj.weight, expected, rtol=0, atol=0)


def test_a_non_square_windows_table_is_refused():
    weights = create_model("swin_tiny_patch4_window7_224", depths=(2, 2, 2, 2), img_size=(224, 112)).state_dict()
    model = create_model("swin_tiny_patch4_window7_224", depths=(2, 2, 2, 2))
    with pytest.raises(ValueError, match=r"layers.3.blocks.0.attn.relative_position_bias_table: .*91 rows"):
        import_weights(model, weights)
