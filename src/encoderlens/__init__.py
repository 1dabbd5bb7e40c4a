"""encoderlens: mechanistic interpretability for text encoders, speech encoders and encoder-decoders."""

from __future__ import annotations

from typing import Any

from encoderlens.cache import ActivationCache
from encoderlens.components.sae import SAEConfig, SparseAutoencoder
from encoderlens.components.sae_format import load_sae, load_sae_from_hub, save_sae
from encoderlens.config import HookedTransformerConfig
from encoderlens.factored_matrix import FactoredMatrix
from encoderlens.hooks import HookedRootModule, HookPoint, get_act_name
from encoderlens.models import HookedAudioEncoder, HookedEncoder, HookedEncoderDecoder, HookedWhisper
from encoderlens.models import from_pretrained as _load
from encoderlens.models.base import HookedModel

__version__ = "0.1.0"


def from_pretrained(name_or_path: Any = None, **kwargs: Any) -> Any:
    """Load any supported checkpoint; the model class follows the checkpoint's architecture.

    Example:
        >>> model = encoderlens.from_pretrained("default")
    """
    return _load(name_or_path, **kwargs)


__all__ = [
    "SAEConfig",
    "SparseAutoencoder",
    "load_sae",
    "load_sae_from_hub",
    "save_sae",
    "ActivationCache",
    "FactoredMatrix",
    "HookPoint",
    "HookedAudioEncoder",
    "HookedEncoder",
    "HookedEncoderDecoder",
    "HookedModel",
    "HookedRootModule",
    "HookedWhisper",
    "HookedTransformerConfig",
    "from_pretrained",
    "get_act_name",
]
