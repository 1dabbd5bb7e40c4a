"""A self-contained HTML (inline SVG) view of a circuit: components in layer rows, edges coloured by score.

Each component (the stream input, a head, an MLP, the output) is one box; an edge into a head's q, k or v
input ends on that head with the letter written at its end. Red edges raise the metric when ablated
(negative EAP score means ablating lowers it: blue). Width grows with ``|score|``; hover for the value.
Post-LN circuits render the same way; the page says that their edges pass through the stream's norms.
No script, no network.
"""

from __future__ import annotations

import html
from pathlib import Path

from encoderlens.analysis.circuit_graph import Node
from encoderlens.analysis.circuits import EdgeScores


def _component(node: Node) -> str:
    """The box a node belongs to: a head's q/k/v inputs end on the head."""
    return node.name[:-2] if node.name.endswith((".q", ".k", ".v")) else node.name


def circuit_html(
    scores: EdgeScores,
    edges: list[int] | None = None,
    n_edges: int | None = 30,
    path: str | Path | None = None,
    title: str = "circuit",
) -> str:
    """HTML of the circuit made of ``edges`` (default: the top ``n_edges`` by ``|score|``).

    Example:
        >>> eap = edge_attribution(model, clean, corrupt, metric)
        >>> circuit_html(eap, n_edges=25, path="circuit.html")
    """
    g = scores.graph
    keep = edges if edges is not None else scores.top(n_edges or len(g))
    comps: dict[str, tuple[int, int]] = {}  # component -> (stream, row order)
    for e in keep:
        s, r = g.edges[e]
        for node in (g.senders[s], g.receivers[r]):
            name = _component(node)
            order = node.order
            if order == (-1, 0):  # cross k/v receivers sit with their cross-attention head
                order = next(x.order for x in g.receivers if x.name == node.name[:-2] + ".q")
            comps.setdefault(name, order)
    streams = sorted({o[0] for o in comps.values()})
    rows = sorted({o for o in comps.values()}, key=lambda o: (o[0], o[1]))
    row_y: dict[tuple[int, int], int] = {}
    per_stream_rows: dict[int, list[tuple[int, int]]] = {s: [o for o in rows if o[0] == s] for s in streams}
    height = 60 + 70 * max((len(v) for v in per_stream_rows.values()), default=1)
    for rs in per_stream_rows.values():
        for k, o in enumerate(rs):
            row_y[o] = height - 40 - 70 * k
    col_w = 420
    pos: dict[str, tuple[float, float]] = {}
    for o in rows:
        names = sorted(n for n, oo in comps.items() if oo == o)
        x0 = 20 + col_w * streams.index(o[0])
        for k, n in enumerate(names):
            pos[n] = (x0 + (k + 0.5) * (col_w - 40) / max(len(names), 1), row_y[o])
    vals = [abs(float(scores.scores[e])) for e in keep]
    vmax = max(vals, default=1.0) or 1.0
    lines = []
    for e in keep:
        s, r = g.edges[e]
        a, b = _component(g.senders[s]), _component(g.receivers[r])
        (x1, y1), (x2, y2) = pos[a], pos[b]
        v = float(scores.scores[e])
        colour = "#d33" if v > 0 else "#36c"
        w = 0.5 + 5 * abs(v) / vmax
        tip = html.escape(f"{g.senders[s].name} -> {g.receivers[r].name}: {v:+.4g}")
        letter = g.receivers[r].name[-1] if g.receivers[r].name.endswith((".q", ".k", ".v")) else ""
        lines.append(
            f"<g><title>{tip}</title><line x1='{x1:.1f}' y1='{y1 - 10:.1f}' x2='{x2:.1f}' y2='{y2 + 10:.1f}' "
            f"stroke='{colour}' stroke-width='{w:.2f}' stroke-opacity='0.7'/>"
            + (
                f"<text x='{x2 - 12:.1f}' y='{y2 + 22:.1f}' font-size='9' fill='{colour}'>{letter}</text>"
                if letter
                else ""
            )
            + "</g>"
        )
    boxes = [
        f"<g><rect x='{x - 28:.1f}' y='{y - 10:.1f}' width='56' height='20' rx='4' fill='#f4f4f4' stroke='#888'/>"
        f"<text x='{x:.1f}' y='{y + 4:.1f}' font-size='10' text-anchor='middle'>{html.escape(n)}</text></g>"
        for n, (x, y) in pos.items()
    ]
    width = 40 + col_w * max(len(streams), 1)
    svg = (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' font-family='sans-serif'>"
        + "".join(lines)
        + "".join(boxes)
        + "</svg>"
    )
    doc = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head><body style='font-family:sans-serif'>"
        f"<h1>{html.escape(title)}</h1><p>{len(keep)} of {len(g)} edges ({html.escape(scores.method)}); "
        f"metric clean {scores.metric_clean:+.4f}, corrupted {scores.metric_corrupt:+.4f}. "
        "Red: positive score, blue: negative; width: |score|."
        + (
            " Post-LN stream: an edge carries its sender's change through the norms the stream passes between "
            "sender and receiver (re-applied with their real statistics when ablated; linearised by EAP)."
            if g.renorms
            else ""
        )
        + "</p>"
        f"{svg}</body></html>"
    )
    if path is not None:
        Path(path).write_text(doc, encoding="utf-8")
    return doc
