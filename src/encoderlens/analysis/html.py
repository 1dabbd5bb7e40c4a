"""Self-contained HTML views that also render inline in Jupyter, several per page without clashing.

Every view is a *fragment*: one ``<div class='el-view' id='el-...'>`` with a unique id, its own scoped
``<style>``, its data in a ``<script type='application/json'>`` and its code, which finds its elements
inside that div only. :class:`HtmlView` is the document as a ``str`` (write it to a file, open it in a
browser) carrying the fragment, which Jupyter shows through ``_repr_html_``; :func:`page` puts several
views on one page. No view references the network.

Each view's root gets ``data-status='ok'`` once drawn (``'error'`` and a visible message otherwise); the
page's ``<body>`` gets ``data-status='ok'`` once every view on it is.
"""

from __future__ import annotations

import html
import itertools
import json
import os
import secrets
from pathlib import Path
from typing import Any

_COUNTER = itertools.count()
_SESSION = secrets.token_hex(3)


def new_uid(kind: str) -> str:
    """A page-unique element id for a new view (``el-attn-1a2b3c-4``)."""
    return f"el-{kind}-{_SESSION}-{next(_COUNTER)}"


def script_safe_json(payload: Any) -> str:
    """JSON that can sit inside ``<script type='application/json'>`` whatever strings it holds.

    ``<``, ``>`` and ``&`` become ``\\u003c`` / ``\\u003e`` / ``\\u0026`` (so ``</script>``, ``<!--`` and
    ``<script`` in a token cannot end or re-mode the element), U+2028 / U+2029 are escaped, and
    ``ensure_ascii`` escapes the rest of non-ASCII; ``JSON.parse`` reads back the same strings.
    """
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


# Marks the page's <body> ok once every view on it is (each view calls it after drawing).
_PAGE_STATUS_JS = """
window.elPageStatus = window.elPageStatus || function () {
  var roots = document.querySelectorAll(".el-view"), ok = roots.length > 0, bad = false;
  for (var i = 0; i < roots.length; i++) {
    var s = roots[i].getAttribute("data-status");
    if (s === "error") { bad = true; } else if (s !== "ok") { ok = false; }
  }
  document.body.setAttribute("data-status", bad ? "error" : (ok ? "ok" : "loading"));
};
"""


def fragment(uid: str, kind: str, css: str, payload: Any, js: str, markup: str = "", title: str = "") -> str:
    """One view's ``<div>``: scoped CSS, ``markup``, the JSON payload, and ``js`` run as ``function (root, D)``.

    ``js`` must draw inside ``root`` only and may throw; the wrapper reports errors on the root and
    sets ``data-status``.
    """
    head = f"<div class='el-title'>{html.escape(title)}</div>" if title else ""
    return (
        f"<div class='el-view el-{kind}' id='{uid}' data-status='loading'>{head}"
        f"<style>{css}</style>"
        f"<div class='el-error' style='color:#b00;font-weight:bold;white-space:pre-wrap'></div>{markup}"
        f"<script type='application/json' class='el-data'>{script_safe_json(payload)}</script>"
        f"<script>{_PAGE_STATUS_JS}(function () {{\n  var root = document.getElementById({json.dumps(uid)});\n"
        "  function fail(msg) {\n    root.setAttribute('data-status', 'error');\n"
        "    root.querySelector('.el-error').textContent = 'view failed: ' + msg;\n    window.elPageStatus();\n  }\n"
        "  var D;\n  try { D = JSON.parse(root.querySelector('.el-data').textContent); }\n"
        "  catch (err) { fail('bad data: ' + err); return; }\n"
        f"  try {{\n    (function (root, D) {{\n{js}\n    }})(root, D);\n"
        "    root.setAttribute('data-status', 'ok');\n  } catch (err) { fail(String(err && err.stack || err)); }\n"
        "  window.elPageStatus();\n})();</script></div>"
    )


def document(title: str, fragments: list[str]) -> str:
    """A full HTML document holding ``fragments``."""
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:16px;color:#222;background:#fff}"
        ".el-view{margin:0 0 28px}.el-title{font-size:16px;font-weight:bold;margin:0 0 8px}</style>"
        f"</head><body data-status='loading'><h1 style='font-size:18px;margin:0 0 10px'>{html.escape(title)}</h1>"
        f"{''.join(fragments)}</body></html>"
    )


class HtmlView(str):
    """A view: the standalone HTML document (this string), plus its embeddable :attr:`fragment`.

    Jupyter renders it inline (``_repr_html_`` gives the fragment); :meth:`save` writes the document.

    Example:
        >>> view = attention_html(model, "The cat sat.")
        >>> view  # in a notebook: drawn inline
        >>> view.save("attention.html")
    """

    fragment: str

    def __new__(cls, doc: str, fragment: str) -> HtmlView:
        obj = super().__new__(cls, doc)
        obj.fragment = fragment
        return obj

    def _repr_html_(self) -> str:
        return self.fragment

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the standalone document to ``path``."""
        p = Path(path)
        p.write_text(str(self), encoding="utf-8")
        return p


def page(*views: HtmlView | str, title: str = "encoderlens views") -> HtmlView:
    """Several views on one page (each keeps its own ids, styles and state).

    Example:
        >>> page(attention_html(model, a), model_view_html(model, b), res.to_interactive_html()).save("all.html")
    """
    frags = []
    for v in views:
        frag = getattr(v, "fragment", None)
        if not isinstance(frag, str):
            raise TypeError(f"page() takes views made by encoderlens (HtmlView), got {type(v).__name__}")
        frags.append(frag)
    if not frags:
        raise ValueError("page() needs at least one view")
    inner = "".join(frags)
    return HtmlView(document(title, frags), inner)
