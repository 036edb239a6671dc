import pytest
import torch

from research.models import build_model, create_model, list_models

# Small stand-ins for each family, so the contract runs over every registered name in seconds.
TINY = {
    "resnet": dict(num_classes=3, in_chans=2),
    "vit": dict(num_classes=3, in_chans=2, img_size=16, patch_size=4, embed_dim=24, depth=2, num_heads=2),
    "madry": dict(num_classes=3, in_chans=2, img_size=16),
    "five": dict(num_classes=3, in_chans=2, img_size=16),
    "swin": dict(num_classes=3, in_chans=2, img_size=16, patch_size=2, embed_dim=8, depths=(2, 2), num_heads=(1, 2),
                 window_size=4),
}
SIZE = {"resnet": 32, "vit": 16, "madry": 16, "five": 16, "swin": 16}


def family(name: str) -> str:
    return name.split("_")[0].rstrip("0123456789")


def test_registry_lists_the_paper_variants():
    names = set(list_models())
    assert {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152"} <= names
    assert {"resnet20", "resnet32", "resnet44", "resnet56", "resnet110"} <= names
    assert {"vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224", "vit_base_patch32_224",
            "vit_large_patch16_224", "vit_huge_patch14_224"} <= names
    assert list_models("vit_*") == sorted(n for n in names if n.startswith("vit_"))


# Deeper ResNets only repeat the blocks of these three (test_resnet.py counts their parameters);
# every ViT name is shrunk to the same tiny width by the overrides.
CONTRACT = [n for n in list_models() if n.startswith("vit_") or n in ("resnet18", "resnet50", "resnet20")]
CONTRACT += ["madry_mnist_cnn", "five_layer_cnn"]
CONTRACT += list_models("swin_*")  # every Swin name, shrunk to two tiny stages by the overrides
# mae_* are left out: not classifiers (they return predicted patches and a mask, no logits or
# forward_head); tests/models/test_mae.py holds their forward/backward/every-gradient contract.


@pytest.mark.parametrize("name", CONTRACT)
def test_every_model_forwards_backwards_and_exposes_features(name):
    kw = TINY[family(name)]
    model = create_model(name, **kw)
    x = torch.rand(2, kw["in_chans"], SIZE[family(name)], SIZE[family(name)])
    out = model(x)
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    torch.testing.assert_close(model.forward_head(model.forward_features(x)), out)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, model.num_features)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ValueError, match=r"unknown model 'vit_smal_patch16_224'; did you mean 'vit_small_patch16_224'"):
        create_model("vit_smal_patch16_224")


def test_unknown_override_is_a_clear_error():
    with pytest.raises(ValueError, match="model 'resnet20' does not take"):
        create_model("resnet20", num_clases=10)


def test_build_model_from_a_config_spec():
    assert build_model({"name": "resnet20", "num_classes": 7}).fc.out_features == 7
    module = torch.nn.Linear(2, 2)
    assert build_model(module) is module
    with pytest.raises(ValueError, match="needs a 'name' key"):
        build_model({"num_classes": 7})


def test_a_renamed_model_still_builds_under_its_old_name():
    # Checkpoints saved before the rename carry {"name": "mlp"} in their hyperparameters.
    assert "mlp" not in list_models() and "mlp_regressor" in list_models()
    assert type(create_model("mlp")) is type(create_model("mlp_regressor"))
