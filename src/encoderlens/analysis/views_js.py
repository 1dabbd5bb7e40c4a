"""The attention browser's CSS, controls and script (see :mod:`encoderlens.analysis.views`).

Everything is scoped to the view's root ``<div>`` (classes, never page-wide ids), so several browsers can
share one page or one notebook.
"""

from __future__ import annotations

CSS = """
.el-attn .el-controls{display:flex;flex-wrap:wrap;gap:12px;align-items:center;margin-bottom:10px}
.el-attn label{font-size:13px}
.el-attn select{font-size:13px;padding:2px}
.el-attn .el-main{display:flex;gap:18px;align-items:flex-start;flex-wrap:wrap}
.el-attn .el-scroll{max-width:100%;overflow:auto}
.el-attn .el-canvas{border:1px solid #ccc;cursor:crosshair;display:block}
.el-attn .el-thumbs{display:grid;grid-template-columns:repeat(4,auto);gap:6px;max-width:420px}
.el-attn .el-thumbs.el-grid{max-width:none}
.el-attn .el-thumbs figure{margin:0;text-align:center;font-size:11px;cursor:pointer}
.el-attn .el-thumbs canvas{border:2px solid #ddd}
.el-attn .el-thumbs figure.sel canvas{border-color:#d33}
.el-attn .el-rowlab{font-size:11px;align-self:center;text-align:right;padding-right:4px}
.el-attn .el-readout{font-family:monospace;font-size:13px;min-height:18px;margin:8px 0}
.el-attn .el-legend{font-size:11px;display:flex;gap:6px;align-items:center;margin:4px 0}
.el-attn .el-strip{line-height:2;font-size:14px;max-width:900px}
.el-attn .el-strip span{padding:1px 3px;margin:1px;border-radius:3px}
"""

CONTROLS = """
<div class='el-controls'>
<label>item <select class='el-item'></select></label>
<label>view <select class='el-viewsel'></select></label>
<label>layer <select class='el-layer'></select></label>
<label>head <select class='el-head'></select></label>
<label>colour <select class='el-scale'><option value='linear'>linear</option><option value='sqrt'>sqrt</option><option value='relative'>relative to max</option></select></label>
</div>
<div class='el-legend'></div>
<div class='el-readout'>hover over the matrix; click a row to colour its keys below</div>
<div class='el-main'><div class='el-scroll'><canvas class='el-canvas' width='10' height='10'></canvas></div><div class='el-thumbs'></div></div>
<div class='el-strip'></div>
"""

