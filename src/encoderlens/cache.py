"""ActivationCache: cached activations plus the residual-stream algebra that is valid for each model.

What the decompositions mean depends on where the norms sit (the model's :class:`StreamSpec`):

- **Pre-LN** stacks (T5, wav2vec2/HuBERT large, ModernBERT): the residual stream is a sum,
  ``resid_pre[L] = embeddings + sum_{l<L} (attn_out[l] + mlp_out[l])``. ``decompose_resid``,
  ``stack_head_results(incl_remainder=True)``, ``get_full_resid_decomposition`` and
  ``apply_ln_to_stack`` (dividing by the cached norm scale, a linear approximation that is exact for
  the sum) all apply.
- **Post-LN** stacks (BERT, wav2vec2/HuBERT base, BART): each block renormalises the stream twice, so
  no sum of component outputs equals a later residual. ``accumulated_resid`` (the actual stream at each
  layer) and ``stack_head_results`` (each head's exact contribution to its own block's ``attn_out``) are
  valid; the decomposition methods raise a ``ValueError`` explaining this instead of returning
  numbers with no meaning.
- ``logit_attrs`` needs a *linear* unembedding (T5 ``lm_head``, CTC heads). BERT's MLM head is
  ``dense -> GELU -> LayerNorm -> W_U`` and is refused with that explanation.
"""

from __future__ import annotations

import difflib
from collections.abc import ItemsView, Iterator, KeysView, ValuesView
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from encoderlens.cache_tl import TLCacheMethods, one_device
from encoderlens.components.stream_spec import CacheHost as CacheHost
from encoderlens.components.stream_spec import StreamSpec as StreamSpec
from encoderlens.components.stream_spec import fold_norm_into_unembed as fold_norm_into_unembed
from encoderlens.hooks import HookedRootModule
from encoderlens.names import get_act_name
from encoderlens.slicing import apply_slice


