"""Direct contributions: split a residual-stream vector into what each layer, head and embedding wrote.

**Pre-LN stacks** (T5, ModernBERT, wav2vec2/HuBERT large): the residual stream is a sum,
``resid = embeddings + sum_l (attn_out_l + mlp_out_l)``, so the decomposition is exact. Reading the final
output through the final norm divides by the norm's scale, which depends on the whole sum; as everywhere
in direct logit attribution the scale is *frozen* at its value on this input (LayerNorm:
``x -> w * (x - mean(x)) / s + b`` with ``s`` fixed is affine). The parts then sum exactly to the final
normalised output.

**Post-LN stacks** (BERT, BART, wav2vec2/HuBERT base): every block renormalises the stream twice
(``resid_mid = LN1(resid_pre + attn_out)``, ``resid_post = LN2(resid_mid + mlp_out)``), so no sum of
component outputs equals a later residual. What this module computes instead: every LayerNorm on the way
is frozen at its observed scale ``s`` and so becomes the affine map ``x -> w * (x - mean(x)) / s + b``.
Each component is pushed through the linear parts of every later norm, and the norms' biases (pushed
through the norms after them) form one more part, ``"bias"``. These parts sum *exactly* to the actual
residual (``Decomposition.max_error()`` checks it). What is approximated is the meaning of each part:
it is the component's contribution *with every norm scale held at its observed value*; removing the
component would also change those scales (and every later attention pattern: like pre-LN direct effects,
these are direct paths only). Treat small parts with care where a scale changes a lot.

Heads: a block's ``attn_out`` is exactly the sum of its heads' outputs plus ``b_O``
(:meth:`~encoderlens.cache.ActivationCache.stack_head_results`); with ``heads=True`` each head is a part and
``b_O`` goes into ``"bias"``.

Output heads: projecting onto a token's unembedding is exact for linear heads (T5 ``lm_head``, CTC).
BERT's MLM head (dense -> GELU -> LN -> unembed) is not linear: :func:`direct_logit_attribution` then uses
the head's gradient at the actual final residual (its tangent map); the parts sum to ``grad . x``, and
``meta["head_offset"] = actual - grad . x`` is reported so nothing is hidden.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from encoderlens.analysis.lens import _final_norm, head_fn
from encoderlens.analysis.results import Labelled
from encoderlens.cache import StreamSpec
from encoderlens.models.base import HookedModel
from encoderlens.models.contract import Prepared, StreamName


@dataclass
class Decomposition:
    """Parts of a residual-stream vector.

    Attributes:
        components: ``(component, batch, pos, d_model)``.
        labels: One per component (``"embed"``, ``"L3_attn"``, ``"L3H2"``, ``"L3_mlp"``, ``"bias"``...).
        target: The actual vector decomposed, ``(batch, pos, d_model)``.
        target_name: What it is (``"blocks.5.hook_resid_post"``, ``"ln_final(blocks.5.hook_resid_post)"``).
        frozen_norms: Norms treated as affine maps at their observed scale (empty when none).
        prepared: The input.
        stream: The stream.
    """

    components: Float[Tensor, "component batch pos d_model"]
    labels: list[str]
    target: Float[Tensor, "batch pos d_model"]
    target_name: str
    frozen_norms: list[str]
    prepared: Prepared
    stream: StreamName
    meta: dict[str, Any] = field(default_factory=dict)

    def _repr_html_(self) -> str:
        """Jupyter: the interactive heatmap of how much each part writes at each position of item 0."""
        return component_norms(self)._repr_html_()

    def max_error(self) -> float:
        """Max |sum of parts - target| over real positions (float rounding only)."""
        err = (self.components.sum(0) - self.target).abs().amax(-1)
        real = self.prepared.mask(self.stream).bool().to(err.device)
        return float(err[real].max())

    def project(self, direction: Tensor, title: str = "direct contribution") -> Labelled:
        """Dot every part with ``direction`` (``(d_model,)`` or ``(batch, pos, d_model)``).

        Returns:
            :class:`Labelled` with axes ``("component", "item", "pos")``; padded positions are NaN.
        """
        if direction.shape[-1] != self.components.shape[-1]:
            raise ValueError(
                f"direction must end in d_model={self.components.shape[-1]}, got shape {tuple(direction.shape)}"
            )
        vals = (self.components * direction.to(self.components)).sum(-1)
        real = self.prepared.mask(self.stream).bool().to(vals.device)
        vals = torch.where(real[None], vals, torch.full_like(vals, float("nan")))
        n_pos = vals.shape[2]
        return Labelled(
            vals.cpu(),
            ("component", "item", "pos"),
            {
                "component": self.labels,
                "item": [str(i) for i in range(vals.shape[1])],
                "pos": self.prepared.position_labels(self.stream, 0, n_pos),
            },
            title,
            {"frozen_norms": self.frozen_norms, "target": self.target_name},
        )


def _frozen(norm: Any, scale: Tensor, x: Tensor, with_bias: bool) -> Tensor:
    """A norm as the affine map it is at a fixed scale; ``x`` is ``(..., batch, pos, d)``."""
    kind = getattr(norm.cfg, "kind", "layernorm")
    if kind == "layernorm":
        x = x - x.mean(-1, keepdim=True)
    y = x / scale.to(x.dtype) * norm.w.to(x.dtype)
    if with_bias and getattr(norm, "b", None) is not None:
        y = y + norm.b.to(x.dtype)
    return y


class _Walk:
    """Components carried along the stream through frozen norms."""

    def __init__(self) -> None:
        self.parts: list[Tensor] = []
        self.labels: list[str] = []
        self.bias: Tensor | None = None

    def add(self, label: str, t: Tensor) -> None:
        self.parts.append(t)
        self.labels.append(label)

    def add_bias(self, t: Tensor) -> None:
        self.bias = t if self.bias is None else self.bias + t

    def through(self, norm: Any, scale: Tensor) -> None:
        self.parts = [_frozen(norm, scale, p, False) for p in self.parts]
        if self.bias is not None:
            self.bias = _frozen(norm, scale, self.bias, False)
        b = getattr(norm, "b", None)
        if b is not None:
            self.add_bias(b.to(scale.dtype).expand(*scale.shape[:-1], b.shape[0]))

    def stack(self, like: Tensor) -> tuple[Tensor, list[str]]:
        parts, labels = list(self.parts), list(self.labels)
        parts.append(self.bias if self.bias is not None else torch.zeros_like(like))
        labels.append("bias")
        return torch.stack([p.expand_as(like) for p in parts]), labels


def _embed_norm(model: HookedModel, spec: StreamSpec) -> tuple[str, Any] | None:
    """The norm between the embedding summands and block 0 (BERT, wav2vec2/HuBERT base), if it is hooked."""
    path = f"{spec.prefix}embed_ln"
    if f"{path}.hook_scale" not in model.hook_dict:
        return None
    return path, model.get_submodule(path)


def decompose(
    model: HookedModel,
    input: Any,
    *,
    stream: StreamName = None,
    layer: int | None = None,
    heads: bool = False,
    apply_final_norm: bool = True,
    **input_kwargs: Any,
) -> Decomposition:
    """Split the residual stream at ``layer`` (default: the final output) into per-component parts.

    Args:
        model: An encoderlens model.
        input: Text, token ids, waveform, or a prepared input.
        stream: ``"encoder"``/``"decoder"`` on encoder-decoders.
        layer: Decompose ``resid_pre`` of this block; None: the last block's output.
        heads: One part per attention head (``b_O`` joins ``"bias"``) instead of one per attention layer.
        apply_final_norm: With ``layer=None``, decompose the output of the final norm (where there is one),
            which is what output heads read.

    Returns:
        A :class:`Decomposition`; its parts sum to the target exactly (see the module doc for what each
        part means in post-LN stacks).
    """
    stream = model.resolve_stream(stream)
    prepared = model.prepare_input(input, **input_kwargs)
    spec = model.stream_spec(stream)
    n = spec.n_layers if layer is None else layer
    if not 0 <= n <= spec.n_layers:
        raise ValueError(f"layer must be in [0, {spec.n_layers}] or None, got {layer}")
    with torch.no_grad():
        return _decompose(model, prepared, spec, stream, n, layer, heads, apply_final_norm)


def _decompose(
    model: HookedModel,
    prepared: Prepared,
    spec: StreamSpec,
    stream: StreamName,
    n: int,
    layer: int | None,
    heads: bool,
    apply_final_norm: bool,
) -> Decomposition:
    p = spec.prefix
    embeds = set(spec.embed_hooks)
    # only what the walk reads: block outputs, norm scales, z for heads, the residual itself
    suffixes: tuple[str, ...] = (
        "hook_attn_out",
        "hook_cross_attn_out",
        "hook_mlp_out",
        "hook_scale",
        "hook_resid_pre",
        "hook_resid_post",
        "hook_normalized_resid_post",
    )
    suffixes += ("attn.hook_z",) if heads else ()
    _, cache = model.run_prepared_with_cache(prepared, names_filter=lambda n: n in embeds or n.endswith(suffixes))
    ref = cache[f"{p}blocks.0.hook_resid_pre"]
    walk = _Walk()
    frozen: list[str] = []
    emb_norm = _embed_norm(model, spec) if spec.embed_normalized else None
    if spec.embed_normalized and emb_norm is not None:
        path, mod = emb_norm
        for h in spec.embed_hooks:
            walk.add(h.rsplit("hook_", 1)[-1], cache[h])
        walk.through(mod, cache[f"{path}.hook_scale"])
        frozen.append(path)
    elif spec.embed_normalized:
        walk.add("embed", ref)  # the normalised input of block 0, as one part
    else:
        for h in spec.embed_hooks:
            walk.add(h.rsplit("hook_", 1)[-1], cache[h])
    post = spec.norm_position == "post"
    head_stack = cache.stream_view(stream) if stream is not None else cache
    for i in range(n):
        block = spec.blocks[i]
        attn_names = ["attn", "cross_attn"] if spec.has_cross_attention else ["attn"]
        for attn in attn_names:
            out_hook = f"{p}blocks.{i}.hook_{'attn_out' if attn == 'attn' else 'cross_attn_out'}"
            tag = "" if attn == "attn" else "X"
            if heads:
                z = cache[f"{p}blocks.{i}.{attn}.hook_z"]
                mod = getattr(block, attn)
                res = torch.einsum("bphd,hdm->hbpm", z, mod.W_O.to(z.dtype))
                for hd in range(res.shape[0]):
                    walk.add(f"L{i}{tag or 'H'}{hd}", res[hd])
                if mod.b_O is not None:
                    walk.add_bias(mod.b_O.to(z.dtype).expand_as(ref))
            else:
                walk.add(f"L{i}_{attn}", cache[out_hook])
            if post:
                ln = "ln1" if attn == "attn" else "ln2"  # TransformerLens's names: ln2 = cross-attention norm
                walk.through(getattr(block, ln), cache[f"{p}blocks.{i}.{ln}.hook_scale"])
                frozen.append(f"{p}blocks.{i}.{ln}")
        walk.add(f"L{i}_mlp", cache[f"{p}blocks.{i}.hook_mlp_out"])
        if post:
            ln_mlp = str(block.mlp_norm_name)  # ln3 in blocks with cross-attention, else ln2
            walk.through(getattr(block, ln_mlp), cache[f"{p}blocks.{i}.{ln_mlp}.hook_scale"])
            frozen.append(f"{p}blocks.{i}.{ln_mlp}")
    meta: dict[str, Any] = {"norm_position": spec.norm_position}
    if not post and not spec.embed_normalized and not heads and walk.parts:
        # pre-LN sanity: the same parts as the cache's own exact decomposition
        ref_stack = head_stack.decompose_resid(layer=n, mode="all", incl_embeds=True)
        if ref_stack.shape[0] == len(walk.parts):
            meta["cache_decompose_max_diff"] = float((torch.stack(walk.parts) - ref_stack).abs().max())
    if n < spec.n_layers:
        target_name = f"{p}blocks.{n}.hook_resid_pre"
        target = cache[target_name]
    else:
        target_name = spec.resid_hook(n - 1)
        target = cache[target_name]
        norm = _final_norm(model, spec) if (layer is None and apply_final_norm) else None
        if norm is not None:
            assert spec.final_norm is not None
            path = spec.final_norm if spec.final_norm.startswith(p) else p + spec.final_norm
            walk.through(norm, cache[f"{path}.hook_scale"])
            frozen.append(path)
            target = norm(target)
            target_name = f"{path}({target_name})"
    comps, labels = walk.stack(target)
    return Decomposition(comps, labels, target, target_name, frozen, prepared, stream, meta)


def direct_logit_attribution(
    model: HookedModel,
    input: Any,
    token: int | str,
    *,
    position: int,
    item: int = 0,
    wrong_token: int | str | None = None,
    stream: StreamName = None,
    heads: bool = False,
    **input_kwargs: Any,
) -> Labelled:
    """How much each component writes, directly, to one token's logit (or a logit difference) at one position.

    Exact for linear output heads (with norms frozen as in :func:`decompose`). For BERT's nonlinear MLM
    head the parts are ``grad . part`` with the head's gradient at the actual final residual; then
    ``meta["first_order_total"]`` (the sum of the parts) differs from ``meta["actual"]`` by
    ``meta["head_offset"]``.

    Returns:
        :class:`Labelled` with axis ``("component",)``.
    """
    stream = model.resolve_stream(stream)
    readout = model.readout(stream)
    if readout is None:
        head_fn(model, stream)  # raises with the reason when there is no head at all
    # readout heads read the final norm's output: decompose that; a declared unembedding reads the raw stream
    dec = decompose(model, input, stream=stream, heads=heads, apply_final_norm=readout is not None, **input_kwargs)
    n_pos = dec.target.shape[1]
    if not -n_pos <= position < n_pos:
        raise ValueError(f"position {position} out of range for {n_pos} positions")
    if not bool(dec.prepared.mask(stream)[item, position]):
        raise ValueError(f"position {position} of item {item} is padding; pick a real position")
    tok = model.tokenizer
    out_labels = readout.output_labels if readout is not None else None

    def tid(t: int | str) -> int:
        if isinstance(t, int):
            return t
        if out_labels is not None:
            if t not in out_labels:
                raise ValueError(f"{t!r} is not an output label; labels: {list(out_labels)}")
            return out_labels.index(t)
        if tok is None:
            raise ValueError("token given as a string but the model has no tokenizer; pass an id")
        ids = tok.convert_tokens_to_ids([t])
        if not ids or ids[0] is None or (ids[0] == tok.unk_token_id and t != tok.unk_token):
            raise ValueError(f"{t!r} is not a single token of this vocabulary")
        return int(ids[0])

    good = tid(token)
    bad = tid(wrong_token) if wrong_token is not None else None
    fn = readout.head if readout is not None else head_fn(model, stream)
    linear = readout.linear if readout is not None else False  # the raw stream goes through the final norm
    x = dec.target[item, position].detach()
    parts = dec.components[:, item, position]
    xg = x.clone().requires_grad_(True)
    with torch.enable_grad():
        logits = fn(xg[None, None])[0, 0]
        val = logits[good] - (logits[bad] if bad is not None else 0.0)
        (g,) = torch.autograd.grad(val, xg)
    actual = float(val.detach())
    contrib = (parts @ g).detach()
    # a linear head is its gradient plus its bias: then parts . g + offset is exact
    offset = actual - float(contrib.sum())
    meta: dict[str, Any] = {
        "linearised": not linear,
        "actual": actual,
        "first_order_total": float(contrib.sum()),
        "head_offset": offset,
    }
    if linear:
        meta["unembed_bias"] = offset
    meta.update(frozen_norms=dec.frozen_norms, decomposition_max_error=dec.max_error())
    return Labelled(
        contrib.cpu(),
        ("component",),
        {"component": list(dec.labels)},
        f"direct logit attribution at position {position}",
        meta,
    )


def component_norms(dec: Decomposition, item: int = 0, positions: Sequence[int] | None = None) -> Labelled:
    """L2 norm of every part at every position of one item: how much each component writes."""
    norms = dec.components[:, item].norm(dim=-1)
    n_pos = norms.shape[1]
    labels = dec.prepared.position_labels(dec.stream, item, n_pos)
    poss = list(range(n_pos)) if positions is None else list(positions)
    return Labelled(
        norms[:, poss].cpu(),
        ("component", "pos"),
        {"component": dec.labels, "pos": [labels[q] for q in poss]},
        "norm of each direct contribution",
    )
