"""Hooked building blocks shared by every model family."""

from encoderlens.components.attention import Attention, KVCache, build_additive_mask
from encoderlens.components.audio_frontend import (
    AudioFrontend,
    ChannelNorm,
    ConvLayer,
    ConvPositionalEmbedding,
    FeatureProjection,
)
from encoderlens.components.audio_heads import CTCHead, QuantizerHead
from encoderlens.components.blocks import TransformerBlock
from encoderlens.components.embed import Embed, PosEmbed, TokenTypeEmbed
from encoderlens.components.heads import MLMHead, NSPHead, Pooler
from encoderlens.components.mlp import MLP, get_activation
from encoderlens.components.norm import LayerNorm, RMSNorm, make_norm

__all__ = [
    "MLP",
    "Attention",
    "AudioFrontend",
    "CTCHead",
    "ChannelNorm",
    "ConvLayer",
    "ConvPositionalEmbedding",
    "FeatureProjection",
    "QuantizerHead",
    "Embed",
    "KVCache",
    "LayerNorm",
    "MLMHead",
    "NSPHead",
    "PosEmbed",
    "Pooler",
    "RMSNorm",
    "TokenTypeEmbed",
    "TransformerBlock",
    "build_additive_mask",
    "get_activation",
    "make_norm",
]
