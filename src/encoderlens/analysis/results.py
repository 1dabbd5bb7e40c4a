"""Results with labelled axes, and how to look at them (text table, matplotlib, self-contained HTML).

Every analysis in :mod:`encoderlens.analysis` that returns a grid of numbers (patching effects per layer and
position, head scores per layer and head...) returns a :class:`Labelled`: the tensor, the name of each axis,
and a label for every index along every axis.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from encoderlens.analysis.html import HtmlView
from encoderlens.analysis.plot_html import labelled_fragment, labelled_view


@dataclass
class Labelled:
    """A tensor whose axes have names and whose indices have labels.

    Attributes:
        values: The numbers (on CPU, float).
        axes: One name per dimension, e.g. ``("layer", "pos")``.
        labels: For each axis, one string per index (``"L3"``, ``"7:cat"``...).
        title: What the numbers are (used by plots and HTML).
        meta: Anything else worth keeping (metric baselines, method, notes).

    Example:
        >>> res = patch_residual(model, clean, corrupt, metric)
        >>> res.axes
        ('layer', 'pos')
        >>> res.top(3)  # [({'layer': 'L2', 'pos': '4:cat'}, 0.93), ...]
    """

    values: Tensor
    axes: tuple[str, ...]
    labels: dict[str, list[str]]
    title: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.values, Tensor):
            raise TypeError(f"values must be a Tensor, got {type(self.values).__name__}")
        self.axes = tuple(self.axes)
        if len(self.axes) != self.values.ndim:
            raise ValueError(
                f"got {len(self.axes)} axis names {self.axes} for a tensor with {self.values.ndim} dims "
                f"{tuple(self.values.shape)}; name every dimension"
            )
        if len(set(self.axes)) != len(self.axes):
            raise ValueError(f"axis names must be distinct, got {self.axes}")
        labels = dict(self.labels)
        for axis, n in zip(self.axes, self.values.shape):
            lab = labels.get(axis)
            if lab is None:
                labels[axis] = [str(i) for i in range(n)]
            elif len(lab) != n:
                raise ValueError(f"axis {axis!r} has {n} entries but {len(lab)} labels")
            else:
                labels[axis] = [str(x) for x in lab]
        extra = set(labels) - set(self.axes)
        if extra:
            raise ValueError(f"labels given for unknown axes {sorted(extra)}; axes are {self.axes}")
        self.labels = labels

    # ------------------------------------------------------------------ basics
    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)

    def __repr__(self) -> str:
        dims = ", ".join(f"{a}={n}" for a, n in zip(self.axes, self.shape))
        t = f"{self.title!r}, " if self.title else ""
        return f"Labelled({t}{dims})"

    def axis(self, name: str) -> int:
        """Index of the axis called ``name``."""
        try:
            return self.axes.index(name)
        except ValueError:
            raise ValueError(f"no axis {name!r}; axes are {self.axes}") from None

    def _index(self, axis: str, key: int | str) -> int:
        labels = self.labels[axis]
        if isinstance(key, str):
            if key in labels:
                return labels.index(key)
            raise ValueError(f"no label {key!r} on axis {axis!r}; labels are {labels[:20]}")
        if not isinstance(key, int):
            raise TypeError(f"select an index (int) or a label (str) on axis {axis!r}, got {type(key).__name__}")
        n = len(labels)
        if not -n <= key < n:
            raise IndexError(f"index {key} out of range for axis {axis!r} of size {n}")
        return key % n

    def sel(self, **selection: int | str) -> Labelled | float:
        """Select one index (int or label) on named axes; drops those axes.

        Example:
            >>> res.sel(layer=2)          # the ("pos",) row of layer 2
            >>> res.sel(layer="L2", pos=0)  # a float
        """
        values = self.values
        axes = list(self.axes)
        labels = dict(self.labels)
        for axis, key in selection.items():
            d = axes.index(axis) if axis in axes else self.axis(axis)
            values = values.select(d, self._index(axis, key))
            axes.pop(d)
            labels.pop(axis)
        if not axes:
            return float(values)
        return Labelled(values, tuple(axes), labels, self.title, dict(self.meta))

    def transpose(self, *axes: str) -> Labelled:
        """Reorder axes by name."""
        if sorted(axes) != sorted(self.axes):
            raise ValueError(f"transpose needs every axis once: {self.axes}, got {axes}")
        perm = [self.axis(a) for a in axes]
        return Labelled(self.values.permute(perm), tuple(axes), self.labels, self.title, dict(self.meta))

    def mean(self, axis: str) -> Labelled | float:
        """Average over one axis (NaN entries ignored)."""
        d = self.axis(axis)
        values = self.values.nanmean(d)
        if values.ndim == 0:
            return float(values)
        axes = tuple(a for a in self.axes if a != axis)
        labels = {a: self.labels[a] for a in axes}
        return Labelled(values, axes, labels, self.title, dict(self.meta))

    def top(self, k: int = 5, largest: bool = True, absolute: bool = False) -> list[tuple[dict[str, str], float]]:
        """The ``k`` largest (or smallest, or largest in magnitude) entries with their labels."""
        flat = self.values.flatten().float()
        score = flat.abs() if absolute else flat
        score = torch.where(torch.isnan(score), torch.full_like(score, -math.inf if largest else math.inf), score)
        k = min(k, flat.numel())
        idx = score.topk(k, largest=largest).indices.tolist()
        out = []
        for i in idx:
            coords = []
            rem = i
            for n in reversed(self.shape):
                coords.append(rem % n)
                rem //= n
            coords.reverse()
            out.append(({a: self.labels[a][c] for a, c in zip(self.axes, coords)}, float(flat[i])))
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form: values as nested lists (NaN as None), axes, labels, title, meta."""
        vals = self.values.float().tolist()

        def clean(v: Any) -> Any:
            if isinstance(v, list):
                return [clean(x) for x in v]
            return None if isinstance(v, float) and math.isnan(v) else v

        meta = {k: v for k, v in self.meta.items() if isinstance(v, (str, int, float, bool, type(None), list))}
        return {
            "title": self.title,
            "axes": list(self.axes),
            "labels": self.labels,
            "values": clean(vals),
            "meta": meta,
        }

    # ------------------------------------------------------------------ display
    def to_text(self, digits: int = 3, max_cols: int = 40) -> str:
        """A plain-text table (1-D or 2-D; a per-item 3-D result is one table whose rows are item x the first
        other axis; other higher dims print one table per leading index)."""
        if self.values.ndim == 0:
            return f"{self.title}: {float(self.values):.{digits}f}"
        if self.values.ndim == 1:
            (axis,) = self.axes
            w = max(len(s) for s in self.labels[axis])
            rows = [f"{lab:<{w}}  {_fmt(float(v), digits)}" for lab, v in zip(self.labels[axis], self.values.tolist())]
            return "\n".join(([self.title] if self.title else []) + rows)
        if self.values.ndim == 3 and "item" in self.axes:
            return self._item_table().to_text(digits, max_cols)
        if self.values.ndim > 2:
            lead = self.axes[0]
            parts = []
            for i, lab in enumerate(self.labels[lead]):
                sub = self.sel(**{lead: i})
                assert isinstance(sub, Labelled)
                sub.title = f"{self.title} [{lead}={lab}]"
                parts.append(sub.to_text(digits, max_cols))
            return "\n\n".join(parts)
        r_ax, c_ax = self.axes
        cols = self.labels[c_ax][:max_cols]
        width = max(digits + 4, *(len(c) for c in cols))
        rw = max(len(r) for r in self.labels[r_ax])
        lines = [self.title] if self.title else []
        lines.append(" " * rw + "  " + " ".join(f"{c[:width]:>{width}}" for c in cols))
        for lab, row in zip(self.labels[r_ax], self.values.float().tolist()):
            lines.append(f"{lab:<{rw}}  " + " ".join(f"{_fmt(v, digits):>{width}}" for v in row[:max_cols]))
        if len(self.labels[c_ax]) > max_cols:
            lines.append(f"... ({len(self.labels[c_ax]) - max_cols} more columns)")
        return "\n".join(lines)

    def _item_table(self) -> Labelled:
        """A 3-D result with an ``item`` axis as one 2-D table: rows ``item x (first other axis)``."""
        r_ax, c_ax = (a for a in self.axes if a != "item")
        vals = self.values.permute(self.axes.index("item"), self.axes.index(r_ax), self.axes.index(c_ax))
        rows = [f"item {i} {r}" for i in self.labels["item"] for r in self.labels[r_ax]]
        return Labelled(
            vals.reshape(-1, vals.shape[-1]),
            (f"item.{r_ax}", c_ax),
            {f"item.{r_ax}": rows, c_ax: self.labels[c_ax]},
            self.title,
            self.meta,
        )

    def plot(self, ax: Any = None, cmap: str = "RdBu", center: float | None = 0.0, **imshow_kwargs: Any) -> Any:
        """Draw a 1-D result as bars or a 2-D result as a heatmap with labelled axes (needs matplotlib).

        Args:
            ax: A matplotlib ``Axes`` to draw into (a new figure if None).
            cmap: Colormap name; diverging by default since effects can be negative.
            center: Value at the middle of the colormap (None: use the data range).

        Returns:
            The ``Axes``.
        """
        try:
            import matplotlib.pyplot as plt
        except ImportError:
            raise ImportError(
                "Labelled.plot needs matplotlib, which is not installed; install it with "
                "`pip install matplotlib` (or `pip install encoderlens[plot]`), or use "
                "Labelled.to_html(path) for a self-contained HTML heatmap that needs nothing"
            ) from None
        if self.values.ndim not in (1, 2):
            first = "item" if "item" in self.axes else self.axes[0]
            raise ValueError(
                f"plot draws 1-D or 2-D results; this one has axes {self.axes}. "
                f"Select or average first, e.g. res.sel({first}=0) or res.mean({first!r})"
            )
        if ax is None:
            _, ax = plt.subplots(figsize=(max(4.0, 0.35 * self.shape[-1] + 2), max(3.0, 0.3 * self.shape[0] + 1.5)))
        vals = self.values.float().numpy()
        if self.values.ndim == 1:
            (axis,) = self.axes
            ax.bar(range(len(vals)), vals)
            ax.set_xticks(range(len(vals)))
            ax.set_xticklabels(self.labels[axis], rotation=90)
            ax.set_xlabel(axis)
        else:
            finite = vals[~(vals != vals)]
            lim = float(abs(finite).max()) if finite.size else 1.0
            if center is not None:
                imshow_kwargs.setdefault("vmin", center - lim)
                imshow_kwargs.setdefault("vmax", center + lim)
            im = ax.imshow(vals, cmap=cmap, aspect="auto", **imshow_kwargs)
            r_ax, c_ax = self.axes
            ax.set_yticks(range(vals.shape[0]))
            ax.set_yticklabels(self.labels[r_ax])
            ax.set_xticks(range(vals.shape[1]))
            ax.set_xticklabels(self.labels[c_ax], rotation=90)
            ax.set_ylabel(r_ax)
            ax.set_xlabel(c_ax)
            ax.figure.colorbar(im, ax=ax)
        if self.title:
            ax.set_title(self.title)
        return ax

    def to_interactive_html(self, path: str | Path | None = None) -> HtmlView:
        """An interactive heatmap (hover values, drag to zoom, colour legend; self-contained, no server).

        Returns an :class:`~encoderlens.analysis.html.HtmlView` (the document as a string, shown inline in
        Jupyter); written to ``path`` if given. See :mod:`encoderlens.analysis.plot_html`.
        """
        view = labelled_view(self.values, self.axes, self.labels, self.title)
        if path is not None:
            view.save(path)
        return view

    def _repr_html_(self) -> str:
        """Jupyter shows a result as its interactive heatmap."""
        return labelled_fragment(self.values, self.axes, self.labels, self.title)

    def to_html(self, path: str | Path | None = None, digits: int = 3) -> str:
        """A self-contained HTML heatmap (no script, no external resource); written to ``path`` if given.

        1-D results become one row; per-item 3-D results one table (rows: item x the first other axis);
        other 3-D and more one table per index of the leading axes.
        """
        one = self._item_table() if self.values.ndim == 3 and "item" in self.axes else self
        body = _html_tables(one, digits)
        doc = (
            "<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(self.title or 'encoderlens result')}</title><style>{_TABLE_CSS}</style></head>"
            f"<body><h1>{html.escape(self.title or 'encoderlens result')}</h1>{body}</body></html>"
        )
        if path is not None:
            Path(path).write_text(doc, encoding="utf-8")
        return doc


