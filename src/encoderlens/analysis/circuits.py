"""Circuit discovery: edge attribution patching (EAP, EAP-IG), pruning, and faithfulness by real ablation.

The computational graph (per residual stream, every stream of the model):

- **senders**: the stream's input (``blocks.0.hook_resid_pre``), each attention head's output
  (``hook_result``), each cross-attention head's output (decoders), each MLP's output, and for a stream
  that feeds cross-attention, its final output (``enc_out``);
- **receivers**: each head's q, k and v inputs (``hook_q_input``... per head), each cross-attention head's
  q input (from its own stream) and k / v inputs (from ``enc_out``), each MLP's input (``hook_mlp_in``),
  and the stream's output (its last ``hook_resid_post``: the logits, or ``enc_out``).

An edge ``s -> r`` is the contribution of ``s`` to ``r``'s input. In a pre-LN stack a receiver's input is
exactly the sum of its senders' outputs (plus constant biases), so *ablating* an edge means adding
``a_s(corrupt) - a_s(current run)`` to that one receiver's input: the sender's value everywhere else is
unchanged. EAP (Syed et al., 2023) estimates the change of the metric from that ablation as
``(a_s(corrupt) - a_s(clean)) . d metric / d input_r`` (summed over positions), for every edge from two
forwards and one backward; EAP-IG (Hanna et al., 2024) averages the gradient over inputs interpolated
between the clean and corrupted ones. :func:`faithfulness` measures circuits by actually ablating the
complement, batched. Post-LN stacks (BERT, BART, wav2vec2-base) renormalise the stream after every
sub-layer, so no receiver input is a sum of sender outputs: they are refused (use path patching).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from encoderlens.analysis.gradients import quadrature
from encoderlens.analysis.patching_core import Metric, check_compatible
from encoderlens.analysis.results import Labelled
from encoderlens.models.base import HookedModel
from encoderlens.models.contract import Prepared


@dataclass(frozen=True)
class Node:
    """A sender or receiver: ``hook`` (``head`` selects a head of per-head hooks), and its place in the order."""

    name: str
    hook: str
    head: int | None
    order: tuple[int, int]


@dataclass
class Graph:
    """Senders, receivers and the edges between them (``edges[i] = (sender index, receiver index)``)."""

    senders: list[Node]
    receivers: list[Node]
    edges: list[tuple[int, int]]

    def edge_names(self) -> list[str]:
        return [f"{self.senders[s].name}->{self.receivers[r].name}" for s, r in self.edges]

    def __len__(self) -> int:
        return len(self.edges)


def build_graph(model: HookedModel) -> Graph:
    """The full edge graph of every stream (see the module docstring). Raises on post-LN streams."""
    senders: list[Node] = []
    receivers: list[Node] = []
    feeds: dict[int, list[int]] = {}  # sender -> allowed receiver kinds checked below
    sources = {}
    for si, stream in enumerate(model.streams):
        spec = model.stream_spec(stream)
        if spec.norm_position != "pre":
            raise ValueError(
                f"edge attribution needs a pre-LN stream, where a receiver's input is the sum of its senders' "
                f"outputs; the {stream or 'main'} stream of this {model.architecture} model is post-LN. Use "
                "path_patch / attribute_heads for it"
            )
        p, tag = spec.prefix, ("" if stream is None else f"{stream[0]}.")
        senders.append(Node(f"{tag}input", f"{p}blocks.0.hook_resid_pre", None, (si, -1)))
        for layer in range(spec.n_layers):
            b = f"{p}blocks.{layer}."
            for h in range(spec.n_heads):
                senders.append(Node(f"{tag}L{layer}H{h}", b + "attn.hook_result", h, (si, 3 * layer)))
                for x in "qkv":
                    receivers.append(Node(f"{tag}L{layer}H{h}.{x}", b + f"hook_{x}_input", h, (si, 3 * layer)))
            if spec.has_cross_attention:
                for h in range(spec.n_heads):
                    senders.append(Node(f"{tag}L{layer}C{h}", b + "cross_attn.hook_result", h, (si, 3 * layer + 1)))
                    receivers.append(Node(f"{tag}L{layer}C{h}.q", b + "hook_cross_q_input", h, (si, 3 * layer + 1)))
                    for x in "kv":
                        receivers.append(Node(f"{tag}L{layer}C{h}.{x}", b + f"hook_cross_{x}_input", h, (-1, 0)))
                sources[si] = model.streams.index(model.cross_attention_source(stream))
            senders.append(Node(f"{tag}MLP{layer}", b + "hook_mlp_out", None, (si, 3 * layer + 2)))
            receivers.append(Node(f"{tag}MLP{layer}", b + "hook_mlp_in", None, (si, 3 * layer + 2)))
        last = f"{p}blocks.{spec.n_layers - 1}.hook_resid_post"
        receivers.append(Node(f"{tag}out", last, None, (si, 10**9)))
    # a stream read by cross-attention sends its final output (read at the first cross k input) to them
    for si, src in sources.items():
        stream = model.streams[si]
        spec = model.stream_spec(stream)
        src_name = model.streams[src]
        tag = "" if src_name is None else f"{src_name[0]}."
        enc_out = Node(f"{tag}enc_out", f"{spec.prefix}blocks.0.hook_cross_k_input", 0, (src, 10**9))
        senders.append(enc_out)
        feeds[len(senders) - 1] = [
            j for j, r in enumerate(receivers) if r.order == (-1, 0) and r.hook.startswith(spec.prefix)
        ]
    edges = []
    for i, s in enumerate(senders):
        if i in feeds:
            edges += [(i, j) for j in feeds[i]]
            continue
        for j, r in enumerate(receivers):
            if r.order[0] == s.order[0] and s.order[1] < r.order[1]:
                edges.append((i, j))
    return Graph(senders, receivers, edges)


def _sender_value(x: Tensor, node: Node) -> Tensor:
    return x[:, :, node.head] if node.head is not None else x


def _sender_values(
    model: HookedModel, batch: Prepared, graph: Graph, return_type: str | None
) -> tuple[dict[str, Tensor], Any]:
    """Each sender's activation in a plain run of ``batch``, and the run's output."""
    hooks = sorted({s.hook for s in graph.senders})
    with torch.no_grad():
        out, cache = model.run_prepared_with_cache(batch, names_filter=set(hooks).__contains__, return_type=return_type)
    return {s.name: _sender_value(cache[s.hook], s).detach() for s in graph.senders}, out


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


def edge_attribution(
    model: HookedModel,
    clean: Any,
    corrupt: Any,
    metric: Metric,
    *,
    method: str = "EAP",
    n_steps: int = 8,
    rule: str = "riemann_right",
    return_type: str | None = None,
    input_kwargs: dict[str, Any] | None = None,
) -> EdgeScores:
    """Score every edge of :func:`build_graph` with EAP (two forwards, one backward) or EAP-IG.

    Args:
        clean, corrupt: Inputs of the same shape and padding (raw or prepared).
        metric: Output -> scalar (or per-item values, summed), differentiable.
        method: ``"EAP"`` or ``"EAP-IG"`` (gradients averaged over ``n_steps`` inputs between the clean and the
            corrupted stream inputs, all streams together, batched).

    Example:
        >>> eap = edge_attribution(model, clean, corrupt, metric)
        >>> print(eap.to_text(10)); curve = faithfulness(model, clean, corrupt, metric, eap, [5, 20, 80])
    """
    if method not in ("EAP", "EAP-IG"):
        raise ValueError(f"method must be 'EAP' or 'EAP-IG', got {method!r}")
    kw = dict(input_kwargs or {})
    clean_p, corrupt_p = model.prepare_input(clean, **kw), model.prepare_input(corrupt, **kw)
    check_compatible(clean_p, corrupt_p)
    graph = build_graph(model)
    corrupt_vals, corrupt_out = _sender_values(model, corrupt_p, graph, return_type)
    m_corrupt = float(torch.as_tensor(metric(corrupt_out)).float().sum())
    m_clean = 0.0
    rhooks = sorted({r.hook for r in graph.receivers})
    inputs = sorted({s.hook for s in graph.senders if s.name.endswith("input")})
    grads: dict[str, Tensor] = {}
    clean_vals: dict[str, Tensor] = {}
    if method == "EAP":
        alphas, weights = [0.0], [1.0]
    else:
        alphas, weights = quadrature(rule, n_steps)
    start = None
    if method == "EAP-IG":
        start, clean_out = _sender_values(model, clean_p, graph, return_type)
        m_clean = float(torch.as_tensor(metric(clean_out)).float().sum())
    for a, w in zip(alphas, weights):
        store: dict[str, Tensor] = {}

        def keep(x: Tensor, hook: Any, store: dict[str, Tensor] = store, a: float = a) -> Tensor:
            if hook.name in inputs and a != 0.0:
                assert start is not None
                node = next(s for s in graph.senders if s.hook == hook.name and s.name.endswith("input"))
                x = start[node.name] + a * (corrupt_vals[node.name] - start[node.name])
            if hook.name in rhooks:
                x = x if x.requires_grad else x.detach().requires_grad_(True)
                store[hook.name] = x
            return x

        sender_hooks = sorted({s.hook for s in graph.senders})
        seen: dict[str, Tensor] = {}

        def record(x: Tensor, hook: Any, seen: dict[str, Tensor] = seen) -> None:
            seen.setdefault(hook.name, x.detach())

        with torch.enable_grad():
            out = model.run_prepared(
                clean_p,
                return_type,
                fwd_hooks=[
                    *((h, record) for h in sender_hooks),
                    *((h, keep) for h in sorted(set(rhooks) | set(inputs))),
                ],
            )
            value = _metric_tensor(metric(out))
            if a == 0.0:
                m_clean = float(value.detach())
            got = torch.autograd.grad(value, [store[h] for h in rhooks], allow_unused=True)
        for h, g in zip(rhooks, got):
            g = torch.zeros_like(store[h]) if g is None else g.detach()
            grads[h] = grads.get(h, 0) + w * g  # type: ignore[operator]
        if a == 0.0 or not clean_vals:
            clean_vals = {s.name: _sender_value(seen[s.hook], s) for s in graph.senders}
    if method == "EAP-IG":
        assert start is not None
        clean_vals = start
    # one matrix product per position layout: (senders, b*pos*d) @ (b*pos*d, receivers)
    scores = torch.zeros(len(graph.edges))
    groups: dict[tuple[int, ...], tuple[list[int], list[int]]] = {}
    for i, sn in enumerate(graph.senders):
        groups.setdefault(tuple(corrupt_vals[sn.name].shape), ([], []))[0].append(i)
    for j, rn in enumerate(graph.receivers):
        groups.setdefault(tuple(_sender_value(grads[rn.hook], rn).shape), ([], []))[1].append(j)
    full = torch.zeros(len(graph.senders), len(graph.receivers))
    for si, ri in groups.values():
        if not si or not ri:
            continue
        d = torch.stack(
            [(corrupt_vals[graph.senders[i].name] - clean_vals[graph.senders[i].name]).flatten() for i in si]
        )
        g = torch.stack([_sender_value(grads[graph.receivers[j].hook], graph.receivers[j]).flatten() for j in ri])
        full[torch.tensor(si)[:, None], torch.tensor(ri)[None, :]] = (d.double() @ g.double().t()).float().cpu()
    idx = torch.tensor(graph.edges)
    scores = full[idx[:, 0], idx[:, 1]]
    return EdgeScores(graph, scores, m_clean, m_corrupt, method, {"n_steps": n_steps if method == "EAP-IG" else 1})


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

    An ablated edge ``s -> r`` adds ``a_s(corrupt) - a_s(this run)`` to ``r``'s input; everything else runs
    normally. Ablating no edge gives the clean metric; every edge, the corrupted one.
    """
    kw = dict(input_kwargs or {})
    clean_p, corrupt_p = model.prepare_input(clean, **kw), model.prepare_input(corrupt, **kw)
    check_compatible(clean_p, corrupt_p)
    graph = graph or build_graph(model)
    corrupt_vals, _ = _sender_values(model, corrupt_p, graph, return_type)
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
        out = model.run_prepared(
            clean_p.repeat(k), return_type, fwd_hooks=_ablation_hooks(graph, coef, corrupt_vals, k, b)
        )
        vals = torch.as_tensor(metric(out)) if k == 1 else None
        if k == 1:
            results.append(vals.detach().float().sum().reshape(1))  # type: ignore[union-attr]
        else:
            results.append(
                torch.stack(
                    [torch.as_tensor(metric(out[j * b : (j + 1) * b])).detach().float().sum() for j in range(k)]
                )
            )
    return torch.cat(results)


