"""Feature-level activation patching and attribution patching through a spliced SAE.

The SAE is attached with ``use_error_term=True`` for the duration of the call, so the model runs exactly
as without it (the error term restores the activation) and patching one feature's activation changes the
output by exactly the change that feature's decoder direction makes. Both functions run on the shared
patching engine (:func:`~encoderlens.analysis.patching_core.run_patches`,
:func:`~encoderlens.analysis.attribution.base_gradients`) with targets on the SAE's
``hook_sae_acts_post``, and return :class:`~encoderlens.analysis.results.Labelled` ``(feature, pos)``
(``(feature,)`` with ``by_pos=False``; a trailing ``item`` axis for a per-item metric).

Example:
    >>> res = patch_sae_features(model, sae, clean, corrupt, logit_diff(position=6, good=paris, bad=rome))
    >>> res.top(5)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from encoderlens.analysis.attribution import base_gradients
from encoderlens.analysis.patching_core import (
    Direction,
    HookList,
    Metric,
    PatchSetup,
    Target,
    finish_result,
    position_labels,
    run_patches,
    select_positions,
    setup_runs,
)
from encoderlens.analysis.results import Labelled
from encoderlens.components.sae import SparseAutoencoder
from encoderlens.models.base import HookedModel
from encoderlens.models.contract import StreamName


def _stream_of(model: HookedModel, hook: str) -> StreamName:
    best: tuple[int, StreamName] = (-1, model.streams[0])
    for s in model.streams:
        prefix = model.stream_spec(s).prefix
        if hook.startswith(prefix) and len(prefix) > best[0]:
            best = (len(prefix), s)
    return best[1]


def _pick_features(
    setup: PatchSetup,
    name: str,
    stream: StreamName,
    features: Sequence[int] | None,
    max_features: int,
    d_sae: int,
) -> list[int]:
    if features is not None:
        out = []
        for f in features:
            if not isinstance(f, int) or not -d_sae <= f < d_sae:
                raise ValueError(f"feature {f!r} out of range for an SAE with d_sae={d_sae}")
            out.append(f % d_sae)
        return out
    delta = (setup.source_cache[name].float() - setup.base_cache[name].float()).abs()
    # padding positions are no part of either run's output: a feature that differs only there is no change
    real = setup.base.mask(stream).to(delta.device).bool()
    if tuple(real.shape) == tuple(delta.shape[:2]):
        delta = delta * real[..., None]
    score = delta.flatten(0, -2).sum(0)
    changed = int((score > 0).sum())
    k = min(max_features, changed)
    return sorted(score.topk(k).indices.tolist()) if k else []


def _prepare(
    model: HookedModel, sae: SparseAutoencoder, clean: Any, corrupt: Any, metric: Metric, kw: dict[str, Any]
) -> tuple[str, PatchSetup]:
    hook = sae.cfg.hook_name
    if not hook:
        raise ValueError("the SAE's cfg.hook_name is not set; it says where the SAE reads")
    name = f"{hook}.hook_sae_acts_post"
    setup = setup_runs(model, clean, corrupt, metric, [name], **kw)
    if setup.base_cache[name].ndim != 3:
        raise ValueError(
            f"feature patching needs (batch, pos, d_sae) features; {hook!r} gives {tuple(setup.base_cache[name].shape)}"
        )
    return name, setup


def patch_sae_features(
    model: HookedModel,
    sae: SparseAutoencoder,
    clean: Any,
    corrupt: Any,
    metric: Metric,
    *,
    features: Sequence[int] | None = None,
    max_features: int = 32,
    positions: Sequence[int] | None = None,
    by_pos: bool = True,
    direction: Direction = "denoise",
    normalize: bool = True,
    corrupt_hooks: HookList = (),
    return_type: str | None = None,
    input_kwargs: dict[str, Any] | None = None,
    chunk_size: int = 8,
    progress: bool = False,
) -> Labelled:
    """Activation patching of single SAE features (one run per feature and position).

    Args:
        model: An encoderlens model.
        sae: The SAE, spliced in at its ``cfg.hook_name`` (with the error term) during the call.
        clean, corrupt, metric, direction, normalize, corrupt_hooks, return_type, input_kwargs, chunk_size,
            progress: As in :func:`~encoderlens.analysis.patching.patch_residual`.
        features: Feature indices to patch; None: the ``max_features`` features whose activations differ
            most between the two runs (summed over items and real positions; padding is left out).
        positions: Positions to patch (``by_pos=True``); None: all.
        by_pos: False: patch each feature at every position at once (axes ``("feature",)``).
    """
    kw = dict(direction=direction, corrupt_hooks=corrupt_hooks, return_type=return_type, input_kwargs=input_kwargs)
    with model.saes([sae], use_error_term=True):
        name, setup = _prepare(model, sae, clean, corrupt, metric, kw)
        feats = _pick_features(setup, name, _stream_of(model, name), features, max_features, sae.cfg.d_sae)
        if not feats:
            raise ValueError("no SAE feature differs between the clean and corrupted runs; pass features=[...]")
        n_pos = int(setup.base_cache[name].shape[1])
        poss = select_positions(n_pos, positions) if by_pos else []
        targets = (
            [Target(name, (p, f)) for f in feats for p in poss]
            if by_pos
            else [Target(name, (slice(None), f)) for f in feats]
        )
        vals = run_patches(
            model,
            setup.base,
            setup.source_cache,
            targets,
            metric,
            return_type=return_type,
            base_hooks=setup.base_hooks,
            chunk_size=chunk_size,
            progress=progress,
            desc="SAE feature patching",
        )
    return _result(model, sae, setup, name, feats, poss, by_pos, vals, normalize, "activation patching")


def attribute_sae_features(
    model: HookedModel,
    sae: SparseAutoencoder,
    clean: Any,
    corrupt: Any,
    metric: Metric,
    *,
    features: Sequence[int] | None = None,
    max_features: int = 32,
    positions: Sequence[int] | None = None,
    by_pos: bool = True,
    direction: Direction = "denoise",
    normalize: bool = True,
    corrupt_hooks: HookList = (),
    return_type: str | None = None,
    input_kwargs: dict[str, Any] | None = None,
) -> Labelled:
    """Gradient estimate of :func:`patch_sae_features` (same arguments and axes; one backward pass)::

    effect(feature f at p) ~= (acts_source[p, f] - acts_base[p, f]) * d metric / d acts[p, f]
    """
    kw = dict(direction=direction, corrupt_hooks=corrupt_hooks, return_type=return_type, input_kwargs=input_kwargs)
    with model.saes([sae], use_error_term=True):
        name, setup = _prepare(model, sae, clean, corrupt, metric, kw)
        grads, value = base_gradients(model, setup, [name], metric)
    feats = _pick_features(setup, name, _stream_of(model, name), features, max_features, sae.cfg.d_sae)
    if not feats:
        raise ValueError("no SAE feature differs between the clean and corrupted runs; pass features=[...]")
    g = grads[name]
    prod = ((setup.source_cache[name].to(g.device) - setup.base_cache[name].to(g.device)) * g).float()
    prod = prod[..., feats]  # (batch, pos, feature)
    n_pos = int(prod.shape[1])
    poss = select_positions(n_pos, positions) if by_pos else []
    per_item = value.ndim == 1
    if by_pos:
        per = prod[:, poss].permute(2, 1, 0).reshape(len(feats) * len(poss), -1)  # (feature*pos, batch)
    else:
        per = prod.sum(1).permute(1, 0)  # (feature, batch)
    vals = per if per_item else per.sum(1)
    return _result(
        model,
        sae,
        setup,
        name,
        feats,
        poss,
        by_pos,
        vals.cpu() + setup.metric_base,
        normalize,
        "attribution patching (first-order)",
    )


def _result(
    model: HookedModel,
    sae: SparseAutoencoder,
    setup: PatchSetup,
    name: str,
    feats: list[int],
    poss: list[int],
    by_pos: bool,
    vals: Tensor,
    normalize: bool,
    method: str,
) -> Labelled:
    labels: dict[str, list[str]] = {"feature": [f"F{f}" for f in feats]}
    shape, axes = [len(feats)], ["feature"]
    if by_pos:
        n_pos = int(setup.base_cache[name].shape[1])
        all_labels = position_labels(setup, _stream_of(model, name), n_pos)
        labels["pos"] = [all_labels[p] for p in poss]
        shape.append(len(poss))
        axes.append("pos")
    return finish_result(
        torch.as_tensor(vals),
        shape,
        axes,
        labels,
        setup,
        normalize,
        f"{method}: SAE features at {sae.cfg.hook_name}",
        method=method,
        hook=sae.cfg.hook_name,
        features=feats,
    )
