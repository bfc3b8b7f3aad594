"""Every DeiT CaiT variant builds through timm with the published architecture."""

from __future__ import annotations

import pytest
import torch

from cait.errors import ConfigError
from cait.models import VARIANTS, build_model, get_variant

# DeiT name -> parameters in millions (1000 classes, the variant's own resolution), from timm's model card
PUBLISHED_PARAMS_M = {
    "cait_XXS24_224": 11.96, "cait_XXS24": 12.03, "cait_XXS36_224": 17.30, "cait_XXS36": 17.37,
    "cait_XS24": 26.67, "cait_S24_224": 46.92, "cait_S24": 47.06, "cait_S36": 68.37,
    "cait_M36": 271.22, "cait_M48": 356.46,
}


def test_registry_has_every_deit_variant():
    assert list(VARIANTS) == list(PUBLISHED_PARAMS_M)


@pytest.mark.parametrize("name", list(PUBLISHED_PARAMS_M))
def test_architecture_matches_the_paper(name):
    variant = VARIANTS[name]
    with torch.device("meta"):  # shapes only: no memory for M48's 356M weights
        model = build_model(name)
    count = sum(p.numel() for p in model.parameters())
    assert count / 1e6 == pytest.approx(PUBLISHED_PARAMS_M[name], abs=0.006)
    assert model.patch_embed.img_size == (variant.img_size, variant.img_size)
    assert len(model.blocks) == variant.depth
    assert len(model.blocks_token_only) == 2
    block = model.blocks[0]
    assert block.attn.num_heads == variant.num_heads
    assert hasattr(block.attn, "proj_l") and hasattr(block.attn, "proj_w")  # talking-heads attention
    assert block.norm1.eps == 1e-6
    assert block.attn.qkv.bias is not None
    assert model.embed_dim == variant.embed_dim


def test_layerscale_init_values():
    torch.manual_seed(0)
    model = build_model("cait_XXS24_224", img_size=32, num_classes=5)
    assert torch.all(model.blocks[0].gamma_1 == 1e-5)
    with torch.device("meta"):
        s36 = build_model("cait_S36")
    assert s36.blocks[0].gamma_1.shape == (384,)
    assert VARIANTS["cait_S36"].init_values == 1e-6


def test_model_card_param_count():
    """The ModelZoo log reports 'number of params: 46916200' for cait_S24_224."""
    with torch.device("meta"):
        model = build_model("cait_S24_224")
    assert sum(p.numel() for p in model.parameters()) == 46916200


def test_overrides_and_forward():
    torch.manual_seed(0)
    model = build_model("cait_XXS24_224", img_size=64, patch_size=16, num_classes=10, drop_path=0.0)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    assert model.patch_embed.num_patches == 16
    assert model.blocks[0].drop_path.__class__.__name__ == "Identity"
    with torch.device("meta"):
        dp = build_model("cait_S24_224", drop_path=0.2)
    assert dp.blocks[-1].drop_path.drop_prob == pytest.approx(0.2)


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ConfigError) as err:
        get_variant("cait_xxs24_224")  # timm's spelling is not the DeiT name
    assert "cait_XXS24_224" in str(err.value) and "cait_M48" in str(err.value)


def test_img_size_must_fit_patches():
    with pytest.raises(ConfigError, match="multiple"):
        build_model("cait_XXS24_224", img_size=70)
