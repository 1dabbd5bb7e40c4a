"""Circuit discovery: edge attribution patching (EAP, EAP-IG) over the full edge graph, pre-LN and post-LN.

The graph (:mod:`~encoderlens.analysis.circuit_graph`): senders (stream inputs, heads, cross-attention
heads, MLPs, an encoder's output), receivers (each head's q / k / v input, each MLP's input, each stream's
final state) and the edges ``s -> r`` from every sender to every later receiver of its stream.

**Ablating an edge** ``s -> r`` changes only what ``r`` reads: ``r``'s input is recomputed from the stream
in which ``s``'s output alone is replaced by its value on the corrupted input; every other receiver, and
every other sender's output, are unchanged.

- *Pre-LN* streams (T5, mBART, wav2vec2-large): the stream is a plain sum of sender outputs, so that is
  adding ``a_s(corrupt) - a_s(run)`` to ``r``'s input.
- *Post-LN* streams (the BERT family, BART, wav2vec2 / HuBERT base, post-LN WavLM) renormalise the stream
  after every sub-layer; ``r`` gets the stream recomputed with ``s``'s output changed and every norm in
  between re-applied with its real statistics (:func:`~encoderlens.analysis.circuit_norms.patched_deltas`).

Ablating a *set* of edges gives each receiver its own stream with its ablated senders' outputs changed
(:func:`~encoderlens.analysis.circuit_ablation.ablate_edges`, batched; :func:`faithfulness` measures
circuits that way). Ablating no edge is the clean run, every edge the corrupted run, in both kinds.

**EAP** (Syed et al., 2023) estimates the change of the metric from ablating ``s -> r`` to first order::

    score(s -> r) = sum over items, positions of  d metric / d input_r  .  J_{s->r} (a_s(corrupt) - a_s(clean))

``J_{s->r}`` is the identity in pre-LN streams and, in post-LN ones, the product of the Jacobians of the
norms between ``s`` and ``r`` at the clean run (the full Jacobian: centring and the change of each
position's scale). The score is then *exactly* the derivative of the true single-edge ablation along
``a_s(clean) + e (a_s(corrupt) - a_s(clean))`` at ``e = 0`` (tested against autograd on the real patched
run). Cost: two forwards (corrupted, clean) and one backward; the propagation through the norms is
Jacobian-vector products (``LayerNorm.jvp``) at the cached sums entering them, for all senders at once,
with no model forward.

**EAP-IG** (Hanna et al., 2024) integrates that derivative along inputs interpolated between the clean and
the corrupted stream inputs (all streams together): ``sum_k w_k grad_r(a_k) . J_{s->r}(a_k) delta_s``, the
``n_steps`` interpolations run ``chunk_size`` at a time as one batch (quadrature rules as
:func:`~encoderlens.analysis.gradients.quadrature`). Cost: ``2 + ceil(n_steps / chunk_size)`` forwards,
``ceil(n_steps / chunk_size)`` backwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from encoderlens.analysis.circuit_graph import Graph, build_graph
from encoderlens.analysis.circuit_norms import Norm, edge_score_matrix, sender_value
from encoderlens.analysis.gradients import quadrature
from encoderlens.analysis.patching_core import Metric, check_compatible, check_metric, per_copy_metric
from encoderlens.analysis.results import Labelled
from encoderlens.components.norm import LayerNorm, RMSNorm
from encoderlens.models.base import HookedModel
from encoderlens.models.contract import Prepared


def sender_values(
    model: HookedModel, batch: Prepared, graph: Graph, return_type: str | None
) -> tuple[dict[str, Tensor], Any]:
    """Each sender's activation in a plain run of ``batch``, and the run's output."""
    hooks = sorted({s.hook for s in graph.senders})
    with torch.no_grad():
        out, cache = model.run_prepared_with_cache(batch, names_filter=set(hooks).__contains__, return_type=return_type)
    return {s.name: sender_value(cache[s.hook], s).detach() for s in graph.senders}, out


def graph_norms(model: HookedModel, graph: Graph) -> dict[str, Norm]:
    """The modules of the graph's renormalisations, by path (LayerNorm or RMSNorm: they know their Jacobian)."""
    norms = {}
    for st in graph.renorms:
        norm = model.get_submodule(st.norm)
        if not isinstance(norm, (LayerNorm, RMSNorm)):
            raise TypeError(
                f"edge attribution through the post-LN norm {st.norm} needs a LayerNorm or RMSNorm (their Jacobian); "
                f"got {type(norm).__name__}. Use path_patch for this model"
            )
        norms[st.norm] = norm
    return norms