def _fmt(v: float, digits: int) -> str:
    return "nan" if math.isnan(v) else f"{v:+.{digits}f}"


_TABLE_CSS = (
    "body{font-family:sans-serif;margin:16px}table{border-collapse:collapse;margin:8px 0 24px}"
    "td,th{border:1px solid #ddd;padding:3px 6px;font-size:12px;text-align:right}"
    "th{background:#f4f4f4;font-weight:normal}caption{text-align:left;font-weight:bold;padding:4px}"
)


def _color(v: float, lim: float) -> str:
    if math.isnan(v) or lim == 0:
        return "#eeeeee" if math.isnan(v) else "#ffffff"
    t = max(-1.0, min(1.0, v / lim))
    # white -> red for positive, white -> blue for negative
    if t >= 0:
        return f"rgb(255,{int(255 * (1 - t))},{int(255 * (1 - t))})"
    return f"rgb({int(255 * (1 + t))},{int(255 * (1 + t))},255)"


def _html_tables(res: Labelled, digits: int) -> str:
    if res.values.ndim > 2:
        lead = res.axes[0]
        out = []
        for i, lab in enumerate(res.labels[lead]):
            sub = res.sel(**{lead: i})
            assert isinstance(sub, Labelled)
            sub.title = f"{lead} = {lab}"
            out.append(_html_tables(sub, digits))
        return "".join(out)
    if res.values.ndim == 0:
        return f"<p>{float(res.values):.{digits}f}</p>"
    values = res.values.float()
    if values.ndim == 1:
        values = values[None]
        r_ax, r_labels, c_ax = "", [""], res.axes[0]
    else:
        r_ax, c_ax = res.axes
        r_labels = res.labels[r_ax]
    finite = values[~torch.isnan(values)]
    lim = float(finite.abs().max()) if finite.numel() else 0.0
    head = "".join(f"<th>{html.escape(c)}</th>" for c in res.labels[c_ax])
    rows = []
    for lab, row in zip(r_labels, values.tolist()):
        cells = "".join(
            f"<td style='background:{_color(v, lim)}' title='{html.escape(lab)} / {html.escape(c)}'>{_fmt(v, digits)}</td>"
            for v, c in zip(row, res.labels[c_ax])
        )
        rows.append(f"<tr><th>{html.escape(lab)}</th>{cells}</tr>")
    cap = html.escape(res.title) if res.title else ""
    corner = html.escape(f"{r_ax} \\ {c_ax}" if r_ax else c_ax)
    return f"<table><caption>{cap}</caption><tr><th>{corner}</th>{head}</tr>{''.join(rows)}</table>"


def stack_labelled(items: Sequence[Labelled], axis: str, labels: Sequence[str]) -> Labelled:
    """Stack results of equal axes along a new leading axis."""
    if not items:
        raise ValueError("nothing to stack")
    first = items[0]
    for it in items[1:]:
        if it.axes != first.axes or it.shape != first.shape:
            raise ValueError(f"cannot stack results with axes/shapes {first.axes}{first.shape} and {it.axes}{it.shape}")
    return Labelled(
        torch.stack([it.values for it in items]),
        (axis, *first.axes),
        {axis: list(labels), **first.labels},
        first.title,
        dict(first.meta),
    )
