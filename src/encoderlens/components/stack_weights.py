"""Stacked weight views over a list of transformer blocks: ``model.W_Q[layer, head]``, ``QK``, ``OV``...

:class:`StackWeights` stacks one attention module's (``attn`` or ``cross_attn``) and the MLPs' weights
over layers; :class:`StackWeightsMixin` adds them as properties to a module holding ``self.blocks``.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn

from encoderlens.factored_matrix import FactoredMatrix


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