JS = r"""
  "use strict";
  var q = function (cls) { return root.querySelector("." + cls); };
  // a fragment names a view by key: look it up among the data's own keys, never on Object.prototype
  function own(o, k) { return o !== null && typeof o === "object" && Object.prototype.hasOwnProperty.call(o, k); }
  var cache = {};
  function matrix(viewKey, item) {
    var k = viewKey + "/" + item;
    if (!own(cache, k)) {
      var bin = atob(D.views[viewKey].items[item].data);
      var buf = new ArrayBuffer(bin.length);
      var u8 = new Uint8Array(buf);
      for (var i = 0; i < bin.length; i++) { u8[i] = bin.charCodeAt(i); }
      cache[k] = new Float32Array(buf);
    }
    return cache[k];
  }
  var model = D.mode === "model";
  var state = { item: 0, view: Object.keys(D.views)[0], layer: 0, head: model ? 0 : "mean", scale: "linear", query: null };
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
    opt(q("el-item"), D.items.map(function (_, i) { return i; }), D.items, state.item);
    var keys = Object.keys(D.views);
    opt(q("el-viewsel"), keys, keys.map(function (k) { return D.views[k].label; }), state.view);
    var ls = []; for (var i = 0; i < V.n_layers; i++) { ls.push(i); }
    opt(q("el-layer"), ls, layerLabels(), state.layer);
    var hs = ["mean"], hl = ["mean of heads"];
    for (var h = 0; h < V.n_heads; h++) { hs.push(h); hl.push("H" + h); }
    opt(q("el-head"), hs, hl, state.head);
    q("el-scale").value = state.scale;
  }
  function headMatrix(head, layer) {
    var V = D.views[state.view], it = V.items[state.item];
    var m = matrix(state.view, state.item), size = it.nq * it.nk;
    var out = new Float32Array(size);
    var base = layer * V.n_heads * size;
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
  function maxOf(mat) { var mx = 1e-12; for (var i = 0; i < mat.length; i++) { mx = Math.max(mx, mat[i]); } return mx; }
  function colour(v, vmax) {
    var t = Math.max(0, Math.min(1, state.scale === "relative" ? v / vmax : v));
    if (state.scale === "sqrt") { t = Math.sqrt(t); }
    var r = Math.round(255 - 200 * t), g = Math.round(255 - 170 * t), b = Math.round(255 - 60 * t);
    return "rgb(" + r + "," + g + "," + b + ")";
  }
  function fmtTime(s) { return s.toFixed(s < 10 ? 2 : 1) + "s"; }
  function drawLegend(vmax) {
    var box = q("el-legend");
    box.innerHTML = "";
    var c = document.createElement("canvas"), w = 160;
    c.width = w; c.height = 12;
    var ctx = c.getContext("2d"), top = state.scale === "relative" ? vmax : 1;
    for (var x = 0; x < w; x++) { ctx.fillStyle = colour(top * x / (w - 1), vmax); ctx.fillRect(x, 0, 1, 12); }
    var lo = document.createElement("span"), hi = document.createElement("span"), name = document.createElement("span");
    lo.textContent = "0"; hi.textContent = top.toFixed(3);
    name.textContent = "attention weight (" + (state.scale === "relative" ? "relative to this matrix's max" : state.scale) + ")";
    box.appendChild(lo); box.appendChild(c); box.appendChild(hi); box.appendChild(name);
  }
  var geo = null;
  function drawMain() {
    var V = D.views[state.view], it = V.items[state.item];
    var mat = headMatrix(state.head, state.layer), nq = it.nq, nk = it.nk;
    var tokens = V.axis === "tokens";
    var vmax = maxOf(mat);
    var n = Math.max(nq, nk);
    // long inputs keep a readable minimum cell and scroll instead of shrinking to nothing
    var cell = tokens ? Math.max(6, Math.min(28, Math.floor(640 / n))) : Math.max(1, Math.min(28, Math.floor(640 / n)));
    var c = q("el-canvas"), ctx = c.getContext("2d");
    ctx.font = "11px sans-serif";
    var labW = 0;
    if (tokens) {
      for (var a = 0; a < nq; a++) { labW = Math.max(labW, ctx.measureText(it.q_labels[a].slice(0, 16)).width); }
      for (var b = 0; b < nk; b++) { labW = Math.max(labW, ctx.measureText(it.k_labels[b].slice(0, 16)).width); }
    }
    var step = tokens ? Math.max(1, Math.ceil(12 / cell)) : Math.max(1, Math.ceil(50 / cell));
    var left = tokens ? Math.ceil(labW) + 10 : 60, top = tokens ? Math.ceil(labW * 0.87) + 12 : 40;
    var right = tokens ? Math.ceil(labW * 0.5) + 12 : 10;
    c.width = left + cell * nk + right; c.height = top + cell * nq + 10;
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, c.width, c.height);
    for (var qi = 0; qi < nq; qi++) {
      for (var k = 0; k < nk; k++) {
        ctx.fillStyle = colour(mat[qi * nk + k], vmax);
        ctx.fillRect(left + k * cell, top + qi * cell, cell, cell);
      }
    }
    if (state.query !== null && state.query < nq) {
      ctx.strokeStyle = "#d33"; ctx.lineWidth = 2;
      ctx.strokeRect(left, top + state.query * cell, nk * cell, cell);
    }
    ctx.fillStyle = "#222"; ctx.font = "11px sans-serif";
    var drawn = 0;
    if (tokens) {
      ctx.textAlign = "right"; ctx.textBaseline = "middle";
      for (var i = 0; i < nq; i += step) { ctx.fillText(it.q_labels[i].slice(0, 16), left - 4, top + (i + 0.5) * cell); drawn++; }
      for (var j = 0; j < nk; j += step) {
        ctx.save(); ctx.translate(left + (j + 0.5) * cell, top - 4); ctx.rotate(-Math.PI / 3);
        ctx.textAlign = "left"; ctx.fillText(it.k_labels[j].slice(0, 16), 0, 0); ctx.restore(); drawn++;
      }
    } else {
      var fs = V.frame_seconds || 0;
      ctx.textAlign = "center"; ctx.textBaseline = "bottom";
      for (var kk = 0; kk < nk; kk += step) {
        ctx.fillText(fs ? fmtTime(it.k_index[kk] * fs) : String(it.k_index[kk]), left + (kk + 0.5) * cell, top - 4); drawn++;
      }
      ctx.textAlign = "right"; ctx.textBaseline = "middle";
      for (var qq = 0; qq < nq; qq += step) {
        ctx.fillText(fs ? fmtTime(it.q_index[qq] * fs) : String(it.q_index[qq]), left - 4, top + (qq + 0.5) * cell); drawn++;
      }
      ctx.save(); ctx.translate(12, top + nq * cell / 2); ctx.rotate(-Math.PI / 2); ctx.textAlign = "center";
      ctx.fillText(fs ? "query time" : "query frame", 0, 0); ctx.restore();
      ctx.textAlign = "left"; ctx.fillText(fs ? "key time ->" : "key frame ->", left, 14);
    }
    root.setAttribute("data-labels", String(drawn));
    root.setAttribute("data-canvas-width", String(c.width));
    root.setAttribute("data-grid-right", String(left + cell * nk));
    geo = { left: left, top: top, cell: cell, nq: nq, nk: nk, mat: mat, it: it, tokens: tokens, fs: V.frame_seconds || 0 };
    drawLegend(vmax);
  }
  function thumb(hd, layer, n) {
    var it = D.views[state.view].items[state.item], mat = headMatrix(hd, layer), vmax = maxOf(mat);
    var c = document.createElement("canvas");
    c.width = n; c.height = n;
    var ctx = c.getContext("2d"), cw = n / Math.max(it.nk, 1), ch = n / Math.max(it.nq, 1);
    for (var qi = 0; qi < it.nq; qi++) {
      for (var k = 0; k < it.nk; k++) {
        ctx.fillStyle = colour(mat[qi * it.nk + k], vmax);
        ctx.fillRect(k * cw, qi * ch, Math.ceil(cw), Math.ceil(ch));
      }
    }
    return c;
  }
  function figure(hd, layer, n, caption) {
    var fig = document.createElement("figure");
    if (String(hd) === String(state.head) && layer === state.layer) { fig.className = "sel"; }
    fig.appendChild(thumb(hd, layer, n));
    var cap = document.createElement("figcaption");
    cap.textContent = caption;
    fig.appendChild(cap);
    fig.addEventListener("click", function () { state.head = hd; state.layer = layer; render(); });
    return fig;
  }
  function drawThumbs() {
    var V = D.views[state.view], box = q("el-thumbs");
    box.innerHTML = "";
    if (model) {
      // bertviz's model view: every layer (rows) x head (columns); click a thumbnail to zoom into it
      box.className = "el-thumbs el-grid";
      box.style.gridTemplateColumns = "auto repeat(" + V.n_heads + ", auto)";
      var labs = layerLabels();
      for (var l = 0; l < V.n_layers; l++) {
        var rl = document.createElement("div");
        rl.className = "el-rowlab"; rl.textContent = labs[l];
        box.appendChild(rl);
        for (var h = 0; h < V.n_heads; h++) { box.appendChild(figure(h, l, 52, "H" + h)); }
      }
      return;
    }
    var heads = ["mean"]; for (var hh = 0; hh < V.n_heads; hh++) { heads.push(hh); }
    heads.forEach(function (hd) { box.appendChild(figure(hd, state.layer, 80, hd === "mean" ? "mean" : "H" + hd)); });
  }
  function drawStrip() {
    var strip = q("el-strip");
    strip.innerHTML = "";
    if (!geo || state.query === null || state.query >= geo.nq) { return; }
    var qi = state.query, row = geo.mat.subarray(qi * geo.nk, (qi + 1) * geo.nk), vmax = maxOf(geo.mat);
    var head = document.createElement("div");
    head.textContent = "keys of query " + (geo.tokens ? geo.it.q_labels[qi] : (geo.fs ? fmtTime(geo.it.q_index[qi] * geo.fs) : "frame " + geo.it.q_index[qi])) + ":";
    strip.appendChild(head);
    if (geo.tokens) {
      for (var k = 0; k < geo.nk; k++) {
        var s = document.createElement("span");
        s.textContent = geo.it.k_labels[k];
        s.style.background = colour(row[k], vmax);
        s.title = row[k].toFixed(4);
        strip.appendChild(s);
      }
    } else {
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
  function publish() {
    var attrs = { view: state.view, item: String(state.item), layer: String(state.layer), head: String(state.head), scale: state.scale };
    Object.keys(attrs).forEach(function (k) {
      root.setAttribute("data-" + k, attrs[k]);
      document.body.setAttribute("data-" + k, attrs[k]);
    });
  }
  function render() {
    clampState();
    buildControls();
    drawMain();
    drawThumbs();
    drawStrip();
    publish();
  }
  q("el-item").addEventListener("change", function (e) { state.item = parseInt(e.target.value, 10); state.query = null; render(); });
  q("el-viewsel").addEventListener("change", function (e) { state.view = e.target.value; state.query = null; render(); });
  q("el-layer").addEventListener("change", function (e) { state.layer = parseInt(e.target.value, 10); render(); });
  q("el-head").addEventListener("change", function (e) { var v = e.target.value; state.head = v === "mean" ? "mean" : parseInt(v, 10); render(); });
  q("el-scale").addEventListener("change", function (e) { state.scale = e.target.value; render(); });
  function cellAt(ev) {
    if (!geo) { return null; }
    var r = q("el-canvas").getBoundingClientRect();
    var k = Math.floor((ev.clientX - r.left - geo.left) / geo.cell), qi = Math.floor((ev.clientY - r.top - geo.top) / geo.cell);
    if (qi < 0 || k < 0 || qi >= geo.nq || k >= geo.nk) { return null; }
    return [qi, k];
  }
  q("el-canvas").addEventListener("mousemove", function (ev) {
    var qk = cellAt(ev), out = q("el-readout");
    if (!qk) { out.textContent = ""; return; }
    var qi = qk[0], k = qk[1], v = geo.mat[qi * geo.nk + k];
    var ql = geo.tokens ? geo.it.q_labels[qi] : (geo.fs ? fmtTime(geo.it.q_index[qi] * geo.fs) : "frame " + geo.it.q_index[qi]);
    var kl = geo.tokens ? geo.it.k_labels[k] : (geo.fs ? fmtTime(geo.it.k_index[k] * geo.fs) : "frame " + geo.it.k_index[k]);
    out.textContent = "query " + ql + "  ->  key " + kl + " : " + v.toFixed(4);
  });
  q("el-canvas").addEventListener("click", function (ev) {
    var qk = cellAt(ev);
    if (qk) { state.query = qk[0]; drawMain(); drawStrip(); }
  });
  render();
"""
