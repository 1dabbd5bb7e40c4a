"""Hooked building blocks shared by every model family."""

from encoderlens.components.attention import Attention, KVCache, build_additive_mask
from encoderlens.components.blocks import TransformerBlock
from encoderlens.components.embed import Embed, PosEmbed, TokenTypeEmbed
from encoderlens.components.heads import MLMHead, NSPHead, Pooler
from encoderlens.components.mlp import MLP, get_activation
from encoderlens.components.norm import LayerNorm, RMSNorm, make_norm
from encoderlens.components.position import RelativePositionBias, relative_position_bucket

__all__ = [
    "MLP",
    "Attention",
    "Embed",
    "KVCache",
    "LayerNorm",
    "MLMHead",
    "NSPHead",
    "PosEmbed",
    "Pooler",
    "RMSNorm",
    "RelativePositionBias",
    "TokenTypeEmbed",
    "TransformerBlock",
    "build_additive_mask",
    "get_activation",
    "make_norm",
    "relative_position_bucket",
]
