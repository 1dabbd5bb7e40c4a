"""Typed, frozen configuration dataclasses.

Behaviour is described here (``causal``, ``norm_position``, ``gated``...) and nowhere else: components
read these fields, never model names. Converters in :mod:`encoderlens.convert` build these from a
Hugging Face config and reject settings they do not handle.

Modules by concept: :mod:`~encoderlens.config.attention` (norms, positions, attention),
:mod:`~encoderlens.config.stack` (MLP, block stack), :mod:`~encoderlens.config.heads` (MLM head,
classifier, sentence pooling), :mod:`~encoderlens.config.text` (text encoders),
:mod:`~encoderlens.config.audio` (speech encoders), :mod:`~encoderlens.config.encoder_decoder`.
Every name is re-exported here: ``from encoderlens.config import StackConfig``.
"""

from encoderlens.config.attention import (
    ACTIVATIONS,
    AttentionConfig,
    AttentionKind,
    DisentangledConfig,
    NormConfig,
    NormKind,
    NormPosition,
    RelativePositionConfig,
    RotaryConfig,
)
from encoderlens.config.audio import (
    AudioEncoderConfig,
    AudioFrontendConfig,
    ConvNorm,
    CTCHeadConfig,
    PosConvNorm,
    QuantizerConfig,
)
from encoderlens.config.encoder_decoder import (
    DecoderShift,
    EncoderDecoderConfig,
    UnembedConfig,
)
from encoderlens.config.heads import (
    DENSE_ACTIVATIONS,
    POOLING_MODES,
    QA_LABELS,
    ClassifierHeadConfig,
    ClassifierInput,
    ClassifierTask,
    MLMHeadConfig,
    ProblemType,
    QAHeadConfig,
    SentenceDenseConfig,
    SentencePoolingConfig,
)
from encoderlens.config.stack import (
    MLPConfig,
    StackConfig,
)
from encoderlens.config.text import (
    EmbeddingConfig,
    EncoderConfig,
)
from encoderlens.config.transformerlens import HookedTransformerConfig
from encoderlens.config.whisper import LogMelConfig, WhisperConfig

__all__ = [
    "HookedTransformerConfig",
    "LogMelConfig",
    "WhisperConfig",
    "ACTIVATIONS",
    "AttentionConfig",
    "AttentionKind",
    "AudioEncoderConfig",
    "AudioFrontendConfig",
    "CTCHeadConfig",
    "ClassifierHeadConfig",
    "ClassifierInput",
    "ClassifierTask",
    "ConvNorm",
    "DENSE_ACTIVATIONS",
    "DecoderShift",
    "DisentangledConfig",
    "EmbeddingConfig",
    "EncoderConfig",
    "EncoderDecoderConfig",
    "MLMHeadConfig",
    "MLPConfig",
    "NormConfig",
    "NormKind",
    "NormPosition",
    "POOLING_MODES",
    "PosConvNorm",
    "ProblemType",
    "QA_LABELS",
    "QAHeadConfig",
    "QuantizerConfig",
    "RelativePositionConfig",
    "RotaryConfig",
    "SentenceDenseConfig",
    "SentencePoolingConfig",
    "StackConfig",
    "UnembedConfig",
]
