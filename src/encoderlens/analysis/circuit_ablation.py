"""Ablating edges for real: the metric with sets of edges ablated (batched), and the faithfulness curve.

An ablated edge ``s -> r`` gives ``r`` the stream recomputed with ``s``'s output replaced by its value on
the corrupted input (every norm in between re-applied with its real statistics in post-LN streams; a plain
sum in pre-LN ones); every other receiver reads the run's own stream. A set of edges: each receiver gets
its own stream with all of its ablated senders changed. See :mod:`encoderlens.analysis.circuits`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from encoderlens.analysis.circuit_graph import Graph, build_graph
from encoderlens.analysis.circuit_norms import Norm, patched_deltas, sender_value
from encoderlens.analysis.circuits import EdgeScores, graph_norms, metric_value, sender_values
from encoderlens.analysis.patching_core import Metric, check_compatible, check_metric, per_copy_metric
from encoderlens.analysis.results import Labelled
from encoderlens.models.base import HookedModel


def ablate_edges(
    model: HookedModel,
    clean: Any,
    corrupt: Any,
    metric: Metric,
    ablated: Sequence[Sequence[int]],
    *,
    graph: Graph | None = None,
    return_type: str | None = None,
    input_kwargs: dict[str, Any] | None = None,
    chunk_size: int = 8,
) -> Tensor:
    """The metric with each given set of edges ablated (corrupted), one value per set (batched runs).

    Args:
        ablated: Sets of edge indices into ``graph.edges``.
        chunk_size: Sets run together as one batch.

    Ablating no edge gives the clean metric; every edge, the corrupted one (pre-LN and post-LN).

    Example:
        >>> ablate_edges(model, clean, corrupt, metric, [[], [0, 3], list(range(len(build_graph(model))))])
    """
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    kw = dict(input_kwargs or {})
    clean_p, corrupt_p = model.prepare_input(clean, **kw), model.prepare_input(corrupt, **kw)
    check_compatible(clean_p, corrupt_p)
    graph = graph or build_graph(model)
    n = len(graph.edges)
    bad = [e for es in ablated for e in es if not (isinstance(e, int) and 0 <= e < n)]
    if bad:
        raise ValueError(f"edge indices must be ints in [0, {n}) (the graph's edges); got {bad[:5]}")
    corrupt_vals, corrupt_out = sender_values(model, corrupt_p, graph, return_type)
    check_metric(metric, corrupt_p, corrupt_out)  # the same padding as the clean input's
    norms = graph_norms(model, graph)
    b = clean_p.batch_size
    results = []
    for i in range(0, len(ablated), chunk_size):
        sets = ablated[i : i + chunk_size]
        k = len(sets)
        coef = torch.zeros(len(graph.senders), len(graph.receivers), k)
        for j, es in enumerate(sets):
            for e in es:
                s, r = graph.edges[e]
                coef[s, r, j] = 1.0
        hooks = ablation_hooks(graph, coef, coef.ne(0).any(-1), corrupt_vals, norms, b)
        with torch.no_grad():
            out = model.run_prepared(clean_p.repeat(k), return_type, fwd_hooks=hooks)
        results.append(torch.tensor([metric_value(v) for v in per_copy_metric(metric, out, k, b)]))
    return torch.cat(results)


def ablation_hooks(
    graph: Graph,
    coef: Tensor,
    active: Tensor,
    corrupt_vals: dict[str, Tensor],
    norms: dict[str, Norm],
    b: int,
) -> list[tuple[str, Callable[..., Any]]]:
    """Forward hooks ablating edges in ``k`` copies of a batch of ``b`` items.

    Args:
        coef: ``(senders, receivers, k)`` strength of each edge's ablation in each copy (1: ablated; values in
            between scale the sender's change, which the derivative check of the tests uses).
        active: ``(senders, receivers)`` bool, the edges to patch (``coef`` is ignored elsewhere).
    """
    current: dict[str, Tensor] = {}  # sender name / renormalisation sum hook -> this run's value
    by_hook: dict[str, list[int]] = {}
    for j, r in enumerate(graph.receivers):
        if bool(active[:, j].any()):
            by_hook.setdefault(r.hook, []).append(j)
    send_hooks: dict[str, list[int]] = {}
    for i, s in enumerate(graph.senders):
        send_hooks.setdefault(s.hook, []).append(i)
    sum_hooks = {st.sum_hook for st in graph.renorms}
    k = coef.shape[-1]

    def hook_fn(x: Tensor, hook: Any) -> Tensor:
        name = hook.name
        for i in send_hooks.get(name, []):
            s = graph.senders[i]
            if s.name not in current:  # the value this run produced, before any receiver change at this hook
                current[s.name] = sender_value(x, s).clone()
        if name in sum_hooks:
            current[name] = x.detach()
        js = by_hook.get(name)
        if not js:
            return x
        senders = active[:, js].any(1).nonzero().flatten().tolist()
        diffs = {}
        for i in senders:
            c = corrupt_vals[graph.senders[i].name]
            diffs[graph.senders[i].name] = c.repeat(k, *([1] * (c.ndim - 1))) - current[graph.senders[i].name]
        sums = {h: current[h] for h in sum_hooks if h in current}
        delta = patched_deltas(graph, js, coef[:, js].repeat_interleave(b, -1), active[:, js], diffs, sums, norms)
        if delta is None:
            return x
        x = x.clone()
        for n, j in enumerate(js):
            head = graph.receivers[j].head
            if head is not None:
                x[:, :, head] += delta[:, :, n].to(x.device)
            else:
                x += delta[:, :, n].to(x.device)
        return x

    names = sorted(set(by_hook) | set(send_hooks) | sum_hooks)
    return [(n, hook_fn) for n in names]


def faithfulness(
    model: HookedModel,
    clean: Any,
    corrupt: Any,
    metric: Metric,
    scores: EdgeScores,
    n_edges: Sequence[int],
    *,
    return_type: str | None = None,
    input_kwargs: dict[str, Any] | None = None,
    chunk_size: int = 8,
) -> Labelled:
    """Metric vs circuit size: keep the top ``n`` edges, *ablate every other edge*, run, measure.

    Returns:
        ``(n_edges,)`` normalised faithfulness ``(m - m_corrupt) / (m_clean - m_corrupt)`` (1: the circuit
        alone recovers the clean metric); raw values in ``meta["metric"]``.
    """
    total = len(scores.graph)
    sets = []
    for n in n_edges:
        if not 0 <= n <= total:
            raise ValueError(f"n_edges values must be in [0, {total}], got {n}")
        keep = set(scores.top(n))
        sets.append([e for e in range(total) if e not in keep])
    vals = ablate_edges(
        model,
        clean,
        corrupt,
        metric,
        sets,
        graph=scores.graph,
        return_type=return_type,
        input_kwargs=input_kwargs,
        chunk_size=chunk_size,
    )
    denom = scores.metric_clean - scores.metric_corrupt
    if abs(denom) < 1e-12:
        raise ValueError("the metric is the same on the clean and corrupted runs; nothing to recover")
    norm = (vals - scores.metric_corrupt) / denom
    return Labelled(
        norm,
        ("n_edges",),
        {"n_edges": [str(n) for n in n_edges]},
        f"faithfulness ({scores.method})",
        {"metric": vals.tolist(), "metric_clean": scores.metric_clean, "metric_corrupt": scores.metric_corrupt},
    )
