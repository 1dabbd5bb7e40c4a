"""The edge graph of circuit discovery: senders, receivers, the edges between them, and the stream's norms.

Per residual stream (every stream of the model):

- **senders**: the stream's input (``blocks.0.hook_resid_pre``), each attention head's output
  (``hook_result``), each cross-attention head's output (decoders), each MLP's output, and for a stream
  that feeds cross-attention, its final output (``enc_out``, read at the first cross k input);
- **receivers**: each head's q, k and v inputs (``hook_q_input``... per head), each cross-attention head's
  q input (from its own stream) and k / v inputs (from ``enc_out``), each MLP's input (``hook_mlp_in``),
  and the stream's final state (``StreamSpec.resid_hook(last)``: the logits' input, or ``enc_out``'s);
- **renormalisations** (post-LN streams only): the norms the stream itself passes through after each
  sub-layer (:meth:`StreamSpec.renormalizations`), between senders and later receivers.

Orders: within a stream, block ``l``'s self-attention is ``3 l``, its cross-attention ``3 l + 1`` and its
MLP ``3 l + 2``; a sender of order ``o`` reaches every receiver of a larger order (the receivers of order
``o`` read the stream before that sub-layer), through the renormalisations of orders in between.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from encoderlens.models.base import HookedModel

_SUBLAYER = {"attn": 0, "cross": 1, "mlp": 2}
_LAST = 10**9


@dataclass(frozen=True)
class Node:
    """A sender or receiver: ``hook`` (``head`` selects a head of per-head hooks), and its place in the order."""

    name: str
    hook: str
    head: int | None
    order: tuple[int, int]


@dataclass(frozen=True)
class Renorm:
    """A norm the stream itself passes through (post-LN): ``norm(sum_hook's value)`` is the next stream."""

    stream: int
    order: int
    sum_hook: str
    norm: str


@dataclass
class Graph:
    """Senders, receivers and the edges between them (``edges[i] = (sender index, receiver index)``)."""

    senders: list[Node]
    receivers: list[Node]
    edges: list[tuple[int, int]]
    renorms: list[Renorm] = field(default_factory=list)

    def edge_names(self) -> list[str]:
        return [f"{self.senders[s].name}->{self.receivers[r].name}" for s, r in self.edges]

    def __len__(self) -> int:
        return len(self.edges)


def build_graph(model: HookedModel) -> Graph:
    """The full edge graph of every stream, pre-LN or post-LN (see the module docstring).

    Example:
        >>> g = build_graph(model); print(len(g), g.edge_names()[:3])
    """
    senders: list[Node] = []
    receivers: list[Node] = []
    renorms: list[Renorm] = []
    feeds: dict[int, list[int]] = {}  # a cross-stream sender -> its receivers
    sources = {}
    for si, stream in enumerate(model.streams):
        spec = model.stream_spec(stream)
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
            for kind, sum_hook, norm in spec.renormalizations(layer):
                renorms.append(Renorm(si, 3 * layer + _SUBLAYER[kind], sum_hook, norm))
        receivers.append(Node(f"{tag}out", spec.resid_hook(spec.n_layers - 1), None, (si, _LAST)))
    # a stream read by cross-attention sends its final output (read at the first cross k input) to them
    for si, src in sources.items():
        stream = model.streams[si]
        spec = model.stream_spec(stream)
        src_name = model.streams[src]
        tag = "" if src_name is None else f"{src_name[0]}."
        enc_out = Node(f"{tag}enc_out", f"{spec.prefix}blocks.0.hook_cross_k_input", 0, (src, _LAST))
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
    return Graph(senders, receivers, edges, renorms)
