"""How a sender's change reaches a receiver's input through the norms between them (edge patching maths).

A receiver reads the residual stream at one point. In a pre-LN stream that point is a plain sum of the
senders' outputs, so a sender's change ``d_s`` reaches every later receiver unchanged. In a post-LN stream
the stream is renormalised after every sub-layer (:meth:`StreamSpec.renormalizations`)::

    x_{t+1} = norm_t(u_t),   u_t = x_t + (outputs of the senders of sub-layer t) + biases

so ablating the edge ``s -> r`` alone gives ``r`` the stream recomputed with only ``s``'s output changed
and every norm between them recomputed with its real statistics::

    u'_t = u_t + delta_t (+ d_s at s's sub-layer),   delta_{t+1} = norm_t(u'_t) - norm_t(u_t)

(:func:`patched_deltas`, exact). EAP linearises it around the run: ``delta_{t+1} = J_t delta_t`` with
``J_t`` the norm's Jacobian at ``u_t`` (the full one, centring and the change of the scale included, so
the score is the exact derivative of the true single-edge effect; the norm's own ``jvp``), applied to the
changes of all senders at once over the cached sums (:func:`edge_score_matrix`): tensor maths, no model
forward.
"""

from __future__ import annotations

import torch
from torch import Tensor

from encoderlens.analysis.circuit_graph import Graph, Node
from encoderlens.components.norm import LayerNorm, RMSNorm

Norm = LayerNorm | RMSNorm


def sender_value(x: Tensor, node: Node) -> Tensor:
    """A node's slice of its hook's activation (its head's, for per-head hooks)."""
    return x[:, :, node.head] if node.head is not None else x


def edge_score_matrix(
    graph: Graph,
    deltas: dict[str, Tensor],
    grads: dict[str, Tensor],
    sums: dict[str, Tensor],
    norms: dict[str, Norm],
) -> Tensor:
    """``(senders, receivers)`` float64: ``grad_r . (J-chain d_s)`` summed over items and positions.

    Args:
        deltas: Per sender name, its change ``(batch, pos, d_model)``.
        grads: Per receiver hook, the metric's gradient at it.
        sums: Per renormalisation sum hook, its value in the run the gradients come from.
        norms: Per norm module path, the module.

    Entries for pairs that are not edges are left zero.
    """
    with torch.no_grad():
        return _score_matrix(graph, deltas, grads, sums, norms)


def _score_matrix(
    graph: Graph,
    deltas: dict[str, Tensor],
    grads: dict[str, Tensor],
    sums: dict[str, Tensor],
    norms: dict[str, Norm],
) -> Tensor:
    full = torch.zeros(len(graph.senders), len(graph.receivers), dtype=torch.float64)

    def score(idx: list[int], cur: Tensor, receivers: list[int]) -> None:
        g = torch.stack([sender_value(grads[graph.receivers[j].hook], graph.receivers[j]) for j in receivers])
        prod = cur.flatten(1).to(g.device).double() @ g.flatten(1).double().t()
        full[torch.tensor(idx)[:, None], torch.tensor(receivers)[None, :]] += prod.cpu()

    n_streams = 1 + max(n.order[0] for n in graph.senders)
    for si in range(n_streams):
        senders = [i for i, s in enumerate(graph.senders) if s.order[0] == si]
        receivers = [j for j, r in enumerate(graph.receivers) if r.order[0] == si]
        steps = {st.order: st for st in graph.renorms if st.stream == si}
        last = max((graph.receivers[j].order[1] for j in receivers), default=-1)
        # in order: receivers read the stream, the sub-layer's senders join it, then its norm applies
        orders = sorted(
            {graph.senders[i].order[1] for i in senders} | set(steps) | {graph.receivers[j].order[1] for j in receivers}
        )
        idx: list[int] = []
        cur: Tensor | None = None
        for o in orders:
            at = [j for j in receivers if graph.receivers[j].order[1] == o]
            if at and cur is not None:
                score(idx, cur, at)
            if o >= last:
                break
            new = [i for i in senders if graph.senders[i].order[1] == o]
            if new:
                dev = deltas[graph.senders[new[0]].name].device if cur is None else cur.device
                stacked = torch.stack([deltas[graph.senders[i].name].to(dev) for i in new])
                cur = stacked if cur is None else torch.cat([cur, stacked])
                idx += new
            if o in steps and cur is not None:
                st = steps[o]
                u = sums[st.sum_hook]  # on its block's device (a model placed with a device_map)
                cur = norms[st.norm].jvp(u, cur.to(u.device))
    # edges between streams (an encoder's output into cross-attention k / v): no norm in between
    cross: dict[int, list[int]] = {}
    for i, j in graph.edges:
        if graph.receivers[j].order[0] != graph.senders[i].order[0]:
            cross.setdefault(i, []).append(j)
    for i, js in cross.items():
        score([i], deltas[graph.senders[i].name][None], js)
    return full


def patched_deltas(
    graph: Graph,
    receivers: list[int],
    coef: Tensor,
    active: Tensor,
    diffs: dict[str, Tensor],
    sums: dict[str, Tensor],
    norms: dict[str, Norm],
) -> Tensor | None:
    """The exact change of each receiver's input when its ablated senders' outputs change (norms recomputed).

    Args:
        receivers: Receivers read at one hook (one point of one stream).
        coef: ``(senders, len(receivers), batch)`` ablation strength per edge and item (0: kept, 1: ablated).
        active: ``(senders, len(receivers))`` bool, the edges ``coef`` may ablate (edges of the graph only).
        diffs: Per sender name, ``corrupted - current`` output ``(batch, pos, d_model)``.
        sums: Per renormalisation sum hook, its value in the current run ``(batch, pos, d_model)``.

    Returns:
        ``(batch, pos, len(receivers), d_model)``, or None when no sender is ablated into them.
    """
    pending = active.any(1).nonzero().flatten().tolist()
    if not pending:
        return None
    r0 = graph.receivers[receivers[0]]
    steps = sorted(
        (st for st in graph.renorms if st.stream == r0.order[0] and st.order < r0.order[1]), key=lambda st: st.order
    )
    delta: Tensor | None = None

    def add(i: int, delta: Tensor | None) -> Tensor:
        d = diffs[graph.senders[i].name]
        w = coef[i].t().to(d.device, d.dtype)  # (batch, n)
        term = d[:, :, None, :] * w[:, None, :, None]
        return term if delta is None else delta + term.to(delta.device)

    pending.sort(key=lambda i: graph.senders[i].order[1])
    for st in steps:
        while pending and graph.senders[pending[0]].order[1] <= st.order:
            delta = add(pending.pop(0), delta)
        if delta is None:
            continue
        u = sums[st.sum_hook][:, :, None, :]
        norm = norms[st.norm]
        delta = norm(u + delta.to(u.device)) - norm(u)
    for i in pending:
        delta = add(i, delta)
    return delta