def _ablation_hooks(
    graph: Graph, coef: Tensor, corrupt_vals: dict[str, Tensor], k: int, b: int
) -> list[tuple[str, Callable[..., Any]]]:
    current: dict[str, Tensor] = {}
    by_hook: dict[str, list[int]] = {}
    for j, r in enumerate(graph.receivers):
        if bool(coef[:, j].any()):
            by_hook.setdefault(r.hook, []).append(j)
    send_hooks: dict[str, list[int]] = {}
    for i, s in enumerate(graph.senders):
        send_hooks.setdefault(s.hook, []).append(i)

    def hook_fn(x: Tensor, hook: Any) -> Tensor:
        name = hook.name
        for i in send_hooks.get(name, []):
            s = graph.senders[i]
            if s.name not in current:  # the value this run produced, before any receiver change at this hook
                current[s.name] = _sender_value(x, s).clone()
        js = by_hook.get(name)
        if not js:
            return x
        x = x.clone()
        for j in js:
            r = graph.receivers[j]
            for i in coef[:, j].any(-1).nonzero().flatten().tolist():
                s = graph.senders[i]
                c = (
                    coef[i, j]
                    .to(x.device, x.dtype)
                    .repeat_interleave(b)
                    .view(-1, *([1] * (x.ndim - 1 - (r.head is not None))))
                )
                diff = corrupt_vals[s.name].repeat(k, *([1] * (corrupt_vals[s.name].ndim - 1))) - current[s.name]
                if r.head is not None:
                    x[:, :, r.head] += c * diff
                else:
                    x += c * diff
        return x

    names = sorted(set(by_hook) | set(send_hooks))
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
