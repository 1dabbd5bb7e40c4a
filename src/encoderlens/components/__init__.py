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
from encoderlens.components.embed import Embed, EmbedProjection, PosEmbed, TokenTypeEmbed, position_ids
from encoderlens.components.heads import ClassifierHead, LMHead, MLMHead, NSPHead, Pooler, QAHead, SentencePooler
from encoderlens.components.mlp import MLP, get_activation
from encoderlens.components.norm import LayerNorm, RMSNorm, make_norm
from encoderlens.components.position import RelativePositionBias, relative_position_bucket
from encoderlens.components.sae import SAEConfig, SparseAutoencoder
from encoderlens.components.sae_format import load_sae, load_sae_from_hub, save_sae
from encoderlens.components.stack import Stack, run_blocks
from encoderlens.components.stack_weights import StackWeights, StackWeightsMixin

__all__ = [
    "SAEConfig",
    "SparseAutoencoder",
    "load_sae",
    "load_sae_from_hub",
    "save_sae",
    "MLP",
    "Attention",
    "ClassifierHead",
    "AudioFrontend",
    "CTCHead",
    "ChannelNorm",
    "ConvLayer",
    "ConvPositionalEmbedding",
    "FeatureProjection",
    "QuantizerHead",
    "Embed",
    "EmbedProjection",
    "KVCache",
    "LMHead",
    "LayerNorm",
    "MLMHead",
    "NSPHead",
    "PosEmbed",
    "Pooler",
    "QAHead",
    "RMSNorm",
    "SentencePooler",
    "Stack",
    "StackWeights",
    "StackWeightsMixin",
    "RelativePositionBias",
    "TokenTypeEmbed",
    "TransformerBlock",
    "build_additive_mask",
    "get_activation",
    "make_norm",
    "position_ids",
    "relative_position_bucket",
    "run_blocks",
]