class CacheKeyError(KeyError, ValueError):
    """A name missing from the cache; both ``KeyError`` (dict-like) and ``ValueError``."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


class ActivationCache(TLCacheMethods):
    """A dict of cached activations with short keys and residual-stream helpers.

    Keys: full hook names, or ``(short_name, layer[, layer_type])`` tuples: ``cache["pattern", 0]``,
    ``cache["q", 2]``, ``cache["scale", 1, "ln2"]``. On encoder-decoders use ``cache.encoder[...]`` /
    ``cache.decoder[...]`` (or full names); ``cache.decoder["pattern", 0, "cross_attn"]``.

    Example:
        >>> _, cache = model.run_with_cache("The cat sat.")
        >>> resid, labels = cache.accumulated_resid(return_labels=True)
    """

    def __init__(
        self,
        cache_dict: dict[str, Tensor],
        model: CacheHost | None,
        has_batch_dim: bool = True,
        stream: str | None = None,
    ) -> None:
        self.cache_dict = cache_dict
        self.model = model
        self.has_batch_dim = has_batch_dim
        self.stream = stream

    # ------------------------------------------------------------------ dict-like
    def _full_name(self, key: Any) -> str:
        if isinstance(key, str):
            if key in self.cache_dict:
                return key
            if isinstance(self.model, HookedRootModule):
                # another name of a hook point (TransformerLens's T5 names: "encoder.0.attn.hook_v"...)
                canonical = self.model.canonical_hook_name(key)
                if canonical in self.cache_dict:
                    return canonical
            prefixed = f"{self.stream}.{key}" if self.stream else key
            if prefixed not in self.cache_dict and "." not in key and not key.startswith("hook_"):
                try:  # TransformerLens short keys: cache["embed"] -> "hook_embed"
                    return get_act_name(key, stream=self.stream)
                except ValueError:
                    pass
            return prefixed
        if isinstance(key, tuple) and key and isinstance(key[0], str):
            if len(key) > 3:
                raise ValueError(f"cache keys are (name, layer[, layer_type]), got {key!r}")
            layer = key[1] if len(key) > 1 else None
            if isinstance(layer, int) and layer < 0:  # cache["k", -1]: the last block
                layer += self._spec().n_layers
            layer_type = key[2] if len(key) > 2 else None
            return get_act_name(key[0], layer, layer_type, stream=self._stream_for_short_keys())
        raise TypeError(f"cache key must be a hook name or (name, layer[, layer_type]) tuple, got {key!r}")

    def _stream_for_short_keys(self) -> str | None:
        if self.stream is not None:
            return self.stream
        streams = getattr(self.model, "streams", (None,))
        if len(streams) > 1:
            raise ValueError(
                f"this model has several residual streams {streams}; use cache.{streams[0]}[...] "
                f"or cache.stream_view('{streams[-1]}')[...] for short keys, or a full hook name"
            )
        return streams[0]

    def __getitem__(self, key: Any) -> Tensor:
        name = self._full_name(key)
        try:
            return self.cache_dict[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self.cache_dict), n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise CacheKeyError(
                f"{name!r} is not in the cache{hint} (cached: {len(self.cache_dict)} tensors; "
                "widen run_with_cache's names_filter if it was filtered out)"
            ) from None

    def __contains__(self, key: Any) -> bool:
        try:
            return self._full_name(key) in self.cache_dict
        except (ValueError, TypeError):
            return False

    def __len__(self) -> int:
        return len(self.cache_dict)

    def __iter__(self) -> Iterator[str]:
        return iter(self.cache_dict)

    def keys(self) -> KeysView[str]:
        return self.cache_dict.keys()

    def values(self) -> ValuesView[Tensor]:
        return self.cache_dict.values()

    def items(self) -> ItemsView[str, Tensor]:
        return self.cache_dict.items()

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} tensors, {self.nbytes() / 2**20:.1f} MiB, stream={self.stream!r})"

    def nbytes(self) -> int:
        """Bytes of memory the cached tensors hold: each storage counted once.

        Cached q, k and v of one attention layer are views of one fused projection buffer (stored
        once); a view that keeps a larger buffer alive counts the whole buffer.
        """
        storages: dict[tuple[str, int], int] = {}
        total = 0
        for t in self.cache_dict.values():
            if t.device.type == "meta":  # no storage to share
                total += t.numel() * t.element_size()
                continue
            st = t.untyped_storage()
            key = (str(t.device), st.data_ptr())
            storages[key] = max(storages.get(key, 0), st.nbytes())
        return total + sum(storages.values())

    def size_report(self) -> str:
        """A table of the largest cached tensors and the total size."""
        rows = sorted(self.cache_dict.items(), key=lambda kv: -kv[1].numel() * kv[1].element_size())
        lines = [f"{'name':<50} {'shape':<24} {'MiB':>8}"]
        for k, v in rows[:20]:
            lines.append(f"{k:<50} {str(tuple(v.shape)):<24} {v.numel() * v.element_size() / 2**20:>8.2f}")
        lines.append(f"total: {len(rows)} tensors, {self.nbytes() / 2**20:.2f} MiB")
        return "\n".join(lines)

    def to(self, device: str | torch.device, move_model: bool = False) -> ActivationCache:
        """Move every cached tensor (and optionally the model) to ``device``."""
        self.cache_dict = {k: v.to(device) for k, v in self.cache_dict.items()}
        if move_model:
            if not isinstance(self.model, nn.Module):
                raise ValueError("move_model=True needs the cache's model; this cache has none")
            self.model.to(device)
        return self

    def remove_batch_dim(self) -> ActivationCache:
        """Drop the batch dimension (only for a batch of one)."""
        if not self.has_batch_dim:
            return self
        for k, v in self.cache_dict.items():
            if v.ndim == 0 or v.shape[0] != 1:
                raise ValueError(f"remove_batch_dim needs batch size 1, but {k!r} has shape {tuple(v.shape)}")
        self.cache_dict = {k: v[0] for k, v in self.cache_dict.items()}
        self.has_batch_dim = False
        return self

    def stream_view(self, stream: str) -> ActivationCache:
        """The same cache, with short keys and helpers resolved in ``stream`` (``"encoder"``/``"decoder"``)."""
        streams = getattr(self.model, "streams", (None,))
        if stream not in streams:
            raise ValueError(f"unknown stream {stream!r}; this model's streams are {streams}")
        return ActivationCache(self.cache_dict, self.model, self.has_batch_dim, stream)

    def __getattr__(self, name: str) -> Any:
        # cache.encoder / cache.decoder on encoder-decoders
        if name in ("encoder", "decoder") and name in getattr(self.__dict__.get("model"), "streams", ()):
            return self.stream_view(name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    # ------------------------------------------------------------------ helpers
    def _spec(self) -> Any:
        if self.model is None:
            raise ValueError(
                "this cache has no model (ActivationCache(..., model=None)), so it cannot describe the residual "
                "stream; build it with model.run_with_cache(...)"
            )
        return self.model.stream_spec(self.stream if self.stream is not None else self._stream_for_short_keys())

    def _need(self, name: str, method: str) -> Tensor:
        if name not in self.cache_dict:
            raise ValueError(
                f"{method} needs {name!r} in the cache, which lacks it; run run_with_cache without names_filter "
                "or include that hook"
            )
        return self.cache_dict[name]

    def _require_pre_ln(self, spec: StreamSpec, method: str) -> None:
        if spec.norm_position != "pre":
            raise ValueError(
                f"{method} is not defined for this post-LN stream: each block renormalises the residual "
                "(the stream is LN(resid_pre + attn_out), then LN(that + mlp_out)), so component outputs "
                "do not sum to any later residual. Use accumulated_resid (the actual stream per layer) or "
                "stack_head_results (each head's exact share of its own block's attn_out) instead."
            )
        if spec.embed_normalized:
            raise ValueError(f"{method}: the embeddings are normalised before block 0, so they are not a summand")

    def _n_layers(self, spec: StreamSpec, layer: int | None) -> int:
        if layer is None:
            return spec.n_layers
        if layer < 0:
            layer += spec.n_layers + 1
        if not 0 <= layer <= spec.n_layers:
            raise ValueError(f"layer must be in [0, {spec.n_layers}] (or negative from the end), got {layer}")
        return layer

    # ------------------------------------------------------------------ residual stream
    def accumulated_resid(
        self,
        layer: int | None = None,
        incl_mid: bool = False,
        apply_ln: bool = False,
        pos_slice: Any = None,
        return_labels: bool = False,
    ) -> Any:
        """The residual stream at the start of each layer up to ``layer`` (all layers + final output by default).

        Valid for pre- and post-LN: these are the actual states the blocks receive. ``layer=None``
        includes the last block's output (``"final_post"``), which in a post-LN stack is the normalised
        final state and in a pre-LN stack is the state before the final norm.

        Args:
            layer: Stop before this block (``None``: all blocks plus the final output).
            incl_mid: Also include ``resid_mid`` (and ``resid_mid_cross`` in decoders).
            apply_ln: Apply the cached final-norm scale (pre-LN stacks with a final norm only).
            pos_slice: Positions to keep (int, slice, or indices).
            return_labels: Also return labels such as ``"3_pre"``.

        Returns:
            ``(component, batch, pos, d_model)`` tensor (and labels).
        """
        spec = self._spec()
        n = self._n_layers(spec, layer)
        p = spec.prefix
        comps: list[Tensor] = []
        labels: list[str] = []
        for i in range(n):
            comps.append(self._need(f"{p}blocks.{i}.hook_resid_pre", "accumulated_resid"))
            labels.append(f"{i}_pre")
            if incl_mid:
                comps.append(self._need(spec.resid_hook(i, "mid"), "accumulated_resid"))
                labels.append(f"{i}_mid")
                if spec.has_cross_attention:
                    comps.append(self._need(spec.resid_hook(i, "mid_cross"), "accumulated_resid"))
                    labels.append(f"{i}_mid_cross")
        if n == spec.n_layers:
            comps.append(self._need(spec.resid_hook(n - 1), "accumulated_resid"))
            labels.append("final_post")
        stack = torch.stack(one_device(comps))
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer=None)
        stack = apply_slice(stack, pos_slice, -2)
        return (stack, labels) if return_labels else stack

    def decompose_resid(
        self,
        layer: int | None = None,
        mode: str = "all",
        incl_embeds: bool = True,
        apply_ln: bool = False,
        pos_slice: Any = None,
        return_labels: bool = False,
    ) -> Any:
        """Split ``resid_pre[layer]`` into embeddings and each block's attention / MLP outputs (pre-LN only).

        ``mode`` is ``"all"``, ``"attn"`` or ``"mlp"``. Cross-attention outputs are included in decoders.
        The components sum exactly to the residual stream at ``layer``.
        """
        if mode not in ("all", "attn", "mlp"):
            raise ValueError(f"mode must be 'all', 'attn' or 'mlp', got {mode!r}")
        spec = self._spec()
        self._require_pre_ln(spec, "decompose_resid")
        n = self._n_layers(spec, layer)
        p = spec.prefix
        comps: list[Tensor] = []
        labels: list[str] = []
        if incl_embeds:
            for h in spec.embed_hooks:
                comps.append(self._need(h, "decompose_resid"))
                labels.append(h.rsplit("hook_", 1)[-1])
        for i in range(n):
            if mode in ("all", "attn"):
                comps.append(self._need(f"{p}blocks.{i}.hook_attn_out", "decompose_resid"))
                labels.append(f"{i}_attn_out")
                if spec.has_cross_attention:
                    comps.append(self._need(f"{p}blocks.{i}.hook_cross_attn_out", "decompose_resid"))
                    labels.append(f"{i}_cross_attn_out")
            if mode in ("all", "mlp"):
                comps.append(self._need(f"{p}blocks.{i}.hook_mlp_out", "decompose_resid"))
                labels.append(f"{i}_mlp_out")
        if not comps:
            raise ValueError("nothing to decompose: layer=0 with incl_embeds=False gives no components")
        stack = torch.stack(one_device(comps))
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer=None if layer is None else n)
        stack = apply_slice(stack, pos_slice, -2)
        return (stack, labels) if return_labels else stack

    def stack_head_results(
        self,
        layer: int = -1,
        return_labels: bool = False,
        incl_remainder: bool = False,
        pos_slice: Any = None,
        apply_ln: bool = False,
        attn: str = "attn",
    ) -> Any:
        """Each head's output ``z[..., h, :] @ W_O[h]`` for every layer before ``layer`` (-1: all).

        Valid in every model: heads plus ``b_O`` sum exactly to their block's ``attn_out``. Computed from
        the cached ``hook_z`` (``hook_result`` need not be cached). ``attn="cross_attn"`` stacks the
        cross-attention heads of a decoder. ``incl_remainder`` adds ``resid - sum(heads)`` (pre-LN only).

        Returns:
            ``(layer * head_index, batch, pos, d_model)`` (and labels ``"L{l}H{h}"``).
        """
        spec = self._spec()
        if attn not in ("attn", "cross_attn"):
            raise ValueError(f"attn must be 'attn' or 'cross_attn', got {attn!r}")
        if attn == "cross_attn" and not spec.has_cross_attention:
            raise ValueError(
                "attn='cross_attn': this stream has no cross-attention (only a decoder stream has; use cache.decoder)"
            )
        n = spec.n_layers if layer == -1 else self._n_layers(spec, layer)
        p = spec.prefix
        comps: list[Tensor] = []
        labels: list[str] = []
        for i in range(n):
            z = self._need(f"{p}blocks.{i}.{attn}.hook_z", "stack_head_results")
            W_O = getattr(spec.blocks[i], attn).W_O.to(z.device, z.dtype)
            res = torch.einsum("...hd,hdm->h...m", z, W_O)
            comps.append(res)
            labels.extend(f"L{i}H{h}" for h in range(res.shape[0]))
        if not comps:
            raise ValueError("layer=0 selects no heads")
        stack = torch.cat(one_device(comps))
        if incl_remainder:
            self._require_pre_ln(spec, "stack_head_results(incl_remainder=True)")
            resid = (
                self._need(f"{p}blocks.{n}.hook_resid_pre", "stack_head_results")
                if n < spec.n_layers
                else self._need(spec.resid_hook(n - 1), "stack_head_results")
            )
            stack = torch.cat([stack, (resid.to(stack.device) - stack.sum(0))[None]])
            labels.append("remainder")
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer=None if layer == -1 else n)
        stack = apply_slice(stack, pos_slice, -2)
        return (stack, labels) if return_labels else stack

    def stack_activation(self, activation_name: str, layer: int = -1, sublayer_type: str | None = None) -> Tensor:
        """Stack one activation over layers: ``stack_activation("pattern")`` -> ``(layer, batch, head, q, k)``."""
        spec = self._spec()
        n = spec.n_layers if layer == -1 else self._n_layers(spec, layer)
        stream = self.stream if self.stream is not None else self._stream_for_short_keys()
        names = [get_act_name(activation_name, i, sublayer_type, stream=stream) for i in range(n)]
        return torch.stack(one_device([self._need(nm, "stack_activation") for nm in names]))

    def get_full_resid_decomposition(
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        expand_neurons: bool = True,
        apply_ln: bool = False,
        pos_slice: Any = None,
        return_labels: bool = False,
    ) -> Any:
        """Every head, every MLP neuron (or MLP output), the embeddings and the biases (pre-LN only).

        Components sum exactly to the residual stream at ``layer`` (or, with ``mlp_input``, to the
        input of that layer's MLP).
        """
        spec = self._spec()
        self._require_pre_ln(spec, "get_full_resid_decomposition")
        n = self._n_layers(spec, layer)
        p = spec.prefix
        ref = self._need(f"{p}blocks.0.hook_resid_pre", "get_full_resid_decomposition")
        attn_names = ("attn", "cross_attn") if spec.has_cross_attention else ("attn",)
        # attention layers before the target point: all of [0, n), plus layer n's when reading the MLP input
        attn_layers = list(range(n + 1 if mlp_input and n < spec.n_layers else n))
        comps: list[Tensor] = []
        labels: list[str] = []
        bias = torch.zeros_like(ref)
        for i in attn_layers:
            for name in attn_names:
                heads, head_labels = self._one_layer_heads(spec, i, name)
                comps.append(heads)
                labels.extend(head_labels)
                b_O = getattr(spec.blocks[i], name).b_O
                if b_O is not None:
                    bias = bias + b_O.to(ref.device, ref.dtype)
        for i in range(n):
            post = self._need(f"{p}blocks.{i}.mlp.hook_post", "get_full_resid_decomposition")
            W_out = spec.blocks[i].mlp.W_out.to(post.device, post.dtype)
            if expand_neurons:
                comps.append(torch.einsum("...n,nm->n...m", post, W_out))
                labels.extend(f"L{i}N{j}" for j in range(W_out.shape[0]))
            else:
                comps.append((post @ W_out)[None])
                labels.append(f"{i}_mlp_out")
            b_out = spec.blocks[i].mlp.b_out
            if b_out is not None:
                bias = bias + b_out.to(ref.device, ref.dtype)
        for h in spec.embed_hooks:
            comps.append(self._need(h, "get_full_resid_decomposition")[None])
            labels.append(h.rsplit("hook_", 1)[-1])
        comps.append(bias[None])
        labels.append("bias")
        stack = torch.cat(one_device(comps))
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer=None if layer is None else n, mlp_input=mlp_input)
        stack = apply_slice(stack, pos_slice, -2)
        return (stack, labels) if return_labels else stack

    def _one_layer_heads(self, spec: StreamSpec, i: int, attn: str) -> tuple[Tensor, list[str]]:
        z = self._need(f"{spec.prefix}blocks.{i}.{attn}.hook_z", "get_full_resid_decomposition")
        W_O = getattr(spec.blocks[i], attn).W_O.to(z.device, z.dtype)
        res = torch.einsum("...hd,hdm->h...m", z, W_O)
        tag = "X" if attn == "cross_attn" else "H"
        return res, [f"L{i}{tag}{h}" for h in range(res.shape[0])]

    # ------------------------------------------------------------------ norms and logits
    def apply_ln_to_stack(
        self,
        residual_stack: Float[Tensor, "... d_model"],
        layer: int | None = None,
        mlp_input: bool = False,
        pos_slice: Any = None,
        batch_slice: Any = None,
        has_batch_dim: bool = True,
    ) -> Float[Tensor, "... d_model"]:
        """Apply a cached norm's scale to every component (pre-LN only), as the norm treats their sum.

        ``layer=None`` or ``-1`` uses the final norm; ``layer=i`` the norm before block ``i``'s attention
        (``ln1``) or, with ``mlp_input``, before its MLP (``ln2``; ``ln3`` in decoder blocks, whose ``ln2`` is
        the cross-attention norm). LayerNorm components are centred first; RMSNorm ones are not. The norm's
        weight is not applied (fold it into what reads the stream).

        Slices as TransformerLens: ``residual_stack`` is ``(component, batch, [pos,] d_model)`` already cut
        to ``pos_slice``; ``pos_slice`` and ``batch_slice`` cut the cached scale to match, and
        ``batch_slice`` also cuts the stack's batch axis (axis 1). Both take None, an int, a slice, a tuple
        (``slice(*t)``), a list of indices or TransformerLens's ``Slice``.
        """
        spec = self._spec()
        if spec.norm_position != "pre":
            self._require_pre_ln(spec, "apply_ln_to_stack")
        if layer is not None and layer < 0:
            layer = self._n_layers(spec, layer)
        if layer is None or layer == spec.n_layers:
            if spec.final_norm is None:
                raise ValueError("this stream has no final norm; pass layer=i to use block i's input norm")
            norm_path = (
                spec.prefix + spec.final_norm if not spec.final_norm.startswith(spec.prefix) else spec.final_norm
            )
        else:
            ln = str(spec.blocks[layer].mlp_norm_name) if mlp_input else "ln1"
            norm_path = f"{spec.prefix}blocks.{layer}.{ln}"
        scale = self._need(f"{norm_path}.hook_scale", "apply_ln_to_stack")
        assert self.model is not None  # _spec() above refuses a cache without a model
        norm_mod = self.model.get_submodule(norm_path)
        x = residual_stack
        if has_batch_dim and self.has_batch_dim and batch_slice is not None:
            x = apply_slice(x, batch_slice, 1)
        if getattr(norm_mod.cfg, "kind", "layernorm") == "layernorm":
            x = x - x.mean(-1, keepdim=True)
        if self.has_batch_dim:
            scale = apply_slice(scale, batch_slice, 0)
        scale = apply_slice(scale, pos_slice, -2)
        if scale.ndim > x.ndim - 1 or tuple(scale.shape[:-1]) != tuple(x.shape[-scale.ndim : -1]):
            raise ValueError(
                f"apply_ln_to_stack: the stack {tuple(x.shape)} does not match the cached scale {tuple(scale.shape)} "
                "(batch, pos, 1) after pos_slice/batch_slice; pass the pos_slice the stack was cut with"
            )
        return x / scale.to(x.device)  # a device_map may leave the norm's scale on another device

    def logit_attrs(
        self,
        residual_stack: Float[Tensor, "... d_model"],
        tokens: int | Tensor,
        incorrect_tokens: int | Tensor | None = None,
        pos_slice: Any = None,
        batch_slice: Any = None,
        has_batch_dim: bool = True,
    ) -> Tensor:
        """Logit attribution of each residual component, as TransformerLens.

        The components are normalised with the cached final-norm scale (:meth:`apply_ln_to_stack`, with
        the same ``pos_slice`` / ``batch_slice`` meaning) where the stream has a final norm, then projected:
        ``attr = component . W_U[:, token]`` (minus the ``incorrect_tokens`` direction if given). Needs a
        linear unembedding (the final norm's affine is folded into it).

        Args:
            residual_stack: ``(component, batch, [pos,] d_model)``, cut to ``pos_slice`` already.
            tokens: One token id, or ids per item (and position).
            incorrect_tokens: Ids of the same shape whose direction is subtracted.
            pos_slice: The positions the stack was cut to.
            batch_slice: Items to keep (cuts the stack's axis 1).
            has_batch_dim: Whether the stack has a batch axis.

        Differs from TransformerLens: string tokens are not accepted (pass ids).
        """
        spec = self._spec()
        if spec.unembed is None:
            raise ValueError(
                f"logit_attrs needs logits that are linear in the residual stream, and here they are not: "
                f"{spec.unembed_note}. Use the model's head on each component (a logit lens) instead."
            )
        W_U = spec.unembed[0]
        if not isinstance(tokens, (int, Tensor)):
            raise TypeError(f"tokens must be an int or a LongTensor, got {type(tokens).__name__}")
        x = residual_stack
        if spec.final_norm is not None and spec.norm_position == "pre":
            x = self.apply_ln_to_stack(
                x, None, pos_slice=pos_slice, batch_slice=batch_slice, has_batch_dim=has_batch_dim
            )
        elif has_batch_dim and self.has_batch_dim:
            x = apply_slice(x, batch_slice, 1)
        W_U = W_U.to(x.device, x.dtype)
        tok = torch.as_tensor(tokens, device=x.device)
        direction = W_U[:, tok].movedim(0, -1)
        if incorrect_tokens is not None:
            bad = torch.as_tensor(incorrect_tokens, device=x.device)
            if bad.shape != tok.shape:
                raise ValueError(
                    f"incorrect_tokens must have the shape of tokens {tuple(tok.shape)}, got {tuple(bad.shape)}"
                )
            direction = direction - W_U[:, bad].movedim(0, -1)
        return (x * direction).sum(-1)