def metric_value(value: Any) -> float:
    return float(torch.as_tensor(value).detach().float().sum())


@dataclass
class EdgeScores:
    """EAP scores of every edge: the estimated change of the metric when that edge alone is ablated.

    Attributes:
        graph: The graph.
        scores: ``(n_edges,)``.
        metric_clean, metric_corrupt: The metric on both runs.
        method: ``"EAP"`` or ``"EAP-IG"``.
    """

    graph: Graph
    scores: Tensor
    metric_clean: float
    metric_corrupt: float
    method: str
    meta: dict[str, Any] = field(default_factory=dict)

    def top(self, n: int) -> list[int]:
        """Indices of the ``n`` edges of largest ``|score|``."""
        return self.scores.abs().argsort(descending=True)[:n].tolist()

    def circuit(self, n_edges: int | None = None, threshold: float | None = None) -> list[int]:
        """Edges kept: the top ``n_edges`` by ``|score|``, or those with ``|score| >= threshold``."""
        if (n_edges is None) == (threshold is None):
            raise ValueError("give exactly one of n_edges or threshold")
        if n_edges is not None:
            return self.top(n_edges)
        assert threshold is not None
        return (self.scores.abs() >= threshold).nonzero().flatten().tolist()

    def to_labelled(self, k: int = 20) -> Labelled:
        idx = self.top(k)
        names = self.graph.edge_names()
        return Labelled(self.scores[idx], ("edge",), {"edge": [names[i] for i in idx]}, f"{self.method} edge scores")

    def to_text(self, k: int = 20) -> str:
        return self.to_labelled(k).to_text()


def _metric_tensor(value: Any) -> Tensor:
    if not isinstance(value, Tensor) or not value.requires_grad:
        raise TypeError("EAP needs a differentiable metric returning a tensor (avoid .item(), argmax, no_grad)")
    return value.sum()


@dataclass
class _GradRun:
    """One batched run of ``k`` interpolation steps: receiver gradients, renormalisation sums, metrics."""

    grads: dict[str, Tensor]
    sums: dict[str, Tensor]
    senders: dict[str, Tensor]
    metrics: list[float]


def _grad_run(
    model: HookedModel,
    batch: Prepared,
    graph: Graph,
    metric: Metric,
    alphas: list[float],
    ends: tuple[dict[str, Tensor], dict[str, Tensor]] | None,
    return_type: str | None,
) -> _GradRun:
    """Run ``len(alphas)`` copies of ``batch`` (copy ``j``'s stream inputs at ``start + a_j (end - start)``
    when ``ends = (start, end)`` is given) and take the metric's gradient at every receiver: one forward,
    one backward."""
    k, b = len(alphas), batch.batch_size
    rhooks = {r.hook for r in graph.receivers}
    inputs = {s.hook: s.name for s in graph.senders if s.order[1] == -1}
    record = {s.hook for s in graph.senders} if ends is None else set()
    sum_hooks = {st.sum_hook for st in graph.renorms}
    store: dict[str, Tensor] = {}
    seen: dict[str, Tensor] = {}
    sums: dict[str, Tensor] = {}

    def hook_fn(x: Tensor, hook: Any) -> Tensor:
        name = hook.name
        if name in record:
            seen.setdefault(name, x.detach())
        if name in sum_hooks:
            sums[name] = x.detach()
        if ends is not None and name in inputs:
            start, end = ends[0][inputs[name]], ends[1][inputs[name]]
            a = torch.tensor(alphas, dtype=x.dtype, device=x.device).view(k, *([1] * start.ndim))
            x = (start + a * (end - start)).reshape(x.shape)
        if name in rhooks:
            x = x if x.requires_grad else x.detach().requires_grad_(True)
            store[name] = x
        return x

    names = sorted(rhooks | set(record) | sum_hooks | (set(inputs) if ends is not None else set()))
    with torch.enable_grad():
        out = model.run_prepared(batch.repeat(k), return_type, fwd_hooks=[(n, hook_fn) for n in names])
        values = [_metric_tensor(v) for v in per_copy_metric(metric, out, k, b)]
        hooks = sorted(rhooks)
        got = torch.autograd.grad(torch.stack(values).sum(), [store[h] for h in hooks], allow_unused=True)
    grads = {h: (torch.zeros_like(store[h]) if g is None else g).detach() for h, g in zip(hooks, got)}
    senders = {s.name: sender_value(seen[s.hook], s) for s in graph.senders} if ends is None else {}
    return _GradRun(grads, sums, senders, [float(v.detach()) for v in values])


