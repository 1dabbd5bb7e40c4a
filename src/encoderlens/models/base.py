"""Shared model machinery: checkpoint loading through the converter registry.

Each family class names its ``family`` (the converted config's ``family``); the table of family
classes is :data:`encoderlens.models.FAMILIES`, which imports them explicitly. ``StackWeights`` /
``StackWeightsMixin`` (stacked weight views) live in :mod:`encoderlens.components.stack_weights`
and are re-exported here.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import torch
from torch import Tensor

from encoderlens.cache import ActivationCache
from encoderlens.components.stack_weights import StackWeights as StackWeights
from encoderlens.components.stack_weights import StackWeightsMixin as StackWeightsMixin
from encoderlens.convert import find_converter
from encoderlens.hooks import HookedRootModule
from encoderlens.io.checkpoint import Checkpoint, read_checkpoint


class HookedModel(HookedRootModule):
    """Base of every encoderlens model. Subclasses implement ``__init__(cfg, **extras)`` and forward.

    Subclasses set ``family`` to the converted config's ``family`` and are listed in
    :data:`encoderlens.models.FAMILIES`.
    """

    family: ClassVar[str] = ""
    cfg: Any

    def make_cache(self, store: dict[str, Tensor], has_batch_dim: bool = True) -> ActivationCache:
        """Wrap cached activations in an :class:`~encoderlens.cache.ActivationCache` (for ``run_with_cache``)."""
        return ActivationCache(store, self, has_batch_dim=has_batch_dim)

    @classmethod
    def extras_from_checkpoint(cls, ckpt: Checkpoint) -> dict[str, Any]:
        """Objects besides weights a model needs (tokenizer, feature extractor...)."""
        return {}

    def weights_from_checkpoint(self, ckpt: Checkpoint) -> dict[str, Tensor]:
        """Converted weights that live outside the HF state dict (a sentence head's Dense layers).

        Called on the built model (so its final config decides), before :meth:`load_converted`.
        """
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
        if not cls.family:
            raise TypeError(
                f"{cls.__name__}.from_pretrained needs a model family class; use encoderlens.from_pretrained "
                "(it picks the class from the checkpoint) or HookedEncoder / HookedAudioEncoder / HookedEncoderDecoder"
            )
        return load_pretrained(name_or_path, {cls.family: cls}, hf_model, device, dtype, **extras)

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


def load_pretrained(
    name_or_path: str | os.PathLike[str] | None,
    classes: dict[str, type[HookedModel]],
    hf_model: Any = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    **extras: Any,
) -> Any:
    """Read, convert and build a checkpoint as the class of ``classes`` named by its family.

    Args:
        name_or_path: Hub name, local folder, or ``"default"`` / None for the embedded model.
        classes: ``family -> model class`` (one entry when a family class was asked for).
        hf_model: An already-loaded ``transformers`` model (its weights are converted).
        device: Where to put the model.
        dtype: Parameter dtype.
        **extras: Override loaded extras, e.g. ``tokenizer=...``.

    Raises:
        ValueError: The checkpoint's family is not in ``classes``.
    """
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype such as torch.float32, got {dtype!r}")
    ckpt = read_checkpoint(name_or_path, hf_model)
    cfg, state_dict = find_converter(ckpt.config)(ckpt.config, ckpt.state_dict)
    model_cls = classes.get(cfg.family)
    if model_cls is None:
        asked = " or ".join(c.__name__ for c in classes.values())
        raise ValueError(
            f"this checkpoint ({cfg.architecture}) is a {cfg.family} model, not a {asked}; "
            "load it with encoderlens.from_pretrained, which picks the model class from the checkpoint"
        )
    kwargs = {**model_cls.extras_from_checkpoint(ckpt), **extras}
    with torch.device("meta"):
        model = model_cls(cfg, **kwargs)
    model.load_converted({**state_dict, **model.weights_from_checkpoint(ckpt)})
    model.to(device=device, dtype=dtype)
    model.eval()
    return model
