"""TransformerLens's per-head and per-neuron cache helpers, as a mixin of :class:`~encoderlens.cache.ActivationCache`.

``compute_head_results``, ``get_neuron_results``, ``stack_neuron_results``, ``apply_slice_to_batch_dim``
and ``toggle_autodiff`` with TransformerLens 3.5's arguments and meanings, on any stream the cache
describes (encoder, decoder, audio). Slice arguments follow :mod:`encoderlens.slicing`.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from encoderlens.components.stream_spec import CacheHost
from encoderlens.slicing import apply_slice, drops_axis


def one_device(tensors: list[Tensor]) -> list[Tensor]:
    """``tensors`` on one device (the last one's) for stacking: a model placed over several devices with a
    ``device_map`` caches each activation where its block ran. Unchanged (no copy) on one device."""
    device = tensors[-1].device if tensors else None
    return tensors if all(t.device == device for t in tensors) else [t.to(device) for t in tensors]


class TLCacheMethods:
    """Mixin: the cache's TransformerLens helpers (see the module docstring)."""

    cache_dict: dict[str, Tensor]
    model: CacheHost | None
    has_batch_dim: bool
    stream: str | None

    def _spec(self) -> Any:  # provided by ActivationCache
        raise NotImplementedError

    def _need(self, name: str, method: str) -> Tensor:  # provided by ActivationCache
        raise NotImplementedError

    def _n_layers(self, spec: Any, layer: int | None) -> int:  # provided by ActivationCache
        raise NotImplementedError

    def compute_head_results(self) -> None:
        """Add every block's per-head outputs ``z[..., h, :] @ W_O[h]`` as ``blocks.{i}.attn.hook_result``.

        Shape ``(batch, pos, head_index, d_model)``, as the ``hook_result`` hook gives them; computed from
        the cached ``hook_z``. Decoders also get ``cross_attn.hook_result``. Already present: left alone.
        """
        spec = self._spec()
        attns = ("attn", "cross_attn") if spec.has_cross_attention else ("attn",)
        for i in range(spec.n_layers):
            for attn in attns:
                name = f"{spec.prefix}blocks.{i}.{attn}.hook_result"
                if name in self.cache_dict:
                    continue
                z = self._need(f"{spec.prefix}blocks.{i}.{attn}.hook_z", "compute_head_results")
                W_O = getattr(spec.blocks[i], attn).W_O.to(z.device, z.dtype)
                self.cache_dict[name] = torch.einsum("...hd,hdm->...hm", z, W_O)

    def get_neuron_results(
        self,
        layer: int,
        neuron_slice: Any = None,
        pos_slice: Any = None,
        project_output_onto: Tensor | None = None,
    ) -> Tensor:
        """Each MLP neuron's output ``post[..., n] * W_out[n]`` in block ``layer``.

        Args:
            layer: The block (negative counts from the end).
            neuron_slice: Neurons to keep.
            pos_slice: Positions to keep.
            project_output_onto: ``(d_model,)`` or ``(d_model, k)``: project each neuron's output onto it.

        Returns:
            ``(batch, pos, neuron, d_model)`` (or the projection's last axis instead of ``d_model``).
        """
        spec = self._spec()
        if layer < 0:
            layer += spec.n_layers
        if not 0 <= layer < spec.n_layers:
            raise ValueError(f"layer must be in [0, {spec.n_layers}) (or negative from the end), got {layer}")
        acts = self._need(f"{spec.prefix}blocks.{layer}.mlp.hook_post", "get_neuron_results")
        W_out = spec.blocks[layer].mlp.W_out.to(acts.device, acts.dtype)
        acts = apply_slice(acts, pos_slice, -2)
        acts = apply_slice(acts, neuron_slice, -1)
        W_out = apply_slice(W_out, neuron_slice, 0)
        if project_output_onto is None:
            return acts[..., None] * W_out
        projected = W_out @ project_output_onto.to(W_out.device, W_out.dtype)
        return acts * projected if projected.ndim == 1 else acts[..., None] * projected

    def stack_neuron_results(
        self,
        layer: int | None = None,
        pos_slice: Any = None,
        neuron_slice: Any = None,
        return_labels: bool = False,
        incl_remainder: bool = False,
        apply_ln: bool = False,
    ) -> Any:
        """Every neuron's output in blocks ``[0, layer)`` stacked: ``(component, batch, pos, d_model)``.

        Labels ``"L{l}N{n}"``. ``incl_remainder`` adds the residual stream at ``layer`` minus their sum and
        ``apply_ln`` the cached norm scale (both pre-LN only, as the other decompositions).
        """
        spec = self._spec()
        n = spec.n_layers if layer is None else self._n_layers(spec, layer)
        d_mlp = spec.blocks[0].mlp.W_out.shape[0]
        picked = apply_slice(torch.arange(d_mlp), neuron_slice, 0).reshape(-1).tolist()
        labels = [f"L{i}N{j}" for i in range(n) for j in picked]
        parts = [self.get_neuron_results(i, neuron_slice, pos_slice) for i in range(n)]
        if drops_axis(neuron_slice):
            parts = [p[..., None, :] for p in parts]
        ref = apply_slice(self._need(f"{spec.prefix}blocks.0.hook_resid_pre", "stack_neuron_results"), pos_slice, -2)
        if parts:
            stack = torch.cat(one_device(parts), dim=-2).movedim(-2, 0)
        else:
            stack = ref.new_zeros((0, *ref.shape))
        if incl_remainder:
            self._require_pre_ln(spec, "stack_neuron_results(incl_remainder=True)")  # type: ignore[attr-defined]
            resid_name = f"{spec.prefix}blocks.{n}.hook_resid_pre" if n < spec.n_layers else spec.resid_hook(n - 1)
            resid = apply_slice(self._need(resid_name, "stack_neuron_results"), pos_slice, -2)
            stack = torch.cat([stack, (resid.to(stack.device) - stack.sum(0))[None]])
            labels.append("remainder")
        if apply_ln:
            stack = self.apply_ln_to_stack(  # type: ignore[attr-defined]
                stack, None if n == spec.n_layers else n, pos_slice=pos_slice
            )
        return (stack, labels) if return_labels else stack

    def apply_slice_to_batch_dim(self, batch_slice: Any) -> Any:
        """A new cache with every tensor's batch axis cut by ``batch_slice`` (an int drops the axis)."""
        if not self.has_batch_dim and batch_slice is not None:
            raise ValueError("apply_slice_to_batch_dim: this cache has no batch axis (remove_batch_dim was applied)")
        cut = {k: apply_slice(v, batch_slice, 0) for k, v in self.cache_dict.items()}
        keeps = self.has_batch_dim and not drops_axis(batch_slice)
        return type(self)(cut, self.model, keeps, self.stream)  # type: ignore[call-arg]

    def toggle_autodiff(self, mode: bool = False) -> None:
        """Turn autograd on or off globally (``torch.set_grad_enabled``), as TransformerLens; warns."""
        warnings.warn(f"changed the global state: autograd enabled = {mode}", UserWarning, stacklevel=2)
        torch.set_grad_enabled(mode)
