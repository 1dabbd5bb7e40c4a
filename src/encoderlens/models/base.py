"""Shared model machinery: checkpoint loading through the converter registry.

``StackWeights`` / ``StackWeightsMixin`` (stacked weight views) live in :mod:`encoderlens.components.stack_weights`
and are re-exported here.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import torch
from torch import Tensor

from encoderlens.components.stack_weights import StackWeights as StackWeights
from encoderlens.components.stack_weights import StackWeightsMixin as StackWeightsMixin
from encoderlens.convert.loading import Checkpoint, read_checkpoint
from encoderlens.convert.registry import find_converter
from encoderlens.hooks import HookedRootModule

_FAMILIES: dict[str, type[HookedModel]] = {}


def register_family(name: str) -> Any:
    """Class decorator: the model class built for configs whose ``family`` is ``name``."""

    def deco(cls: type[HookedModel]) -> type[HookedModel]:
        _FAMILIES[name] = cls
        cls.family = name
        return cls

    return deco


def model_class_for(family: str) -> type[HookedModel]:
    import encoderlens.models  # noqa: F401  (registers the families)

    try:
        return _FAMILIES[family]
    except KeyError:
        raise ValueError(f"no model class for family {family!r}; known: {sorted(_FAMILIES)}") from None


class HookedModel(HookedRootModule):
    """Base of every encoderlens model. Subclasses implement ``__init__(cfg, **extras)`` and forward."""

    family: ClassVar[str] = ""
    cfg: Any

    @classmethod
    def extras_from_checkpoint(cls, ckpt: Checkpoint) -> dict[str, Any]:
        """Objects besides weights a model needs (tokenizer, feature extractor...)."""
        return {}

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str] | None = None,
        hf_model: Any = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        **extras: Any,
    ) -> Any:
        """Load an HF checkpoint: a hub name, a local folder, or an already-loaded HF model.

        The architecture comes from the checkpoint's config (``architectures`` / ``model_type``)
        through the converter registry. The HF model is not kept.

        Args:
            name_or_path: Hub name, local folder, or ``"default"`` / None for the embedded model.
            hf_model: An already-loaded ``transformers`` model (its weights are converted).
            device: Where to put the model.
            dtype: Parameter dtype (float32 for parity work).
            **extras: Override loaded extras, e.g. ``tokenizer=...``.

        Example:
            >>> model = HookedEncoder.from_pretrained("default")  # packaged all-MiniLM-L6-v2
        """
        if not isinstance(dtype, torch.dtype):
            raise TypeError(f"dtype must be a torch.dtype such as torch.float32, got {dtype!r}")
        ckpt = read_checkpoint(name_or_path, hf_model)
        cfg, state_dict = find_converter(ckpt.config)(ckpt.config, ckpt.state_dict)
        model_cls = model_class_for(cfg.family)
        if cls is not HookedModel and not issubclass(model_cls, cls):
            raise ValueError(
                f"this checkpoint ({cfg.architecture}) is a {cfg.family} model, not a {cls.__name__}; "
                f"load it with {model_cls.__name__}.from_pretrained or encoderlens.from_pretrained"
            )
        kwargs = {**model_cls.extras_from_checkpoint(ckpt), **extras}
        with torch.device("meta"):
            model = model_cls(cfg, **kwargs)
        model.load_converted(state_dict)
        model.to(device=device, dtype=dtype)
        model.eval()
        return model

    def load_converted(self, state_dict: dict[str, Tensor]) -> None:
        """Load a converted state dict; every parameter must be provided with the right shape."""
        own = dict(self.named_parameters())
        missing = sorted(set(own) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(own))
        if missing or unexpected:
            raise RuntimeError(f"converter/model mismatch: missing {missing[:10]}, unexpected {unexpected[:10]}")
        for name, p in own.items():
            t = state_dict[name]
            if tuple(t.shape) != tuple(p.shape):
                raise RuntimeError(
                    f"converter produced {name} of shape {tuple(t.shape)}, model expects {tuple(p.shape)}"
                )
        self.load_state_dict(state_dict, strict=False, assign=True)
        # buffers created on the meta device are rebuilt by the model
        self.materialize_buffers()

    def materialize_buffers(self) -> None:
        """Recreate non-persistent buffers after loading onto the meta device (override if any)."""

    def clear_weight_caches(self) -> None:
        """Drop derived weight layouts kept for speed (attention's fused q/k/v weights).

        Needed only after writing weights through ``param.data``, which PyTorch's version counter
        does not see; in-place edits of the parameters themselves are detected automatically.
        """
        for module in self.modules():
            clear = getattr(module, "clear_weight_cache", None)
            if callable(clear):
                clear()