def edge_attribution(
    model: HookedModel,
    clean: Any,
    corrupt: Any,
    metric: Metric,
    *,
    method: str = "EAP",
    n_steps: int = 8,
    rule: str = "riemann_right",
    chunk_size: int = 8,
    return_type: str | None = None,
    input_kwargs: dict[str, Any] | None = None,
) -> EdgeScores:
    """Score every edge of :func:`build_graph` with EAP (two forwards, one backward) or EAP-IG.

    Works on pre-LN and post-LN streams alike (see the module docstring for what a score means in each).

    Args:
        clean, corrupt: Inputs of the same shape and padding (raw or prepared).
        metric: Output -> scalar (or per-item values, summed), differentiable.
        method: ``"EAP"`` or ``"EAP-IG"`` (gradients integrated over ``n_steps`` inputs between the clean
            and the corrupted stream inputs, all streams together).
        n_steps, rule: EAP-IG's quadrature (:func:`~encoderlens.analysis.gradients.quadrature`).
        chunk_size: EAP-IG interpolation steps run together as one batch (memory grows with it).

    Example:
        >>> eap = edge_attribution(model, clean, corrupt, metric)
        >>> print(eap.to_text(10)); curve = faithfulness(model, clean, corrupt, metric, eap, [5, 20, 80])
    """
    if method not in ("EAP", "EAP-IG"):
        raise ValueError(f"method must be 'EAP' or 'EAP-IG', got {method!r}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    kw = dict(input_kwargs or {})
    clean_p, corrupt_p = model.prepare_input(clean, **kw), model.prepare_input(corrupt, **kw)
    check_compatible(clean_p, corrupt_p)
    graph = build_graph(model)
    norms = graph_norms(model, graph)
    corrupt_vals, corrupt_out = sender_values(model, corrupt_p, graph, return_type)
    check_metric(metric, corrupt_p, corrupt_out)  # the same padding as the clean input's
    m_corrupt = metric_value(metric(corrupt_out))
    b = clean_p.batch_size
    if method == "EAP":
        run = _grad_run(model, clean_p, graph, metric, [0.0], None, return_type)
        deltas = {n: corrupt_vals[n] - v for n, v in run.senders.items()}
        full = edge_score_matrix(graph, deltas, run.grads, run.sums, norms)
        return EdgeScores(graph, _edge_scores(graph, full), run.metrics[0], m_corrupt, method, {"n_steps": 1})
    alphas, weights = quadrature(rule, n_steps)
    start, clean_out = sender_values(model, clean_p, graph, return_type)
    deltas = {n: corrupt_vals[n] - v for n, v in start.items()}
    full = torch.zeros(len(graph.senders), len(graph.receivers), dtype=torch.float64)
    summed: dict[str, Tensor] = {}  # without renormalisations the weighted gradients are summed first
    for i in range(0, len(alphas), chunk_size):
        a, w = alphas[i : i + chunk_size], weights[i : i + chunk_size]
        run = _grad_run(model, clean_p, graph, metric, a, (start, corrupt_vals), return_type)
        for j, wj in enumerate(w):
            g = {h: x[j * b : (j + 1) * b] for h, x in run.grads.items()}
            if graph.renorms:
                s = {h: x[j * b : (j + 1) * b] for h, x in run.sums.items()}
                full += wj * edge_score_matrix(graph, deltas, g, s, norms)
            else:
                summed = {h: summed.get(h, 0) + wj * x.double() for h, x in g.items()}  # type: ignore[misc]
    if not graph.renorms:
        full = edge_score_matrix(graph, deltas, summed, {}, norms)
    m_clean = metric_value(metric(clean_out))
    meta = {"n_steps": n_steps, "chunk_size": chunk_size}
    return EdgeScores(graph, _edge_scores(graph, full), m_clean, m_corrupt, method, meta)


def _edge_scores(graph: Graph, full: Tensor) -> Tensor:
    idx = torch.tensor(graph.edges)
    return full[idx[:, 0], idx[:, 1]].float()
