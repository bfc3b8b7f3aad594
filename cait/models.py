"""The CaiT variants of the DeiT repository, by their DeiT names, built through timm.

One table is the source of truth for each variant's architecture; `build_model` passes every
architectural value to timm explicitly, so a change of timm's defaults cannot silently change
the model we train.
"""

from __future__ import annotations

from dataclasses import dataclass

from cait.errors import ConfigError


@dataclass(frozen=True)
class CaitVariant:
    """One CaiT variant as defined in deit's `cait_models.py` (paper: Touvron et al. 2021)."""

    name: str  # DeiT name, as used on the model card's command line
    timm_name: str
    img_size: int
    embed_dim: int
    depth: int
    num_heads: int
    init_values: float  # LayerScale init (deit: init_scale)
    drop_path: float  # stochastic depth the paper's recipe uses for this variant
    patch_size: int = 16
    mlp_ratio: float = 4.0
    depth_token_only: int = 2  # class-attention layers


# Drop path: paper values for XXS24 0.05, S24 0.1, S36 0.2, M36 0.3, M48 0.4; XXS36 and XS24 follow
# the nearest documented size (XXS -> 0.05 at depth 24, 0.1 at 36; XS24 -> 0.1 as S24).
VARIANTS: dict[str, CaitVariant] = {
    v.name: v
    for v in [
        CaitVariant("cait_XXS24_224", "cait_xxs24_224", 224, 192, 24, 4, 1e-5, 0.05),
        CaitVariant("cait_XXS24", "cait_xxs24_384", 384, 192, 24, 4, 1e-5, 0.05),
        CaitVariant("cait_XXS36_224", "cait_xxs36_224", 224, 192, 36, 4, 1e-5, 0.1),
        CaitVariant("cait_XXS36", "cait_xxs36_384", 384, 192, 36, 4, 1e-5, 0.1),
        CaitVariant("cait_XS24", "cait_xs24_384", 384, 288, 24, 6, 1e-5, 0.1),
        CaitVariant("cait_S24_224", "cait_s24_224", 224, 384, 24, 8, 1e-5, 0.1),
        CaitVariant("cait_S24", "cait_s24_384", 384, 384, 24, 8, 1e-5, 0.1),
        CaitVariant("cait_S36", "cait_s36_384", 384, 384, 36, 8, 1e-6, 0.2),
        CaitVariant("cait_M36", "cait_m36_384", 384, 768, 36, 16, 1e-6, 0.3),
        CaitVariant("cait_M48", "cait_m48_448", 448, 768, 48, 16, 1e-6, 0.4),
    ]
}


def get_variant(name: str) -> CaitVariant:
    """Look a variant up by its DeiT name; an unknown name lists the valid ones."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ConfigError(
            f"unknown CaiT model {name!r}; valid names: {', '.join(VARIANTS)}"
        ) from None


def build_model(
    name: str,
    *,
    img_size: int | None = None,
    patch_size: int | None = None,
    num_classes: int = 1000,
    drop_path: float | None = None,
):
    """Build a randomly initialised CaiT through timm.

    `img_size`, `patch_size` and `drop_path` default to the variant's own values. The random
    initialisation draws from torch's global CPU generator: seed it, and build on the CPU before
    moving to a device, to get the same weights on every device.
    """
    import timm

    variant = get_variant(name)
    img_size = variant.img_size if img_size is None else img_size
    patch_size = variant.patch_size if patch_size is None else patch_size
    if img_size % patch_size:
        raise ConfigError(
            f"model.img_size {img_size} is not a multiple of model.patch_size {patch_size}"
        )
    return timm.create_model(
        variant.timm_name,
        pretrained=False,
        img_size=img_size,
        patch_size=patch_size,
        num_classes=num_classes,
        embed_dim=variant.embed_dim,
        depth=variant.depth,
        num_heads=variant.num_heads,
        mlp_ratio=variant.mlp_ratio,
        qkv_bias=True,
        init_values=variant.init_values,
        depth_token_only=variant.depth_token_only,
        drop_path_rate=variant.drop_path if drop_path is None else drop_path,
    )
