"""Attention views: one self-contained HTML file (inline CSS and JS, no network) to browse attention.

The page shows one attention matrix at a time (query rows, key columns) for a chosen batch item, view
(self-attention; encoder / decoder self-attention and cross-attention for encoder-decoders), layer and head
(or the mean over heads), with thumbnails of every head of the layer, a hover read-out, and for text a strip
that colours the keys of a clicked query token. Audio views draw a time axis in seconds instead of tokens.
Padded positions are left out of every matrix. The initial state can be set in the URL:
``file:///.../attention.html#item=1&view=cross&layer=2&head=mean&scale=sqrt&query=3``.

Example:
    >>> attention_html(model, ["The cat sat.", "A dog barked loudly."], "attention.html")
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from encoderlens.analysis.html import HtmlView, document, fragment, new_uid
from encoderlens.analysis.views_js import CONTROLS, CSS, JS
from encoderlens.models.base import HookedModel
from encoderlens.models.contract import Prepared, StreamName


@dataclass
class AttentionView:
    """One kind of attention to show.

    Attributes:
        key: Short id used in the URL (``"self"``, ``"encoder"``, ``"decoder"``, ``"cross"``).
        label: Shown in the view menu.
        patterns: ``(layer, batch, head, query_pos, key_pos)``.
        query_mask, key_mask: ``(batch, pos)``, 1 = real position (others are cropped away).
        query_labels, key_labels: Per item, one label per position (padding included).
        axis: ``"tokens"`` or ``"time"`` (then positions are frames of ``frame_seconds``).
        frame_seconds: Frame hop in seconds for time axes.
    """

    key: str
    label: str
    patterns: Float[Tensor, "layer batch head_index query_pos key_pos"]
    query_mask: Int[Tensor, "batch query_pos"]
    key_mask: Int[Tensor, "batch key_pos"]
    query_labels: list[list[str]]
    key_labels: list[list[str]]
    axis: str = "tokens"
    frame_seconds: float | None = None


def _b64(t: Tensor) -> str:
    return base64.b64encode(t.detach().float().contiguous().cpu().numpy().astype("<f4").tobytes()).decode("ascii")


def _payload(views: Sequence[AttentionView], item_names: Sequence[str], max_bytes: int) -> dict[str, Any]:
    data: dict[str, Any] = {}
    total = 0
    for v in views:
        if v.patterns.ndim != 5:
            raise ValueError(
                f"view {v.key!r}: patterns must be (layer, batch, head, q, k), got {tuple(v.patterns.shape)}"
            )
        n_layers, batch, n_heads = v.patterns.shape[0], v.patterns.shape[1], v.patterns.shape[2]
        if batch != len(item_names):
            raise ValueError(f"view {v.key!r} has {batch} items but {len(item_names)} item names were given")
        per_item = []
        for i in range(batch):
            qi = v.query_mask[i].bool().nonzero().flatten().cpu()
            ki = v.key_mask[i].bool().nonzero().flatten().cpu()
            m = v.patterns[:, i].cpu().index_select(2, qi).index_select(3, ki)
            total += m.numel() * 4
            per_item.append(
                {
                    "q_labels": [v.query_labels[i][j] for j in qi.tolist()],
                    "k_labels": [v.key_labels[i][j] for j in ki.tolist()],
                    "q_index": qi.tolist(),
                    "k_index": ki.tolist(),
                    "nq": len(qi),
                    "nk": len(ki),
                    "data": m,
                }
            )
        data[v.key] = {
            "label": v.label,
            "axis": v.axis,
            "frame_seconds": v.frame_seconds,
            "n_layers": n_layers,
            "n_heads": n_heads,
            "items": per_item,
        }
    if total > max_bytes:
        raise ValueError(
            f"the attention data would take {total / 2**20:.1f} MiB (limit {max_bytes / 2**20:.0f} MiB); "
            "pass layers=[...] to keep fewer layers, fewer items, shorter inputs, or raise max_bytes"
        )
    for v in data.values():
        for it in v["items"]:
            it["data"] = _b64(it["data"])
    return {"items": list(item_names), "views": data}


def render_attention_html(
    views: Sequence[AttentionView],
    item_names: Sequence[str],
    title: str = "encoderlens attention",
    layer_labels: dict[str, list[str]] | None = None,
    max_bytes: int = 64 * 2**20,
    mode: str = "heads",
) -> HtmlView:
    """Build the attention browser for ``views`` (see the module doc).

    Args:
        views: What to show.
        item_names: One name per batch item (the item menu).
        title: Page title.
        layer_labels: View key -> one label per layer.
        max_bytes: Refuse to embed more attention data than this.
        mode: ``"heads"`` (thumbnails of the heads of the chosen layer) or ``"model"`` (bertviz's model view:
            thumbnails of every layer x head; click one to zoom).

    Returns:
        An :class:`~encoderlens.analysis.html.HtmlView`: the HTML document as a string, shown inline in Jupyter.
    """
    if not views:
        raise ValueError("no attention view to render")
    if mode not in ("heads", "model"):
        raise ValueError(f"mode must be 'heads' or 'model', got {mode!r}")
    payload = _payload(views, item_names, max_bytes)
    payload["title"] = title
    payload["layer_labels"] = layer_labels or {}
    payload["mode"] = mode
    frag = fragment(new_uid("attn"), "attn", CSS, payload, JS, markup=CONTROLS)
    return HtmlView(document(title, [frag]), frag)


def attention_html(
    model: HookedModel,
    input: Any,
    path: str | Path | None = None,
    *,
    layers: Sequence[int] | None = None,
    title: str | None = None,
    frame_seconds: float | None = None,
    max_bytes: int = 64 * 2**20,
    item_names: Sequence[str] | None = None,
    mode: str = "heads",
    **input_kwargs: Any,
) -> HtmlView:
    """Run ``model`` on ``input`` and write an attention browser (self-contained HTML).

    Text encoders get one self-attention view; encoder-decoders get encoder self-, decoder self- and
    cross-attention; speech encoders a self-attention view on a time axis (``frame_seconds`` per frame,
    from the times of the prepared input's frames).

    Args:
        model: An encoderlens model.
        input: Text or a batch of texts (each becomes an item), token ids, waveforms, or a prepared input.
        path: Write the page here too.
        layers: Layers to include (all by default).
        title: Page title.
        frame_seconds: Seconds per frame for audio time axes.
        max_bytes: Refuse to embed more attention data than this.
        item_names: One name per item for the item menu. Default: the text (shortened); for audio files,
            the file name and its duration (``clip.wav (0.00-1.25 s)``), else ``item i`` and the duration.
        mode: ``"heads"`` or ``"model"`` (every layer x head; see :func:`model_view_html`).

    Returns:
        The HTML document as an :class:`~encoderlens.analysis.html.HtmlView` (a ``str``; shown inline in
        Jupyter).
    """
    prepared = model.prepare_input(input, **input_kwargs)
    # key, label, stream, attn, key stream
    views_wanted: list[tuple[str, str, StreamName, str, StreamName]] = []
    for stream in model.streams:
        spec = model.stream_spec(stream)
        name = "self" if stream is None else stream
        lab = "self-attention" if stream is None else f"{stream} self-attention"
        views_wanted.append((name, lab, stream, "attn", stream))
        if spec.has_cross_attention:
            source = model.cross_attention_source(stream)
            views_wanted.append(("cross", f"cross-attention ({stream} -> {source})", stream, "cross_attn", source))
    hook_names: list[str] = []
    layer_sel: dict[str, list[int]] = {}
    for key, _, stream, attn, _ in views_wanted:
        spec = model.stream_spec(stream)
        n = spec.n_layers
        sel = list(range(n)) if layers is None else [li % n for li in layers if -n <= li < n]
        if not sel:
            raise ValueError(f"layers={list(layers or [])} selects nothing from {n} layers")
        layer_sel[key] = sel
        hook_names += [f"{spec.prefix}blocks.{i}.{attn}.hook_pattern" for i in sel]
    wanted = set(hook_names)
    with torch.no_grad():
        _, cache = model.run_prepared_with_cache(prepared, names_filter=wanted.__contains__)
    views = []
    for key, label, stream, attn, kstream in views_wanted:
        prefix = model.stream_spec(stream).prefix
        pats = torch.stack([cache[f"{prefix}blocks.{i}.{attn}.hook_pattern"] for i in layer_sel[key]])
        qm, km = prepared.mask(stream), prepared.mask(kstream)
        hop = prepared.seconds_per_position(stream)
        axis = "time" if stream in prepared.times else "tokens"
        fs = frame_seconds if frame_seconds is not None else hop
        views.append(
            AttentionView(
                key,
                label,
                pats,
                qm,
                km,
                [prepared.position_labels(stream, i, qm.shape[1]) for i in range(prepared.batch_size)],
                [prepared.position_labels(kstream, i, km.shape[1]) for i in range(prepared.batch_size)],
                axis,
                fs,
            )
        )
    items = list(item_names) if item_names is not None else _item_names(model, input, prepared)
    if len(items) != prepared.batch_size:
        raise ValueError(f"got {len(items)} item_names for {prepared.batch_size} items")
    doc = render_attention_html(
        views,
        items,
        title or f"attention: {model.architecture}",
        {k: [f"L{i}" for i in v] for k, v in layer_sel.items()},
        max_bytes,
        mode,
    )
    if path is not None:
        doc.save(path)
    return doc


def model_view_html(model: HookedModel, input: Any, path: str | Path | None = None, **kwargs: Any) -> HtmlView:
    """bertviz's model view: thumbnails of every layer (rows) x head (columns); click one to zoom into it.

    Takes the arguments of :func:`attention_html` (``layers=`` keeps fewer rows).

    Example:
        >>> model_view_html(model, "The cat sat on the mat.")  # in a notebook: drawn inline
    """
    return attention_html(model, input, path, mode="model", **kwargs)


def _item_names(model: HookedModel, input: Any, prepared: Prepared) -> list[str]:
    """Menu names: audio files by name and duration, other audio by index and duration, text by its words."""
    raw = input if isinstance(input, (list, tuple)) else [input]
    files = [os.path.basename(str(x)) if isinstance(x, (str, Path)) and os.path.isfile(x) else None for x in raw]
    if len(files) != prepared.batch_size:
        files = [None] * prepared.batch_size
    first = model.streams[0]
    out = []
    for i in range(prepared.batch_size):
        if first in prepared.times:
            n = int(prepared.mask(first)[i].sum())
            span = f"0.00-{float(prepared.times[first][max(n - 1, 0), 1]):.2f} s"
            out.append(f"{files[i]} ({span})" if files[i] else f"item {i} ({span})")
            continue
        labs = prepared.labels.get(first)
        if labs is None:
            out.append(files[i] or f"item {i}")
            continue
        text = " ".join(t for t in labs[i] if t != "<pad>")
        out.append(f"{i}: {text[:60]}{'...' if len(text) > 60 else ''}")
    return out
