"""Attention rollout and attention flow (Abnar & Zuidema, 2020) on any stream's self-attention.

Each layer's attention (heads averaged) plus the residual connection gives the layer's mixing matrix
``A'_l = (1 - r) * mean_h(A_l) + r * I`` (``r = residual``, 0.5 in the paper), rows summing to 1 over
the real positions (padding removed per item).

- **Rollout**: ``R = A'_L ... A'_1``; ``R[i, j]`` is how much of position ``j``'s input reaches position
  ``i``'s output when attention weights are treated as proportions.
- **Flow**: the layers as a graph (nodes: layer x position; edge ``(l-1, k) -> (l, q)`` of capacity
  ``A'_l[q, k]``); ``F[i, j]`` is the maximum flow from input position ``j`` to output position ``i``
  (needs ``networkx``; ``n^2`` max-flow problems per item, for short inputs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from encoderlens.analysis.patching_core import select_layers
from encoderlens.analysis.results import Labelled
from encoderlens.hooks import get_act_name
from encoderlens.models.base import HookedModel
from encoderlens.models.contract import StreamName


def mixing_matrices(
    model: HookedModel,
    input: Any,
    stream: StreamName = None,
    layers: Sequence[int] | None = None,
    residual: float = 0.5,
    **input_options: Any,
) -> tuple[list[list[Tensor]], Any, StreamName]:
    """Per item, the list of per-layer ``A'_l`` over that item's real positions; also the batch and stream."""
    if not 0.0 <= residual <= 1.0:
        raise ValueError(f"residual must be in [0, 1], got {residual}")
    stream = model.resolve_stream(stream)
    spec = model.stream_spec(stream)
    lays = select_layers(spec.n_layers, layers)
    batch = model.prepare_input(input, **input_options)
    names = [spec.prefix + get_act_name("pattern", i) for i in lays]
    with torch.no_grad():
        _, cache = model.run_prepared_with_cache(batch, names_filter=set(names).__contains__)
    mask = batch.mask(stream).bool()
    out = []
    for item in range(batch.batch_size):
        real = mask[item].nonzero().flatten()
        mats = []
        for n in names:
            a = cache[n][item].double().mean(0)[real][:, real]
            a = a / a.sum(-1, keepdim=True)
            eye = torch.eye(len(real), dtype=a.dtype)
            mats.append((1 - residual) * a.cpu() + residual * eye)
        out.append(mats)
    return out, batch, stream


def _labelled(values: list[Tensor], batch: Any, stream: StreamName, title: str) -> Labelled:
    n = int(batch.mask(stream).shape[1])
    full = torch.full((len(values), n, n), float("nan"))
    mask = batch.mask(stream).bool()
    for item, v in enumerate(values):
        real = mask[item].nonzero().flatten()
        full[item][real.unsqueeze(1), real] = v.float()
    labels = {"pos": batch.position_labels(stream, 0), "key_pos": batch.position_labels(stream, 0)}
    return Labelled(full, ("item", "pos", "key_pos"), labels, title)


def attention_rollout(
    model: HookedModel,
    input: Any,
    *,
    stream: StreamName = None,
    layers: Sequence[int] | None = None,
    residual: float = 0.5,
    **input_options: Any,
) -> Labelled:
    """Attention rollout: ``(item, pos, key_pos)``, rows over real positions summing to 1, NaN at padding.

    Example:
        >>> r = attention_rollout(model, ["The cat sat.", "A dog."])
        >>> r.sel(item=0).to_text()
    """
    per_item, batch, stream = mixing_matrices(model, input, stream, layers, residual, **input_options)
    out = []
    for mats in per_item:
        r = mats[0]
        for a in mats[1:]:
            r = a @ r
        out.append(r)
    return _labelled(out, batch, stream, "attention rollout")


def attention_flow(
    model: HookedModel,
    input: Any,
    *,
    stream: StreamName = None,
    layers: Sequence[int] | None = None,
    residual: float = 0.5,
    **input_options: Any,
) -> Labelled:
    """Attention flow: ``(item, pos, key_pos)`` max-flow values from input ``key_pos`` to output ``pos``."""
    try:
        import networkx as nx
    except ImportError:
        raise ImportError("attention_flow needs networkx: pip install networkx (or use attention_rollout)") from None
    per_item, batch, stream = mixing_matrices(model, input, stream, layers, residual, **input_options)
    out = []
    for mats in per_item:
        n = mats[0].shape[0]
        g = nx.DiGraph()
        for lay, a in enumerate(mats):
            for q in range(n):
                for k in range(n):
                    if float(a[q, k]) > 0:
                        g.add_edge((lay, k), (lay + 1, q), capacity=float(a[q, k]))
        top = len(mats)
        f = torch.zeros(n, n, dtype=torch.float64)
        for i in range(n):
            for j in range(n):
                f[i, j] = nx.maximum_flow_value(g, (0, j), (top, i))
        out.append(f)
    return _labelled(out, batch, stream, "attention flow")
