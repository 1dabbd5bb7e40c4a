"""Neuron-level activation and attribution patching: single MLP neurons (``mlp.hook_post``) by layer.

:func:`attribute_neurons` estimates the effect of patching every neuron of every layer at once (one
forward/backward on the base run, as :mod:`encoderlens.analysis.attribution`); :func:`patch_neurons`
patches neurons for real (batched, like :mod:`encoderlens.analysis.patching`), either a given list or
the ``top_k`` neurons ranked by the attribution estimate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from encoderlens.analysis.attribution import base_gradients
from encoderlens.analysis.patching_core import (
    Direction,
    HookList,
    Metric,
    Target,
    finish_result,
    position_labels,
    run_patches,
    select_layers,
    setup_runs,
)
from encoderlens.analysis.results import Labelled
from encoderlens.hooks import get_act_name
from encoderlens.models.base import HookedModel
from encoderlens.models.contract import StreamName


def _names(
    model: HookedModel, stream: StreamName, layers: Sequence[int] | None
) -> tuple[StreamName, list[int], list[str]]:
    stream = model.resolve_stream(stream)
    spec = model.stream_spec(stream)
    lays = select_layers(spec.n_layers, layers)
    return stream, lays, [spec.prefix + get_act_name("post", i) for i in lays]


def attribute_neurons(
    model: HookedModel,
    clean: Any,
    corrupt: Any,
    metric: Metric,
    *,
    stream: StreamName = None,
    layers: Sequence[int] | None = None,
    by_pos: bool = False,
    direction: Direction = "denoise",
    normalize: bool = True,
    corrupt_hooks: HookList = (),
    return_type: str | None = None,
    input_kwargs: dict[str, Any] | None = None,
) -> Labelled:
    """Attribution-patching estimate for every MLP neuron: axes ``(layer, neuron[, pos])`` (plus ``item``
    for a per-item metric), normalised like :func:`patch_neurons`.

    ``sum over positions of (a_source - a_base) * d metric / d a`` at ``mlp.hook_post``.
    """
    stream, lays, names = _names(model, stream, layers)
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
    rows = []
    for n in names:
        prod = ((setup.source_cache[n] - setup.base_cache[n]) * grads[n]).float()  # (b, pos, d_mlp)
        prod = prod.transpose(1, 2) if by_pos else prod.sum(1)  # (b, d_mlp[, pos])
        rows.append(prod if per_item else prod.sum(0, keepdim=True))
    vals = torch.stack(rows)  # layer, b, d_mlp[, pos]
    d_mlp = vals.shape[2]
    shape, axes = [len(lays), d_mlp], ["layer", "neuron"]
    labels = {"layer": [f"L{i}" for i in lays], "neuron": [f"N{j}" for j in range(d_mlp)]}
    if by_pos:
        shape.append(vals.shape[3])
        axes.append("pos")
        labels["pos"] = position_labels(setup, stream, vals.shape[3])
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
        "attribution patching: MLP neurons",
        method="attribution patching (first-order)",
        stream=stream,
    )


def patch_neurons(
    model: HookedModel,
    clean: Any,
    corrupt: Any,
    metric: Metric,
    *,
    neurons: Sequence[tuple[int, int]] | None = None,
    top_k: int | None = None,
    stream: StreamName = None,
    layers: Sequence[int] | None = None,
    direction: Direction = "denoise",
    normalize: bool = True,
    corrupt_hooks: HookList = (),
    return_type: str | None = None,
    input_kwargs: dict[str, Any] | None = None,
    chunk_size: int = 8,
) -> Labelled:
    """Activation patching of single MLP neurons (all positions at once): axis ``("neuron",)``, labels ``L1N23``.

    Args:
        neurons: ``(layer, neuron)`` pairs to patch; or
        top_k: patch the ``k`` neurons with the largest ``|attribute_neurons|`` estimate (``meta["estimate"]``
            holds their estimates); with neither, every neuron of ``layers``.

    Example:
        >>> res = patch_neurons(model, clean, corrupt, metric, top_k=10)
        >>> res.top(3)
    """
    if neurons is not None and top_k is not None:
        raise ValueError("give neurons or top_k, not both")
    stream, lays, names = _names(model, stream, layers)
    common: dict[str, Any] = dict(
        direction=direction, corrupt_hooks=corrupt_hooks, return_type=return_type, input_kwargs=input_kwargs
    )
    estimate = None
    if top_k is not None:
        est = attribute_neurons(model, clean, corrupt, metric, stream=stream, layers=lays, normalize=False, **common)
        flat = est.values if est.values.ndim == 2 else est.values.mean(-1)
        score = (flat - torch.as_tensor(est.meta["metric_corrupt" if direction == "denoise" else "metric_clean"])).abs()
        idx = score.flatten().topk(min(top_k, score.numel())).indices.tolist()
        d = flat.shape[1]
        neurons = [(lays[i // d], i % d) for i in idx]
        estimate = [float(flat.flatten()[i]) for i in idx]
    setup = setup_runs(model, clean, corrupt, metric, names, **common)  # type: ignore[arg-type]
    if neurons is None:
        d_mlp = setup.base_cache[names[0]].shape[-1]
        neurons = [(lay, j) for lay in lays for j in range(d_mlp)]
    spec = model.stream_spec(stream)
    targets = []
    for lay, j in neurons:
        lay = select_layers(spec.n_layers, [lay])[0]
        name = spec.prefix + get_act_name("post", lay)
        if name not in setup.source_cache:
            raise ValueError(f"layer {lay} is not among the patched layers {lays}")
        targets.append(Target(name, (slice(None), j)))
    vals = run_patches(
        model,
        setup.base,
        setup.source_cache,
        targets,
        metric,
        return_type=return_type,
        base_hooks=setup.base_hooks,
        chunk_size=chunk_size,
    )
    labels = {"neuron": [f"L{lay % spec.n_layers}N{j}" for lay, j in neurons]}
    res = finish_result(
        vals, [len(targets)], ["neuron"], labels, setup, normalize, "activation patching: MLP neurons", stream=stream
    )
    if estimate is not None:
        res.meta["estimate"] = estimate
    return res
