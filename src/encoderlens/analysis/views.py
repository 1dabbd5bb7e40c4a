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
import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from encoderlens.models.base import HookedModel
from encoderlens.models.contract import StreamName


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


def _script_safe_json(payload: Any) -> str:
    """JSON that can sit inside ``<script type='application/json'>`` whatever strings it holds.

    ``<``, ``>`` and ``&`` become ``\\u003c`` / ``\\u003e`` / ``\\u0026`` (so ``</script>``, ``<!--`` and
    ``<script`` in a token cannot end or re-mode the element), U+2028 / U+2029 are escaped, and
    ``ensure_ascii`` escapes the rest of non-ASCII; ``JSON.parse`` reads back the same strings.
    """
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=True)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def render_attention_html(
    views: Sequence[AttentionView],
    item_names: Sequence[str],
    title: str = "encoderlens attention",
    layer_labels: dict[str, list[str]] | None = None,
    max_bytes: int = 64 * 2**20,
) -> str:
    """Build the HTML page for ``views`` (see the module doc). Returns the document as a string."""
    if not views:
        raise ValueError("no attention view to render")
    payload = _payload(views, item_names, max_bytes)
    payload["title"] = title
    payload["layer_labels"] = layer_labels or {}
    blob = _script_safe_json(payload)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body data-status='loading'>"
        f"<h1>{html.escape(title)}</h1>{_CONTROLS}"
        f"<script type='application/json' id='el-data'>{blob}</script><script>{_JS}</script></body></html>"
    )


def attention_html(
    model: HookedModel,
    input: Any,
    path: str | Path | None = None,
    *,
    layers: Sequence[int] | None = None,
    title: str | None = None,
    frame_seconds: float | None = None,
    max_bytes: int = 64 * 2**20,
    **input_kwargs: Any,
) -> str:
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

    Returns:
        The HTML document.
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
    items = []
    for i in range(prepared.batch_size):
        labs = prepared.labels.get(model.streams[0])
        if labs is not None:
            words = [t for t in labs[i] if t != "<pad>"]
            text = " ".join(words)
            items.append(f"{i}: {text[:60]}{'...' if len(text) > 60 else ''}")
        else:
            items.append(f"item {i}")
    doc = render_attention_html(
        views,
        items,
        title or f"attention: {model.architecture}",
        {k: [f"L{i}" for i in v] for k, v in layer_sel.items()},
        max_bytes,
    )
    if path is not None:
        Path(path).write_text(doc, encoding="utf-8")
    return doc


_CSS = """
body{font-family:system-ui,sans-serif;margin:16px;color:#222;background:#fff}
h1{font-size:18px;margin:0 0 10px}
#el-controls{display:flex;flex-wrap:wrap;gap:12px;align-items:center;margin-bottom:10px}
#el-controls label{font-size:13px}
select{font-size:13px;padding:2px}
#el-main{display:flex;gap:18px;align-items:flex-start;flex-wrap:wrap}
#el-canvas{border:1px solid #ccc;cursor:crosshair}
#el-thumbs{display:grid;grid-template-columns:repeat(4,auto);gap:6px;max-width:420px}
#el-thumbs figure{margin:0;text-align:center;font-size:11px;cursor:pointer}
#el-thumbs canvas{border:2px solid #ddd}
#el-thumbs figure.sel canvas{border-color:#d33}
#el-readout{font-family:monospace;font-size:13px;min-height:18px;margin:8px 0}
#el-strip{line-height:2;font-size:14px;max-width:900px}
#el-strip span{padding:1px 3px;margin:1px;border-radius:3px}
#el-error{color:#b00;font-weight:bold;white-space:pre-wrap}
"""

_CONTROLS = """
<div id='el-error'></div>
<div id='el-controls'>
<label>item <select id='el-item'></select></label>
<label>view <select id='el-view'></select></label>
<label>layer <select id='el-layer'></select></label>
<label>head <select id='el-head'></select></label>
<label>colour <select id='el-scale'><option value='linear'>linear</option><option value='sqrt'>sqrt</option><option value='relative'>relative to max</option></select></label>
</div>
<div id='el-readout'>hover over the matrix; click a row to colour its keys below</div>
<div id='el-main'><canvas id='el-canvas' width='10' height='10'></canvas><div id='el-thumbs'></div></div>
<div id='el-strip'></div>
"""

