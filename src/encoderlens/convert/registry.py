"""Converter registry: HF ``config.architectures`` / ``model_type`` -> converter function.

Adding an architecture is one converter file plus one ``@register(...)`` line, and one import line
in ``encoderlens/convert/__init__.py``: that list of imports is the table of converter modules
(importing this module imports the package first, so every converter is registered before a lookup).
Nothing here imports the package or lists model names. A converter takes the HF config and state dict and returns our config and state dict.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from torch import Tensor

Converter = Callable[[Any, dict[str, Tensor]], tuple[Any, dict[str, Tensor]]]

_BY_ARCHITECTURE: dict[str, Converter] = {}
_BY_MODEL_TYPE: dict[str, Converter] = {}


def register(*architectures: str, model_types: Iterable[str] = ()) -> Callable[[Converter], Converter]:
    """Register a converter for HF architecture names (and, as a fallback, model types).

    Example:
        >>> @register("BertModel", "BertForMaskedLM", model_types=["bert"])
        ... def convert(hf_config, state_dict): ...
    """

    def deco(fn: Converter) -> Converter:
        for a in architectures:
            _BY_ARCHITECTURE[a] = fn
        for t in model_types:
            _BY_MODEL_TYPE[t] = fn
        return fn

    return deco


def supported_architectures() -> list[str]:
    """Every registered HF architecture name, sorted."""
    return sorted(_BY_ARCHITECTURE)


def find_converter(hf_config: Any) -> Converter:
    """Pick the converter from ``hf_config.architectures`` (first match), else ``hf_config.model_type``."""
    archs = list(getattr(hf_config, "architectures", None) or [])
    for a in archs:
        if a in _BY_ARCHITECTURE:
            return _BY_ARCHITECTURE[a]
    model_type = getattr(hf_config, "model_type", None)
    if model_type in _BY_MODEL_TYPE:
        return _BY_MODEL_TYPE[model_type]
    raise ValueError(
        f"no encoderlens converter for architectures={archs} model_type={model_type!r}; "
        f"supported architectures: {', '.join(sorted(_BY_ARCHITECTURE))}"
    )


class WeightReader:
    """Pops HF tensors by name so that, at the end, leftovers can be reported as an error.

    Args:
        state_dict: The HF state dict (not modified).
        arch: Architecture name for messages.
        ignore: Key suffixes that are buffers, not weights (e.g. ``position_ids``); dropped silently.
    """

    def __init__(self, state_dict: dict[str, Tensor], arch: str, ignore: Iterable[str] = ()) -> None:
        self.arch = arch
        ignore = tuple(ignore)
        self.remaining = {k: v for k, v in state_dict.items() if not k.endswith(ignore)} if ignore else dict(state_dict)

    def has(self, key: str) -> bool:
        return key in self.remaining

    def take(self, key: str) -> Tensor:
        try:
            return self.remaining.pop(key)
        except KeyError:
            raise ValueError(
                f"{self.arch} checkpoint is missing weight {key!r}; is the checkpoint complete and of this architecture?"
            ) from None

    def take_optional(self, key: str) -> Tensor | None:
        return self.remaining.pop(key, None)

    def strip_prefix(self, prefix: str) -> None:
        """Remove ``prefix`` from every key that has it (``bert.``, ``hubert.``...)."""
        self.remaining = {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in self.remaining.items()}

    def finish(self) -> None:
        """Raise if any HF tensor was not consumed."""
        if self.remaining:
            names = sorted(self.remaining)
            shown = ", ".join(names[:12]) + (f" ... (+{len(names) - 12} more)" if len(names) > 12 else "")
            raise ValueError(
                f"{self.arch} converter left {len(names)} HF weight(s) unused: {shown}. "
                "The checkpoint has parts this converter does not handle; refusing to load it silently."
            )


def require(condition: bool, arch: str, setting: str, value: Any, supported: str) -> None:
    """Raise ``ValueError`` for an HF config setting the converter does not handle."""
    if not condition:
        raise ValueError(f"{arch} converter does not support {setting}={value!r} (supported: {supported})")
