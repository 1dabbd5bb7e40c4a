"""Attribution patching: a first-order (gradient) estimate of every activation-patching result at once.

Activation patching replaces activation ``a`` of the *base* run by its value ``a'`` in the *source* run
and measures ``metric(patched) - metric(base)``. Attribution patching (Nanda, 2023; Syed et al., 2023)
replaces that difference by its linear approximation around the base run::

    metric(patched) - metric(base)  ~=  sum over the patched slice of (a' - a) * d metric / d a |_base

One forward and one backward pass on the base run (plus a forward on the source run) give the estimate
for every layer, position and head together, instead of one forward per target. The estimate is exact for
activations the metric depends on linearly and good for small differences; large, nonlinear effects
(attention saturating, a LayerNorm scale changing a lot) are where it departs from real patching: check
the targets that matter with :mod:`encoderlens.analysis.patching`.

The functions mirror the patching ones (same arguments, same :class:`~encoderlens.analysis.results.Labelled`
axes, same normalisation by ``metric(source) - metric(base)``), so the two can be compared directly.
The metric must be differentiable; a per-item metric (shape ``(batch,)``) gives per-item attributions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from encoderlens.analysis.patching_core import (
    Direction,
    HookList,
    Metric,
    PatchSetup,
    finish_result,
    head_targets,
    per_copy,
    position_labels,
    resid_targets,
    select_positions,
    setup_runs,
)
from encoderlens.analysis.results import Labelled
from encoderlens.models.base import HookedModel
from encoderlens.models.contract import StreamName
from encoderlens.names import hook_axes


def base_gradients(
    model: HookedModel, setup: PatchSetup, hook_names: Sequence[str], metric: Metric
) -> tuple[dict[str, Tensor], Tensor]:
    """Activations and ``d metric / d activation`` of the base run at ``hook_names``.

    A per-item metric is summed before the backward pass; items do not interact in these models, so each
    item's gradient is that of its own metric value.

    Returns:
        ``(grads, metric_value)``; activations the metric does not depend on get zero gradients.
    """
    acts: dict[str, Tensor] = {}

    def keep(x: Tensor, hook: Any) -> Tensor:
        # a leaf that requires grad when nothing upstream does (e.g. parameters frozen)
        if not x.requires_grad:
            x = x.detach().requires_grad_(True)
        acts[hook.name] = x
        return x

    names = list(dict.fromkeys(hook_names))
    b = setup.base.batch_size
    with torch.enable_grad():
        out = model.run_prepared(
            setup.base,
            setup.return_type,
            fwd_hooks=[*((n, per_copy(f, b)) for n, f in setup.base_hooks), *((n, keep) for n in names)],
        )
        value = metric(out)
        if not isinstance(value, Tensor) or not value.requires_grad:
            raise TypeError(
                "attribution patching needs a differentiable metric returning a tensor that depends on the output "
                f"(got {type(value).__name__}); avoid .item(), argmax or torch.no_grad inside the metric"
            )
        missing = [n for n in names if n not in acts]
        if missing:
            raise RuntimeError(f"hooks never fired during the forward: {missing[:5]}")
        grads = torch.autograd.grad(value.sum(), [acts[n] for n in names], allow_unused=True)
    out_grads = {n: (g if g is not None else torch.zeros_like(acts[n])).detach() for n, g in zip(names, grads)}
    return out_grads, value.detach().float().cpu()


def _attribute(
    setup: PatchSetup, grads: dict[str, Tensor], name: str, reduce_dims: Sequence[int], per_item: bool
) -> Tensor:
    """``sum((source - base) * grad)`` over ``reduce_dims`` (and over batch unless per-item)."""
    delta = setup.source_cache[name].to(grads[name].device) - setup.base_cache[name].to(grads[name].device)
    prod = (delta * grads[name]).float()
    dims = sorted(set(reduce_dims))
    if dims:
        prod = prod.sum(dim=dims)
    return prod if per_item else prod.sum(0, keepdim=True)


def attribute_residual(
    model: HookedModel,
    clean: Any,
    corrupt: Any,
    metric: Metric,
    *,
    hook: str = "resid_pre",
    stream: StreamName = None,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    direction: Direction = "denoise",
    normalize: bool = True,
    corrupt_hooks: HookList = (),
    return_type: str | None = None,
    input_kwargs: dict[str, Any] | None = None,
    sum_positions: bool = False,
) -> Labelled:
    """Gradient estimate of :func:`~encoderlens.analysis.patching.patch_residual` (same arguments and axes).

    With ``normalize=False`` values are estimated metric values of the patched runs (base + estimated change),
    comparable with raw patching values. ``sum_positions`` estimates patching every position at once
    (axes ``("layer",)``).
    """
    stream, lays, names = resid_targets(model, stream, hook, layers)
    setup = setup_runs(
        model,
        clean,
        corrupt,
        metric,
        names,
        direction=direction,
        corrupt_hooks=corrupt_hooks,
        return_type=return_type,
        input_kwargs=input_kwargs,
    )
    grads, value = base_gradients(model, setup, names, metric)
    per_item = value.ndim == 1
    n_pos = int(setup.base.mask(stream).shape[1])
    poss = select_positions(n_pos, positions)
    rows = []
    for nm in names:
        a = _attribute(setup, grads, nm, [2], per_item)  # (batch|1, pos)
        rows.append(a[:, poss])  # (batch|1, npos)
    vals = torch.stack(rows)  # layer, b, pos
    vals = vals.permute(0, 2, 1).reshape(len(lays) * len(poss), -1).cpu()
    if not per_item:
        vals = vals[:, 0]
    if sum_positions:
        vals = vals.reshape(len(lays), len(poss), *vals.shape[1:]).sum(1)
        return finish_result(
            vals + setup.metric_base,
            [len(lays)],
            ["layer"],
            {"layer": [f"L{i}" for i in lays]},
            setup,
            normalize,
            f"attribution patching: {model.stream_spec(stream).prefix}{hook} by layer",
            hook=hook,
            stream=stream,
            method="attribution patching (first-order)",
        )
    labels = position_labels(setup, stream, n_pos)
    return finish_result(
        vals + setup.metric_base,
        [len(lays), len(poss)],
        ["layer", "pos"],
        {"layer": [f"L{i}" for i in lays], "pos": [labels[p] for p in poss]},
        setup,
        normalize,
        f"attribution patching: {model.stream_spec(stream).prefix}{hook} by layer and position",
        hook=hook,
        stream=stream,
        method="attribution patching (first-order)",
    )


def attribute_heads(
    model: HookedModel,
    clean: Any,
    corrupt: Any,
    metric: Metric,
    *,
    act: str = "z",
    attn: str = "attn",
    stream: StreamName = None,
    layers: Sequence[int] | None = None,
    by_pos: bool = False,
    direction: Direction = "denoise",
    normalize: bool = True,
    corrupt_hooks: HookList = (),
    return_type: str | None = None,
    input_kwargs: dict[str, Any] | None = None,
) -> Labelled:
    """Gradient estimate of :func:`~encoderlens.analysis.patching.patch_heads` (same arguments and axes)."""
    stream, spec, lays, names = head_targets(model, stream, attn, act, layers)
    setup = setup_runs(
        model,
        clean,
        corrupt,
        metric,
        names,
        direction=direction,
        corrupt_hooks=corrupt_hooks,
        return_type=return_type,
        input_kwargs=input_kwargs,
    )
    grads, value = base_gradients(model, setup, names, metric)
    per_item = value.ndim == 1
    lay = hook_axes(names[0])
    ndim = setup.base_cache[names[0]].ndim
    head_d, pos_d = lay["head"], lay["pos"]
    keep = {0, head_d} | ({pos_d} if by_pos else set())
    reduce_dims = [d for d in range(ndim) if d not in keep]
    rows = []
    for nm in names:
        a = _attribute(setup, grads, nm, reduce_dims, per_item)  # (b, head[, pos]) or (b, pos, head)
        if by_pos and pos_d < head_d:
            a = a.transpose(1, 2)  # -> (b, head, pos)
        rows.append(a)
    vals = torch.stack(rows)  # layer, b, head[, pos]
    n_heads = vals.shape[2]
    shape = [len(lays), n_heads]
    axes = ["layer", "head"]
    labels = {"layer": [f"L{i}" for i in lays], "head": [f"H{h}" for h in range(n_heads)]}
    if by_pos:
        n_pos = vals.shape[3]
        shape.append(n_pos)
        axes.append("pos")
        pos_stream = model.cross_attention_source(stream) if attn == "cross_attn" and act in ("k", "v") else stream
        labels["pos"] = position_labels(setup, pos_stream, n_pos)
        vals = vals.permute(0, 2, 3, 1)
    else:
        vals = vals.permute(0, 2, 1)
    vals = vals.reshape(-1, vals.shape[-1]).cpu()
    if not per_item:
        vals = vals[:, 0]
    return finish_result(
        vals + setup.metric_base,
        shape,
        axes,
        labels,
        setup,
        normalize,
        f"attribution patching: {model.stream_spec(stream).prefix}{attn} heads ({act})",
        act=act,
        attn=attn,
        stream=stream,
        method="attribution patching (first-order)",
    )


def attribute_block_outputs(
    model: HookedModel,
    clean: Any,
    corrupt: Any,
    metric: Metric,
    *,
    component: Literal["mlp", "attn", "cross_attn"] = "mlp",
    stream: StreamName = None,
    layers: Sequence[int] | None = None,
    by_pos: bool = False,
    **kwargs: Any,
) -> Labelled:
    """Gradient estimate of :func:`~encoderlens.analysis.patching.patch_block_outputs`."""
    hooks = {"mlp": "mlp_out", "attn": "attn_out", "cross_attn": "cross_attn_out"}
    if component not in hooks:
        raise ValueError(f"component must be one of {tuple(hooks)}, got {component!r}")
    return attribute_residual(
        model,
        clean,
        corrupt,
        metric,
        hook=hooks[component],
        stream=stream,
        layers=layers,
        sum_positions=not by_pos,
        **kwargs,
    )


def attribute_mlp(model: HookedModel, clean: Any, corrupt: Any, metric: Metric, **kwargs: Any) -> Labelled:
    """Gradient estimate of :func:`~encoderlens.analysis.patching.patch_mlp`."""
    return attribute_block_outputs(model, clean, corrupt, metric, component="mlp", **kwargs)


def attribute_attn_layers(model: HookedModel, clean: Any, corrupt: Any, metric: Metric, **kwargs: Any) -> Labelled:
    """Gradient estimate of :func:`~encoderlens.analysis.patching.patch_attn_layers`."""
    return attribute_block_outputs(model, clean, corrupt, metric, component="attn", **kwargs)
