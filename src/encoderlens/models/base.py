"""Shared model machinery: checkpoint loading through the converter registry, stacked weights.

Each family class names its ``family`` (the converted config's ``family``); the table of family
classes is :data:`encoderlens.models.FAMILIES`, which imports them explicitly.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import torch
from jaxtyping import Float
from torch import Tensor, nn

from encoderlens.cache import ActivationCache
from encoderlens.convert import find_converter
from encoderlens.factored_matrix import FactoredMatrix
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


class StackWeights:
    """Stacked weight views over a list of blocks (``model.W_Q[layer, head]``...).

    ``attn`` selects the attention module name (``"attn"`` or ``"cross_attn"``).
    """

    def __init__(self, blocks: nn.ModuleList, attn: str = "attn") -> None:
        self._blocks = blocks
        self._attn = attn

    def _stack(self, owner: str, name: str) -> Tensor:
        ts = []
        for b in self._blocks:
            mod = getattr(b, owner)
            t = getattr(mod, name)
            if t is None:
                raise AttributeError(f"{owner}.{name} is absent in this model (no bias of that kind)")
            ts.append(t)
        return torch.stack(ts)

    @property
    def W_Q(self) -> Float[Tensor, "layer head_index d_model d_head"]:
        return self._stack(self._attn, "W_Q")

    @property
    def W_K(self) -> Float[Tensor, "layer head_index d_model d_head"]:
        return self._stack(self._attn, "W_K")

    @property
    def W_V(self) -> Float[Tensor, "layer head_index d_model d_head"]:
        return self._stack(self._attn, "W_V")

    @property
    def W_O(self) -> Float[Tensor, "layer head_index d_head d_model"]:
        return self._stack(self._attn, "W_O")

    @property
    def b_Q(self) -> Float[Tensor, "layer head_index d_head"]:
        return self._bias("b_Q")

    def _bias(self, name: str) -> Tensor:
        W = self.W_Q
        try:
            return self._stack(self._attn, name)
        except AttributeError:
            return W.new_zeros(W.shape[0], W.shape[1], W.shape[3])

    @property
    def b_K(self) -> Float[Tensor, "layer head_index d_head"]:
        return self._bias("b_K")

    @property
    def b_V(self) -> Float[Tensor, "layer head_index d_head"]:
        return self._bias("b_V")

    @property
    def b_O(self) -> Float[Tensor, "layer d_model"]:
        try:
            return self._stack(self._attn, "b_O")
        except AttributeError:
            W = self.W_O
            return W.new_zeros(W.shape[0], W.shape[-1])

    @property
    def QK(self) -> FactoredMatrix:
        """Per layer and head: ``W_Q @ W_K^T`` (``d_model x d_model``, rank ``d_head``)."""
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    @property
    def OV(self) -> FactoredMatrix:
        """Per layer and head: ``W_V @ W_O`` (``d_model x d_model``, rank ``d_head``)."""
        return FactoredMatrix(self.W_V, self.W_O)

    @property
    def W_in(self) -> Float[Tensor, "layer d_model d_mlp"]:
        return self._stack("mlp", "W_in")

    @property
    def W_gate(self) -> Float[Tensor, "layer d_model d_mlp"]:
        return self._stack("mlp", "W_gate")

    @property
    def W_out(self) -> Float[Tensor, "layer d_mlp d_model"]:
        return self._stack("mlp", "W_out")

    @property
    def b_in(self) -> Float[Tensor, "layer d_mlp"]:
        return self._stack("mlp", "b_in")

    @property
    def b_out(self) -> Float[Tensor, "layer d_model"]:
        return self._stack("mlp", "b_out")

    def all_head_labels(self) -> list[str]:
        """``["L0H0", "L0H1", ...]`` in (layer, head) order."""
        n_heads = getattr(self._blocks[0], self._attn).cfg.n_heads
        return [f"L{layer}H{h}" for layer in range(len(self._blocks)) for h in range(n_heads)]


_STACK_ATTRS = (
    "W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O", "QK", "OV",
    "W_in", "W_gate", "W_out", "b_in", "b_out",
)  # fmt: skip


class StackWeightsMixin:
    """Adds ``W_Q, W_K, W_V, W_O, b_*, QK, OV, W_in, W_out, b_in, b_out, all_head_labels()`` over ``self.blocks``.

    Shapes: ``W_Q: (layer, head_index, d_model, d_head)``, ``W_O: (layer, head_index, d_head, d_model)``,
    ``W_in: (layer, d_model, d_mlp)``; ``QK``/``OV`` are :class:`FactoredMatrix` of shape
    ``(layer, head_index, d_model, d_model)``.
    """

    blocks: nn.ModuleList

    def all_head_labels(self) -> list[str]:
        return StackWeights(self.blocks).all_head_labels()


def _stack_property(name: str) -> property:
    return property(lambda self: getattr(StackWeights(self.blocks), name), doc=f"Stacked ``{name}`` over layers.")


for _name in _STACK_ATTRS:
    setattr(StackWeightsMixin, _name, _stack_property(_name))