_JS = r"""
(function () {
  "use strict";
  var body = document.body;
  function fail(msg) {
    body.setAttribute("data-status", "error");
    var e = document.getElementById("el-error");
    if (e) { e.textContent = "attention view failed: " + msg; }
  }
  window.addEventListener("error", function (ev) { fail(ev.message || String(ev)); });
  var D;
  try { D = JSON.parse(document.getElementById("el-data").textContent); } catch (err) { fail("bad data: " + err); return; }
  var cache = {};
  function matrix(viewKey, item) {
    var k = viewKey + "/" + item;
    if (!cache[k]) {
      var bin = atob(D.views[viewKey].items[item].data);
      var buf = new ArrayBuffer(bin.length);
      var u8 = new Uint8Array(buf);
      for (var i = 0; i < bin.length; i++) { u8[i] = bin.charCodeAt(i); }
      cache[k] = new Float32Array(buf);
    }
    return cache[k];
  }
  var $ = function (id) { return document.getElementById(id); };
  // a fragment names a view by key: look it up among the data's own keys, never on Object.prototype
  function own(o, k) { return o !== null && typeof o === "object" && Object.prototype.hasOwnProperty.call(o, k); }
  var state = { item: 0, view: Object.keys(D.views)[0], layer: 0, head: "mean", scale: "linear", query: null };
  (location.hash || "").replace(/^#/, "").split("&").forEach(function (kv) {
    var p = kv.split("=");
    if (p.length !== 2) { return; }
    var key = decodeURIComponent(p[0]), val = decodeURIComponent(p[1]);
    if (key === "item" || key === "layer") { state[key] = parseInt(val, 10) || 0; }
    else if (key === "head") { state.head = val === "mean" ? "mean" : (parseInt(val, 10) || 0); }
    else if (key === "view" && own(D.views, val)) { state.view = val; }
    else if (key === "scale" && (val === "linear" || val === "sqrt" || val === "relative")) { state.scale = val; }
    else if (key === "query") { state.query = parseInt(val, 10) || 0; }
  });
  function opt(sel, values, labels, current) {
    sel.innerHTML = "";
    values.forEach(function (v, i) {
      var o = document.createElement("option");
      o.value = String(v); o.textContent = labels[i];
      if (String(v) === String(current)) { o.selected = true; }
      sel.appendChild(o);
    });
  }
  function clampState() {
    var V = D.views[state.view];
    if (state.item < 0 || state.item >= D.items.length) { state.item = 0; }
    if (state.layer < 0 || state.layer >= V.n_layers) { state.layer = 0; }
    if (state.head !== "mean" && (state.head < 0 || state.head >= V.n_heads)) { state.head = "mean"; }
  }
  function layerLabels() {
    var V = D.views[state.view], ll = own(D.layer_labels, state.view) ? D.layer_labels[state.view] : null;
    var out = [];
    for (var i = 0; i < V.n_layers; i++) { out.push(ll && ll[i] ? ll[i] : "L" + i); }
    return out;
  }
  function buildControls() {
    clampState();
    var V = D.views[state.view];
    opt($("el-item"), D.items.map(function (_, i) { return i; }), D.items, state.item);
    var keys = Object.keys(D.views);
    opt($("el-view"), keys, keys.map(function (k) { return D.views[k].label; }), state.view);
    var ls = []; for (var i = 0; i < V.n_layers; i++) { ls.push(i); }
    opt($("el-layer"), ls, layerLabels(), state.layer);
    var hs = ["mean"], hl = ["mean of heads"];
    for (var h = 0; h < V.n_heads; h++) { hs.push(h); hl.push("H" + h); }
    opt($("el-head"), hs, hl, state.head);
    $("el-scale").value = state.scale;
  }
  function headMatrix(head) {
    var V = D.views[state.view], it = V.items[state.item];
    var m = matrix(state.view, state.item), nq = it.nq, nk = it.nk, size = nq * nk;
    var out = new Float32Array(size);
    var base = state.layer * V.n_heads * size;
    if (head === "mean") {
      for (var h = 0; h < V.n_heads; h++) {
        var off = base + h * size;
        for (var j = 0; j < size; j++) { out[j] += m[off + j] / V.n_heads; }
      }
    } else {
      var o2 = base + head * size;
      for (var k = 0; k < size; k++) { out[k] = m[o2 + k]; }
    }
    return out;
  }
  var vmax = 1;
  function colour(v) {
    var t = Math.max(0, Math.min(1, state.scale === "relative" ? v / vmax : v));
    if (state.scale === "sqrt") { t = Math.sqrt(t); }
    var r = Math.round(255 - 200 * t), g = Math.round(255 - 170 * t), b = Math.round(255 - 60 * t);
    return "rgb(" + r + "," + g + "," + b + ")";
  }
  function fmtTime(s) { return s.toFixed(s < 10 ? 2 : 1) + "s"; }
  var geo = null;
  function drawMain() {
    var V = D.views[state.view], it = V.items[state.item];
    var mat = headMatrix(state.head), nq = it.nq, nk = it.nk;
    var tokens = V.axis === "tokens";
    vmax = 1e-12;
    for (var vi = 0; vi < mat.length; vi++) { vmax = Math.max(vmax, mat[vi]); }
    var cell = Math.max(1, Math.min(28, Math.floor(640 / Math.max(nq, nk))));
    var left = tokens ? 110 : 60, top = tokens ? 90 : 40;
    var c = $("el-canvas");
    c.width = left + cell * nk + 10; c.height = top + cell * nq + 10;
    var ctx = c.getContext("2d");
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, c.width, c.height);
    for (var q = 0; q < nq; q++) {
      for (var k = 0; k < nk; k++) {
        ctx.fillStyle = colour(mat[q * nk + k]);
        ctx.fillRect(left + k * cell, top + q * cell, cell, cell);
      }
    }
    if (state.query !== null && state.query < nq) {
      ctx.strokeStyle = "#d33"; ctx.lineWidth = 2;
      ctx.strokeRect(left, top + state.query * cell, nk * cell, cell);
    }
    ctx.fillStyle = "#222"; ctx.font = "11px sans-serif";
    if (tokens && cell >= 8) {
      ctx.textAlign = "right"; ctx.textBaseline = "middle";
      for (var i = 0; i < nq; i++) { ctx.fillText(it.q_labels[i].slice(0, 16), left - 4, top + (i + 0.5) * cell); }
      for (var j = 0; j < nk; j++) {
        ctx.save(); ctx.translate(left + (j + 0.5) * cell, top - 4); ctx.rotate(-Math.PI / 3);
        ctx.textAlign = "left"; ctx.fillText(it.k_labels[j].slice(0, 16), 0, 0); ctx.restore();
      }
    } else {
      var fs = V.frame_seconds || 0, step = Math.max(1, Math.ceil(50 / cell));
      ctx.textAlign = "center"; ctx.textBaseline = "bottom";
      for (var kk = 0; kk < nk; kk += step) {
        var lab = fs ? fmtTime(it.k_index[kk] * fs) : String(it.k_index[kk]);
        ctx.fillText(lab, left + (kk + 0.5) * cell, top - 4);
      }
      ctx.textAlign = "right"; ctx.textBaseline = "middle";
      for (var qq = 0; qq < nq; qq += step) {
        var lq = fs ? fmtTime(it.q_index[qq] * fs) : String(it.q_index[qq]);
        ctx.fillText(lq, left - 4, top + (qq + 0.5) * cell);
      }
      ctx.save(); ctx.translate(12, top + nq * cell / 2); ctx.rotate(-Math.PI / 2); ctx.textAlign = "center";
      ctx.fillText(fs ? "query time" : "query frame", 0, 0); ctx.restore();
      ctx.textAlign = "left"; ctx.fillText(fs ? "key time ->" : "key frame ->", left, 14);
    }
    geo = { left: left, top: top, cell: cell, nq: nq, nk: nk, mat: mat, it: it, tokens: tokens, fs: V.frame_seconds || 0 };
  }
  function drawThumbs() {
    var V = D.views[state.view], box = $("el-thumbs");
    box.innerHTML = "";
    var heads = ["mean"]; for (var h = 0; h < V.n_heads; h++) { heads.push(h); }
    heads.forEach(function (hd) {
      var it = V.items[state.item], mat = headMatrix(hd), keep = vmax;
      vmax = 1e-12;
      for (var vi = 0; vi < mat.length; vi++) { vmax = Math.max(vmax, mat[vi]); }
      var fig = document.createElement("figure");
      if (String(hd) === String(state.head)) { fig.className = "sel"; }
      var c = document.createElement("canvas"), n = 80;
      c.width = n; c.height = n;
      var ctx = c.getContext("2d"), cw = n / Math.max(it.nk, 1), ch = n / Math.max(it.nq, 1);
      for (var q = 0; q < it.nq; q++) {
        for (var k = 0; k < it.nk; k++) {
          ctx.fillStyle = colour(mat[q * it.nk + k]);
          ctx.fillRect(k * cw, q * ch, Math.ceil(cw), Math.ceil(ch));
        }
      }
      vmax = keep;
      var cap = document.createElement("figcaption");
      cap.textContent = hd === "mean" ? "mean" : "H" + hd;
      fig.appendChild(c); fig.appendChild(cap);
      fig.addEventListener("click", function () { state.head = hd; render(); });
      box.appendChild(fig);
    });
  }
  function drawStrip() {
    var strip = $("el-strip");
    strip.innerHTML = "";
    if (!geo || state.query === null || state.query >= geo.nq) { return; }
    var q = state.query, row = geo.mat.subarray(q * geo.nk, (q + 1) * geo.nk);
    var head = document.createElement("div");
    head.textContent = "keys of query " + (geo.tokens ? geo.it.q_labels[q] : (geo.fs ? fmtTime(geo.it.q_index[q] * geo.fs) : "frame " + geo.it.q_index[q])) + ":";
    strip.appendChild(head);
    if (geo.tokens) {
      for (var k = 0; k < geo.nk; k++) {
        var s = document.createElement("span");
        s.textContent = geo.it.k_labels[k];
        s.style.background = colour(row[k]);
        s.title = row[k].toFixed(4);
        strip.appendChild(s);
      }
    } else {
      // a bar per key frame, aligned with the matrix columns above
      var c = document.createElement("canvas"), h = 60, x0 = geo.left, w = geo.nk * geo.cell;
      c.width = x0 + w + 10; c.height = h;
      var ctx = c.getContext("2d"), mx = 0;
      for (var i = 0; i < geo.nk; i++) { mx = Math.max(mx, row[i]); }
      ctx.fillStyle = "#4a6fa5";
      for (var j = 0; j < geo.nk; j++) {
        var bh = mx > 0 ? (row[j] / mx) * (h - 4) : 0;
        ctx.fillRect(x0 + j * geo.cell, h - bh, Math.max(1, geo.cell - (geo.cell > 3 ? 1 : 0)), bh);
      }
      strip.appendChild(c);
    }
  }
  function render() {
    clampState();
    buildControls();
    drawMain();
    drawThumbs();
    drawStrip();
  }
  $("el-item").addEventListener("change", function (e) { state.item = parseInt(e.target.value, 10); state.query = null; render(); });
  $("el-view").addEventListener("change", function (e) { state.view = e.target.value; state.query = null; render(); });
  $("el-layer").addEventListener("change", function (e) { state.layer = parseInt(e.target.value, 10); render(); });
  $("el-head").addEventListener("change", function (e) { var v = e.target.value; state.head = v === "mean" ? "mean" : parseInt(v, 10); render(); });
  $("el-scale").addEventListener("change", function (e) { state.scale = e.target.value; render(); });
  function cellAt(ev) {
    if (!geo) { return null; }
    var r = $("el-canvas").getBoundingClientRect();
    var k = Math.floor((ev.clientX - r.left - geo.left) / geo.cell), q = Math.floor((ev.clientY - r.top - geo.top) / geo.cell);
    if (q < 0 || k < 0 || q >= geo.nq || k >= geo.nk) { return null; }
    return [q, k];
  }
  $("el-canvas").addEventListener("mousemove", function (ev) {
    var qk = cellAt(ev), out = $("el-readout");
    if (!qk) { out.textContent = ""; return; }
    var q = qk[0], k = qk[1], v = geo.mat[q * geo.nk + k];
    var ql = geo.tokens ? geo.it.q_labels[q] : (geo.fs ? fmtTime(geo.it.q_index[q] * geo.fs) : "frame " + geo.it.q_index[q]);
    var kl = geo.tokens ? geo.it.k_labels[k] : (geo.fs ? fmtTime(geo.it.k_index[k] * geo.fs) : "frame " + geo.it.k_index[k]);
    out.textContent = "query " + ql + "  ->  key " + kl + " : " + v.toFixed(4);
  });
  $("el-canvas").addEventListener("click", function (ev) {
    var qk = cellAt(ev);
    if (qk) { state.query = qk[0]; drawMain(); drawStrip(); }
  });
  try {
    render();
    body.setAttribute("data-status", "ok");
    body.setAttribute("data-view", state.view);
    body.setAttribute("data-item", String(state.item));
    body.setAttribute("data-layer", String(state.layer));
    body.setAttribute("data-head", String(state.head));
    body.setAttribute("data-scale", state.scale);
  } catch (err) { fail(String(err && err.stack || err)); }
})();
"""
