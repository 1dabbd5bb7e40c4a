"""Interactive heatmaps of :class:`~encoderlens.analysis.results.Labelled` results (no server, no network).

A canvas heatmap with a diverging colour legend (blue negative, white zero, red positive, symmetric limit),
a read-out of the labels and value under the mouse (or of a clicked cell), and zoom: drag a rectangle to
zoom into those rows and columns, double-click (or "reset zoom") to go back. 1-D results are one row;
results with more than two axes get a menu over the leading axes. The state can be set in the URL, e.g.
``#cell=2,5&zoom=0-3,4-9`` (rows 0-3, columns 4-9).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from encoderlens.analysis.html import HtmlView, document, fragment, new_uid


def _clean(v: float) -> float | None:
    return None if math.isnan(v) or math.isinf(v) else v


def labelled_payload(
    values: Tensor, axes: Sequence[str], labels: dict[str, list[str]], title: str = ""
) -> dict[str, Any]:
    """Panels of 2-D values with row / column labels (one panel per index of the leading axes).

    Args:
        values, axes, labels, title: A :class:`~encoderlens.analysis.results.Labelled`'s fields.
    """
    vals = values.detach().float().cpu()
    row_ax, col_ax, row_labels, col_labels = "", "", [""], [""]
    if vals.ndim == 0:
        grids = [("", vals.reshape(1, 1))]
    elif vals.ndim == 1:
        col_ax, col_labels = axes[0], labels[axes[0]]
        grids = [("", vals[None])]
    else:
        row_ax, col_ax = axes[-2], axes[-1]
        row_labels, col_labels = labels[row_ax], labels[col_ax]
        names = [""]
        for ax in axes[:-2]:
            names = [f"{n}{', ' if n else ''}{ax}={lab}" for n in names for lab in labels[ax]]
        grids = list(zip(names, vals.reshape(-1, vals.shape[-2], vals.shape[-1])))
    panels = [{"name": n, "values": [[_clean(x) for x in row] for row in g.tolist()]} for n, g in grids]
    return {
        "title": title,
        "row_axis": row_ax,
        "col_axis": col_ax,
        "row_labels": list(row_labels),
        "col_labels": list(col_labels),
        "panels": panels,
    }


def labelled_fragment(values: Tensor, axes: Sequence[str], labels: dict[str, list[str]], title: str = "") -> str:
    """The interactive heatmap of a labelled result as an embeddable fragment."""
    payload = labelled_payload(values, axes, labels, title)
    return fragment(new_uid("plot"), "plot", _CSS, payload, _JS, markup=_MARKUP, title=title)


def labelled_view(values: Tensor, axes: Sequence[str], labels: dict[str, list[str]], title: str = "") -> HtmlView:
    """The interactive heatmap of a labelled result (a standalone document; inline in Jupyter)."""
    frag = labelled_fragment(values, axes, labels, title)
    return HtmlView(document(title or "encoderlens result", [frag]), frag)


_CSS = """
.el-plot .el-bar{display:flex;gap:10px;align-items:center;font-size:13px;margin:0 0 6px}
.el-plot .el-scroll{max-width:100%;overflow:auto}
.el-plot canvas.el-canvas{border:1px solid #ccc;cursor:crosshair;display:block}
.el-plot .el-readout{font-family:monospace;font-size:13px;min-height:18px;margin:6px 0}
.el-plot .el-legend{font-size:11px;display:flex;gap:6px;align-items:center}
"""

_MARKUP = """
<div class='el-bar'><label class='el-panel-box'>panel <select class='el-panel'></select></label>
<button type='button' class='el-reset'>reset zoom</button><span class='el-legend'></span></div>
<div class='el-readout'>hover for values; drag to zoom, double-click to reset</div>
<div class='el-scroll'><canvas class='el-canvas' width='10' height='10'></canvas></div>
"""

_JS = r"""
  "use strict";
  var q = function (cls) { return root.querySelector("." + cls); };
  var P = D.panels, nr = D.row_labels.length, nc = D.col_labels.length;
  var state = { panel: 0, r0: 0, r1: nr - 1, c0: 0, c1: nc - 1, cell: null };
  (location.hash || "").replace(/^#/, "").split("&").forEach(function (kv) {
    var p = kv.split("=");
    if (p.length !== 2) { return; }
    var val = decodeURIComponent(p[1]);
    if (p[0] === "cell") { var rc = val.split(","); state.cell = [parseInt(rc[0], 10) || 0, parseInt(rc[1], 10) || 0]; }
    else if (p[0] === "zoom") {
      var z = val.split(",").map(function (s) { return s.split("-").map(function (x) { return parseInt(x, 10); }); });
      if (z.length === 2 && z[0].length === 2 && z[1].length === 2) {
        state.r0 = z[0][0]; state.r1 = z[0][1]; state.c0 = z[1][0]; state.c1 = z[1][1];
      }
    } else if (p[0] === "panel") { state.panel = parseInt(val, 10) || 0; }
  });
  function clamp() {
    state.panel = Math.max(0, Math.min(P.length - 1, state.panel));
    state.r0 = Math.max(0, Math.min(nr - 1, state.r0)); state.r1 = Math.max(state.r0, Math.min(nr - 1, state.r1));
    state.c0 = Math.max(0, Math.min(nc - 1, state.c0)); state.c1 = Math.max(state.c0, Math.min(nc - 1, state.c1));
  }
  var lim = 0;
  P.forEach(function (pn) { pn.values.forEach(function (row) { row.forEach(function (v) { if (v !== null) { lim = Math.max(lim, Math.abs(v)); } }); }); });
  function colour(v) {
    if (v === null) { return "#e8e8e8"; }
    var t = lim > 0 ? Math.max(-1, Math.min(1, v / lim)) : 0, u = Math.round(255 * (1 - Math.abs(t)));
    return t >= 0 ? "rgb(255," + u + "," + u + ")" : "rgb(" + u + "," + u + ",255)";
  }
  function fmt(v) { return v === null ? "nan" : (Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3) ? v.toExponential(3) : v.toFixed(4)); }
  function legend() {
    var box = q("el-legend"), c = document.createElement("canvas"), w = 140;
    box.innerHTML = "";
    c.width = w; c.height = 12;
    var ctx = c.getContext("2d");
    for (var x = 0; x < w; x++) { ctx.fillStyle = colour(lim * (2 * x / (w - 1) - 1)); ctx.fillRect(x, 0, 1, 12); }
    var lo = document.createElement("span"), hi = document.createElement("span");
    lo.textContent = fmt(-lim); hi.textContent = fmt(lim);
    box.appendChild(lo); box.appendChild(c); box.appendChild(hi);
  }
  var geo = null;
  function draw() {
    clamp();
    var vals = P[state.panel].values, rows = state.r1 - state.r0 + 1, cols = state.c1 - state.c0 + 1;
    var c = q("el-canvas"), ctx = c.getContext("2d");
    ctx.font = "11px sans-serif";
    var rw = 0, cw = 0, i, j;
    for (i = state.r0; i <= state.r1; i++) { rw = Math.max(rw, ctx.measureText(D.row_labels[i].slice(0, 24)).width); }
    for (j = state.c0; j <= state.c1; j++) { cw = Math.max(cw, ctx.measureText(D.col_labels[j].slice(0, 24)).width); }
    var cell = Math.max(6, Math.min(40, Math.floor(760 / Math.max(cols, 1)), Math.floor(520 / Math.max(rows, 1))));
    var left = Math.ceil(rw) + 10, top = Math.ceil(cw * 0.87) + 12, right = Math.ceil(cw * 0.5) + 12;
    c.width = left + cols * cell + right; c.height = top + rows * cell + 8;
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, c.width, c.height);
    for (i = 0; i < rows; i++) {
      for (j = 0; j < cols; j++) {
        ctx.fillStyle = colour(vals[state.r0 + i][state.c0 + j]);
        ctx.fillRect(left + j * cell, top + i * cell, cell, cell);
      }
    }
    ctx.font = "11px sans-serif"; ctx.fillStyle = "#222";
    var step = Math.max(1, Math.ceil(12 / cell)), drawn = 0;
    ctx.textAlign = "right"; ctx.textBaseline = "middle";
    for (i = 0; i < rows; i += step) { ctx.fillText(D.row_labels[state.r0 + i].slice(0, 24), left - 4, top + (i + 0.5) * cell); drawn++; }
    for (j = 0; j < cols; j += step) {
      ctx.save(); ctx.translate(left + (j + 0.5) * cell, top - 4); ctx.rotate(-Math.PI / 3);
      ctx.textAlign = "left"; ctx.fillText(D.col_labels[state.c0 + j].slice(0, 24), 0, 0); ctx.restore(); drawn++;
    }
    geo = { left: left, top: top, cell: cell, rows: rows, cols: cols };
    if (state.cell) { show(state.cell[0], state.cell[1]); }
    root.setAttribute("data-zoom", state.r0 + "-" + state.r1 + "," + state.c0 + "-" + state.c1);
    root.setAttribute("data-labels", String(drawn));
  }
  function show(r, cl) {
    var out = q("el-readout");
    if (r < 0 || cl < 0 || r >= nr || cl >= nc) { out.textContent = ""; return; }
    var name = P[state.panel].name;
    out.textContent = (name ? name + ", " : "") + (D.row_axis ? D.row_axis + "=" + D.row_labels[r] + ", " : "") +
      D.col_axis + "=" + D.col_labels[cl] + " : " + fmt(P[state.panel].values[r][cl]);
    root.setAttribute("data-readout", out.textContent);
  }
  function at(ev) {
    var rect = q("el-canvas").getBoundingClientRect();
    var j = Math.floor((ev.clientX - rect.left - geo.left) / geo.cell), i = Math.floor((ev.clientY - rect.top - geo.top) / geo.cell);
    return [Math.max(0, Math.min(geo.rows - 1, i)) + state.r0, Math.max(0, Math.min(geo.cols - 1, j)) + state.c0, i >= 0 && j >= 0 && i < geo.rows && j < geo.cols];
  }
  var drag = null;
  q("el-canvas").addEventListener("mousemove", function (ev) { var a = at(ev); if (a[2]) { show(a[0], a[1]); } });
  q("el-canvas").addEventListener("mousedown", function (ev) { drag = at(ev); });
  q("el-canvas").addEventListener("mouseup", function (ev) {
    var a = at(ev), d = drag; drag = null;
    if (!d) { return; }
    if (d[0] === a[0] && d[1] === a[1]) { state.cell = [a[0], a[1]]; show(a[0], a[1]); return; }
    state.r0 = Math.min(d[0], a[0]); state.r1 = Math.max(d[0], a[0]);
    state.c0 = Math.min(d[1], a[1]); state.c1 = Math.max(d[1], a[1]);
    draw();
  });
  function reset() { state.r0 = 0; state.r1 = nr - 1; state.c0 = 0; state.c1 = nc - 1; draw(); }
  q("el-canvas").addEventListener("dblclick", reset);
  q("el-reset").addEventListener("click", reset);
  var sel = q("el-panel");
  if (P.length > 1) {
    P.forEach(function (pn, k) { var o = document.createElement("option"); o.value = String(k); o.textContent = pn.name; sel.appendChild(o); });
    sel.value = String(state.panel);
    sel.addEventListener("change", function () { state.panel = parseInt(sel.value, 10); draw(); });
  } else { q("el-panel-box").style.display = "none"; }
  legend();
  draw();
"""
