"""bertviz's neuron view: how one head's query and key vectors make its attention, for a chosen query.

For the chosen layer, head and query position the view shows the query vector ``q``, and for every key
position its key vector ``k``, the elementwise products ``q * k`` (their sum is ``q . k``), the dot product
``q . k``, and the head's actual attention weight (the model's ``hook_pattern``, which also holds its
scale, masking and any position terms: T5's relative bias, DeBERTa's disentangled scores, rotary
embeddings applied after ``hook_q``). Click a key row or pick the query in the menu. Colours: diverging
(blue negative, red positive) for vectors and products, with a legend.

Example:
    >>> neuron_view_html(model, "The cat sat on the mat.", layer=2, head=5)  # inline in a notebook
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from encoderlens.analysis.html import HtmlView, document, fragment, new_uid
from encoderlens.hooks import get_act_name
from encoderlens.models.base import HookedModel
from encoderlens.models.contract import StreamName


def neuron_view_html(
    model: HookedModel,
    input: Any,
    layer: int,
    head: int,
    path: str | Path | None = None,
    *,
    attn: str = "attn",
    stream: StreamName = None,
    item: int = 0,
    query: int = 0,
    **input_kwargs: Any,
) -> HtmlView:
    """The neuron view of head ``head`` of layer ``layer`` for item ``item`` (padding left out).

    Args:
        model: An encoderlens model (any family).
        input: What ``model.prepare_input`` takes (plus ``input_kwargs``).
        layer, head: The head.
        path: Also write the page here.
        attn: ``"attn"`` or ``"cross_attn"`` (decoder cross-attention; keys from the encoder).
        stream: The stream (None: the last, i.e. the decoder of an encoder-decoder).
        item: Batch item.
        query: Initially selected query position (among the real ones).
    """
    stream = model.resolve_stream(stream)
    spec = model.stream_spec(stream)
    if not -spec.n_layers <= layer < spec.n_layers:
        raise ValueError(f"layer {layer} out of range for {spec.n_layers} layers")
    layer %= spec.n_layers
    if attn == "cross_attn" and not spec.has_cross_attention:
        raise ValueError("attn='cross_attn' needs a stream with cross-attention (the decoder of an encoder-decoder)")
    if attn not in ("attn", "cross_attn"):
        raise ValueError(f"attn must be 'attn' or 'cross_attn', got {attn!r}")
    kstream = model.cross_attention_source(stream) if attn == "cross_attn" else stream
    prepared = model.prepare_input(input, **input_kwargs)
    if not 0 <= item < prepared.batch_size:
        raise ValueError(f"item {item} out of range for a batch of {prepared.batch_size}")
    names = {a: spec.prefix + get_act_name(a, layer, attn) for a in ("q", "k", "pattern")}
    with torch.no_grad():
        _, cache = model.run_prepared_with_cache(prepared, names_filter=set(names.values()).__contains__)
    q_all, k_all, pat = cache[names["q"]][item], cache[names["k"]][item], cache[names["pattern"]][item]
    n_heads = q_all.shape[1]
    if not 0 <= head < n_heads:
        raise ValueError(f"head {head} out of range for {n_heads} heads")
    kh = head // max(1, n_heads // k_all.shape[1])  # grouped keys: the key head this query head reads
    qm = prepared.mask(stream)[item].bool().cpu()
    km = prepared.mask(kstream)[item].bool().cpu()
    qv = q_all[:, head].float().cpu()[qm]
    kv = k_all[:, kh].float().cpu()[km]
    pv = pat[head].float().cpu()[qm][:, km]
    qlab = [lab for lab, m in zip(prepared.position_labels(stream, item, len(qm)), qm.tolist()) if m]
    klab = [lab for lab, m in zip(prepared.position_labels(kstream, item, len(km)), km.tolist()) if m]
    if not 0 <= query < len(qlab):
        raise ValueError(f"query {query} out of range for {len(qlab)} real query positions")
    title = f"neuron view: {spec.prefix}blocks.{layer}.{attn} head {head}"
    payload = {
        "q": [[round(x, 5) for x in r] for r in qv.tolist()],
        "k": [[round(x, 5) for x in r] for r in kv.tolist()],
        "pattern": [[round(x, 6) for x in r] for r in pv.tolist()],
        "q_labels": qlab,
        "k_labels": klab,
        "query": query,
    }
    frag = fragment(new_uid("neuron"), "neuron", _CSS, payload, _JS, markup=_MARKUP, title=title)
    view = HtmlView(document(title, [frag]), frag)
    if path is not None:
        view.save(path)
    return view


_CSS = """
.el-neuron .el-bar{font-size:13px;margin:0 0 6px;display:flex;gap:12px;align-items:center}
.el-neuron .el-scroll{max-width:100%;overflow:auto}
.el-neuron canvas.el-canvas{display:block;border:1px solid #ccc;cursor:pointer}
.el-neuron .el-legend{font-size:11px;display:flex;gap:6px;align-items:center}
.el-neuron .el-readout{font-family:monospace;font-size:13px;min-height:18px;margin:6px 0}
"""

_MARKUP = """
<div class='el-bar'><label>query <select class='el-query'></select></label><span class='el-legend'></span></div>
<div class='el-readout'></div>
<div class='el-scroll'><canvas class='el-canvas' width='10' height='10'></canvas></div>
"""

_JS = r"""
  "use strict";
  var q = function (cls) { return root.querySelector("." + cls); };
  var nq = D.q_labels.length, nk = D.k_labels.length, dh = D.q[0].length, state = { query: D.query };
  (location.hash || "").replace(/^#/, "").split("&").forEach(function (kv) {
    var p = kv.split("=");
    if (p.length === 2 && p[0] === "query") { var v = parseInt(p[1], 10); if (v >= 0 && v < nq) { state.query = v; } }
  });
  var lim = 1e-12;
  D.q.concat(D.k).forEach(function (r) { r.forEach(function (v) { lim = Math.max(lim, Math.abs(v)); }); });
  function div(v, l) {
    var t = Math.max(-1, Math.min(1, v / l)), u = Math.round(255 * (1 - Math.abs(t)));
    return t >= 0 ? "rgb(255," + u + "," + u + ")" : "rgb(" + u + "," + u + ",255)";
  }
  var sel = q("el-query");
  D.q_labels.forEach(function (lab, i) { var o = document.createElement("option"); o.value = String(i); o.textContent = lab; sel.appendChild(o); });
  sel.addEventListener("change", function () { state.query = parseInt(sel.value, 10); draw(); });
  function legend() {
    var box = q("el-legend"), c = document.createElement("canvas"), w = 120;
    box.innerHTML = "";
    c.width = w; c.height = 12;
    var ctx = c.getContext("2d");
    for (var x = 0; x < w; x++) { ctx.fillStyle = div(2 * x / (w - 1) - 1, 1); ctx.fillRect(x, 0, 1, 12); }
    var a = document.createElement("span"), b = document.createElement("span");
    a.textContent = "negative"; b.textContent = "positive (vectors: |max| " + lim.toFixed(3) + "; q*k: row max)";
    box.appendChild(a); box.appendChild(c); box.appendChild(b);
  }
  var geo = null;
  function draw() {
    sel.value = String(state.query);
    var qv = D.q[state.query], c = q("el-canvas"), ctx = c.getContext("2d");
    ctx.font = "11px sans-serif";
    var labW = 0;
    D.k_labels.forEach(function (l) { labW = Math.max(labW, ctx.measureText(l.slice(0, 16)).width); });
    var cell = Math.max(3, Math.min(12, Math.floor(300 / dh))), rowH = 16, left = Math.ceil(labW) + 10, gap = 16, barW = 90;
    var xK = left, xP = xK + dh * cell + gap, xDot = xP + dh * cell + gap, xAtt = xDot + barW + gap;
    var top = 44;
    c.width = xAtt + barW + 20; c.height = top + nk * rowH + 10;
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, c.width, c.height);
    ctx.fillStyle = "#222"; ctx.textBaseline = "middle"; ctx.textAlign = "left";
    ctx.fillText("k", xK, 8); ctx.fillText("q * k", xP, 8); ctx.fillText("q . k", xDot, 8); ctx.fillText("attention", xAtt, 8);
    ctx.textAlign = "right"; ctx.fillText("q: " + D.q_labels[state.query].slice(0, 16), xK - 4, 26);
    for (var d = 0; d < dh; d++) { ctx.fillStyle = div(qv[d], lim); ctx.fillRect(xK + d * cell, 20, cell, 12); ctx.fillRect(xP + d * cell, 20, cell, 12); }
    var dots = [], plim = 1e-12, dlim = 1e-12;
    for (var k = 0; k < nk; k++) {
      var s = 0;
      for (var e = 0; e < dh; e++) { var pr = qv[e] * D.k[k][e]; s += pr; plim = Math.max(plim, Math.abs(pr)); }
      dots.push(s); dlim = Math.max(dlim, Math.abs(s));
    }
    var att = D.pattern[state.query], amax = 1e-12;
    att.forEach(function (v) { amax = Math.max(amax, v); });
    for (var r = 0; r < nk; r++) {
      var y = top + r * rowH;
      ctx.fillStyle = "#222"; ctx.textAlign = "right"; ctx.fillText(D.k_labels[r].slice(0, 16), left - 4, y + rowH / 2);
      for (var f = 0; f < dh; f++) {
        ctx.fillStyle = div(D.k[r][f], lim); ctx.fillRect(xK + f * cell, y + 1, cell, rowH - 2);
        ctx.fillStyle = div(qv[f] * D.k[r][f], plim); ctx.fillRect(xP + f * cell, y + 1, cell, rowH - 2);
      }
      var w = Math.abs(dots[r]) / dlim * (barW / 2);
      ctx.fillStyle = dots[r] >= 0 ? "#d04040" : "#4060d0";
      ctx.fillRect(dots[r] >= 0 ? xDot + barW / 2 : xDot + barW / 2 - w, y + 3, w, rowH - 6);
      ctx.fillStyle = "#4a6fa5"; ctx.fillRect(xAtt, y + 3, att[r] / amax * barW, rowH - 6);
    }
    ctx.strokeStyle = "#888"; ctx.beginPath(); ctx.moveTo(xDot + barW / 2, top); ctx.lineTo(xDot + barW / 2, top + nk * rowH); ctx.stroke();
    geo = { top: top, rowH: rowH, dots: dots, att: att };
    root.setAttribute("data-query", String(state.query));
  }
  q("el-canvas").addEventListener("mousemove", function (ev) {
    var rect = q("el-canvas").getBoundingClientRect(), r = Math.floor((ev.clientY - rect.top - geo.top) / geo.rowH);
    if (r < 0 || r >= nk) { return; }
    q("el-readout").textContent = "query " + D.q_labels[state.query] + " -> key " + D.k_labels[r] + ": q.k = " +
      geo.dots[r].toFixed(4) + ", attention = " + geo.att[r].toFixed(4);
  });
  legend();
  draw();
"""
