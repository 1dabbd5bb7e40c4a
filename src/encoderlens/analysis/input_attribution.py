"""Input attribution for every family: saliency, input x gradient, integrated gradients, at any hook point.

Anchor: inseq and captum. The attributed tensor is, by default, each stream's raw input as the model's
:meth:`~encoderlens.models.base.HookedModel.input_spec` names it: token embeddings for text and both
streams of an encoder-decoder, waveform samples for speech. Any other hook point gives *layer*
attribution (``hooks=["blocks.2.hook_resid_pre"]``). Methods, per element ``i`` of the hooked activation:

- ``"saliency"``: ``|d f / d x_i|``;
- ``"input_x_gradient"``: ``x_i * d f / d x_i``;
- ``"integrated_gradients"``: ``(x_i - x'_i) * integral of d f / d x_i`` on the straight path from the
  baseline ``x'`` (:mod:`encoderlens.analysis.gradients`; all hooks interpolated together, so the
  attributions of every hook together sum to ``f(x) - f(x')``: ``delta`` reports the difference).

Each position's score sums its elements (over ``d_model``, heads...). Padded positions are NaN.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from encoderlens.analysis.gradients import TargetFn, activations, grads_at, integrated_grads
from encoderlens.analysis.results import Labelled
from encoderlens.analysis.targets import Target
from encoderlens.models.base import HookedModel
from encoderlens.models.contract import Prepared, StreamName

Method = Literal["saliency", "input_x_gradient", "integrated_gradients"]
METHODS = ("saliency", "input_x_gradient", "integrated_gradients")
Baseline = str | float | Tensor | dict[str, Tensor] | Prepared | Any


@dataclass
class InputAttribution:
    """Attributions of one target per item at one or more hook points.

    Attributes:
        scores: Per hook, a :class:`Labelled` ``(item, pos)`` (``sample`` for waveforms); NaN at padding.
        raw: Per hook, the element-wise attributions (the hook's full shape).
        target: ``f(x)`` per item.
        baseline_target: ``f(baseline)`` per item (integrated gradients), else None.
        delta: Convergence delta per item: ``sum(attributions) - (f(x) - f(baseline))`` (integrated gradients).
        method: The method; ``meta`` has the rule, steps and baseline.
        batch: The prepared input.
        seconds_per_sample: Per waveform hook, ``1 / sampling_rate`` (for time-aligned curves).
    """

    scores: dict[str, Labelled]
    raw: dict[str, Tensor]
    target: Tensor
    baseline_target: Tensor | None
    delta: Tensor | None
    method: str
    batch: Prepared
    seconds_per_sample: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def total(self) -> Tensor:
        """Per item, the sum of every hook's attributions (NaN padding skipped)."""
        return sum(torch.nan_to_num(s.values).sum(1) for s in self.scores.values())  # type: ignore[return-value]

    def by_frame(self, hook: str, stream: StreamName = None) -> Labelled:
        """A waveform hook's attributions summed per frame of ``stream`` (``(item, pos)``, time labels)."""
        if hook not in self.seconds_per_sample:
            raise ValueError(f"{hook!r} is not a waveform hook here; waveform hooks: {sorted(self.seconds_per_sample)}")
        times = self.batch.times.get(stream)
        if times is None:
            raise ValueError(f"stream {stream!r} has no frame times")
        sr = 1.0 / self.seconds_per_sample[hook]
        vals = torch.nan_to_num(self.scores[hook].values)
        starts = (times[:, 0] * sr).round().long().tolist()
        ends = (times[:, 1] * sr).round().long().tolist()
        cols = [vals[:, s:e].sum(1) for s, e in zip(starts, ends)]
        out = torch.stack(cols, 1)
        mask = self.batch.mask(stream).bool()
        out = torch.where(mask, out, torch.full_like(out, float("nan")))
        labels = {"item": self.scores[hook].labels["item"], "pos": self.batch.position_labels(stream, 0)}
        return Labelled(out, ("item", "pos"), labels, f"{self.scores[hook].title} (per frame)", dict(self.meta))

    # ------------------------------------------------------------------ views
    def item_labels(self, hook: str, item: int) -> list[str]:
        """One item's position labels at ``hook`` (its own tokens; the axis labels are item 0's)."""
        res = self.scores[hook]
        streams = self.meta.get("streams", {})
        if hook in streams:
            return self.batch.position_labels(streams[hook], item)
        return res.labels["pos"]

    def to_text(self, item: int = 0, digits: int = 3) -> str:
        """Per hook, each position with its score (one line each)."""
        lines = [f"{self.method}: target {float(self.target[item]):+.4f}"]
        if self.delta is not None and self.baseline_target is not None:
            lines[0] += f", baseline {float(self.baseline_target[item]):+.4f}, delta {float(self.delta[item]):+.2e}"
        for hook, res in self.scores.items():
            lines.append(f"[{hook}]")
            row = res.sel(item=item)
            assert isinstance(row, Labelled)
            for lab, v in zip(self.item_labels(hook, item), row.values.tolist()):
                if v == v:
                    lines.append(f"  {lab:<20} {v:+.{digits}f}")
        return "\n".join(lines)

    def to_html(self, path: str | Path | None = None, item: int = 0) -> str:
        """Self-contained HTML: tokens coloured by score (text), or a time-aligned curve (waveforms)."""
        parts = []
        for hook, res in self.scores.items():
            if hook in self.seconds_per_sample:
                parts.append(f"<h2>{html.escape(hook)}</h2>" + _svg_curve(res, item, self.seconds_per_sample[hook]))
            else:
                parts.append(f"<h2>{html.escape(hook)}</h2>" + token_spans(res, item, self.item_labels(hook, item)))
        doc = (
            "<!DOCTYPE html><html><head><meta charset='utf-8'><title>input attribution</title>"
            "<style>body{font-family:sans-serif;margin:16px}.tok{padding:2px 3px;margin:1px;display:inline-block;"
            "border-radius:3px;font-family:monospace}</style></head><body>"
            f"<h1>{html.escape(self.method)}</h1><p>{html.escape(self.to_text(item).splitlines()[0])}</p>"
            + "".join(parts)
            + "</body></html>"
        )
        if path is not None:
            Path(path).write_text(doc, encoding="utf-8")
        return doc

    def plot(self, hook: str | None = None, item: int = 0, ax: Any = None) -> Any:
        """Bars per position (tokens) or a curve over time in seconds (waveforms); needs matplotlib."""
        hook = hook or next(iter(self.scores))
        res = self.scores[hook].sel(item=item)
        assert isinstance(res, Labelled)
        if hook not in self.seconds_per_sample:
            return res.plot(ax=ax)
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(8, 3))
        t = torch.arange(res.values.shape[0]) * self.seconds_per_sample[hook]
        ax.plot(t.numpy(), torch.nan_to_num(res.values).numpy())
        ax.set_xlabel("time (s)")
        ax.set_ylabel("attribution")
        ax.set_title(res.title)
        return ax


def color(v: float, lim: float) -> str:
    """White to red for positive, white to blue for negative values, relative to ``lim``."""
    if v != v or lim == 0:
        return "#ffffff"
    t = max(-1.0, min(1.0, v / lim))
    c = int(255 * (1 - abs(t)))
    return f"rgb(255,{c},{c})" if t >= 0 else f"rgb({c},{c},255)"


def token_spans(res: Labelled, item: int, labels: list[str] | None = None) -> str:
    """Tokens of one item as coloured spans (red positive, blue negative), hover for the value."""
    row = res.sel(item=item)
    assert isinstance(row, Labelled)
    vals = row.values
    finite = vals[~torch.isnan(vals)]
    lim = float(finite.abs().max()) if finite.numel() else 0.0
    spans = []
    for lab, v in zip(labels or row.labels[row.axes[0]], vals.tolist()):
        if v != v:
            continue
        tok = lab.split(":", 1)[-1]
        spans.append(f"<span class='tok' style='background:{color(v, lim)}' title='{v:+.4f}'>{html.escape(tok)}</span>")
    return "<div>" + "".join(spans) + "</div>"


def _svg_curve(res: Labelled, item: int, dt: float, width: int = 800, height: int = 160) -> str:
    vals = torch.nan_to_num(res.values[item]).float()
    n = vals.shape[0]
    lim = float(vals.abs().max()) or 1.0
    pts = " ".join(
        f"{i * width / max(n - 1, 1):.1f},{height / 2 - float(v) / lim * height / 2:.1f}" for i, v in enumerate(vals)
    )
    return (
        f"<svg width='{width}' height='{height + 20}' xmlns='http://www.w3.org/2000/svg'>"
        f"<line x1='0' y1='{height / 2}' x2='{width}' y2='{height / 2}' stroke='#ccc'/>"
        f"<polyline fill='none' stroke='#c33' points='{pts}'/>"
        f"<text x='0' y='{height + 15}' font-size='11'>0 s</text>"
        f"<text x='{width - 60}' y='{height + 15}' font-size='11'>{n * dt:.3f} s</text></svg>"
    )


def default_hooks(model: HookedModel) -> list[str]:
    """Every stream's input hook (:meth:`~encoderlens.models.base.HookedModel.input_spec`)."""
    return list(dict.fromkeys(model.input_spec(s).hook for s in model.streams))


def hook_stream(model: HookedModel, hook: str) -> StreamName:
    """The stream a hook belongs to (by prefix; the last stream with the longest matching prefix)."""
    best: tuple[int, StreamName] = (-1, model.streams[-1])
    for s in model.streams:
        p = model.stream_spec(s).prefix
        if hook.startswith(p) and len(p) > best[0]:
            best = (len(p), s)
    return best[1]


def _baselines(
    model: HookedModel, baseline: Baseline, acts: dict[str, Tensor], return_type: str | None
) -> dict[str, Tensor]:
    if isinstance(baseline, str):
        if baseline != "zero":
            raise ValueError(
                f"baseline must be 'zero', a number, a tensor, a dict hook -> tensor, or an input; got {baseline!r}"
            )
        return {h: torch.zeros_like(x) for h, x in acts.items()}
    if isinstance(baseline, (int, float)):
        return {h: torch.full_like(x, float(baseline)) for h, x in acts.items()}
    if isinstance(baseline, Tensor):
        if len(acts) != 1:
            raise ValueError("a tensor baseline needs exactly one hook; pass a dict hook -> tensor for several")
        return {h: baseline.to(x.device, x.dtype).expand_as(x) for h, x in acts.items()}
    if isinstance(baseline, dict):
        missing = sorted(set(acts) - set(baseline))
        if missing:
            raise ValueError(f"baseline dict lacks hooks {missing}")
        return {h: baseline[h].to(x.device, x.dtype).expand_as(x) for h, x in acts.items()}
    # an input: its activations at the hooks are the baseline
    _, base_acts = activations(model, model.prepare_input(baseline), list(acts), return_type)
    for h, x in acts.items():
        if base_acts[h].shape != x.shape:
            raise ValueError(
                f"the baseline input gives {h} of shape {tuple(base_acts[h].shape)}, the input {tuple(x.shape)}; "
                "give the baseline input the same length and padding (e.g. every real token replaced by [MASK])"
            )
    return base_acts


def _position_scores(
    model: HookedModel, batch: Prepared, hook: str, attr: Tensor, title: str, wave: bool
) -> tuple[Labelled, StreamName | str]:
    """``(item, pos)`` sums of the attributions, and the stream whose positions they are ("none": not a stream's)."""
    vals = attr.float().reshape(attr.shape[0], attr.shape[1], -1).sum(-1) if attr.ndim > 2 else attr.float()
    items = [str(i) for i in range(batch.batch_size)]
    stream = hook_stream(model, hook)
    mask = batch.masks.get(stream)
    if wave or mask is None or mask.shape[1] != vals.shape[1]:
        return Labelled(vals.cpu(), ("item", "pos"), {"item": items}, title), "none"
    vals = torch.where(mask.bool().to(vals.device), vals, torch.full_like(vals, float("nan")))
    labels = {"item": items, "pos": batch.position_labels(stream, 0)}
    return Labelled(vals.cpu(), ("item", "pos"), labels, title), stream


def attribute_input(
    model: HookedModel,
    input: Any,
    target: TargetFn,
    *,
    method: Method = "integrated_gradients",
    hooks: Sequence[str] | None = None,
    baseline: Baseline = "zero",
    n_steps: int = 64,
    rule: str = "gausslegendre",
    chunk_size: int = 16,
    return_type: str | None = None,
    **input_options: Any,
) -> InputAttribution:
    """Attribute ``target`` to the input (or to activations at ``hooks``) with saliency, x * grad or IG.

    Args:
        model: An encoderlens model (any family).
        input: Raw input (plus ``input_options``) or a :class:`Prepared`.
        target: ``target(output, batch) -> (batch,)``, e.g. from :mod:`encoderlens.analysis.targets`
            (its ``return_type`` is used unless ``return_type`` is given).
        method: ``"saliency"``, ``"input_x_gradient"`` or ``"integrated_gradients"``.
        hooks: Hook points attributed (default: every stream's input, :meth:`HookedModel.input_spec`).
        baseline: Integrated gradients' ``x'``: ``"zero"``, a number, a tensor, ``{hook: tensor}``, or an
            input of the same shape whose activations are the baseline (e.g. every token masked).
        n_steps, rule: Quadrature (:func:`~encoderlens.analysis.gradients.quadrature`).
        chunk_size: Interpolation steps per forward.

    Example:
        >>> res = attribute_input(model, "The capital of France is [MASK].", mask_fill(model, paris))
        >>> print(res.to_text()); res.delta  # completeness check
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    batch = model.prepare_input(input, **input_options)
    if return_type is None and isinstance(target, Target):
        return_type = target.return_type
    names = list(dict.fromkeys(hooks)) if hooks is not None else default_hooks(model)
    if not names:
        raise ValueError("no hooks to attribute")
    out, acts = activations(model, batch, names, return_type)
    with torch.no_grad():
        f_x = target_value(target, out, batch)
    seconds = {}
    for s in model.streams:
        spec = model.input_spec(s)
        if spec.unit == "sample" and spec.hook in acts and spec.sampling_rate:
            seconds[spec.hook] = 1.0 / spec.sampling_rate
    meta: dict[str, Any] = {"method": method, "hooks": names}
    base_t = delta = None
    if method == "integrated_gradients":
        bases = _baselines(model, baseline, acts, return_type)
        wsum = integrated_grads(
            model,
            batch,
            acts,
            bases,
            target,
            n_steps=n_steps,
            rule=rule,
            chunk_size=chunk_size,
            return_type=return_type,
        )
        raw = {h: (acts[h] - bases[h]) * wsum[h] for h in names}
        base_t = _value_with(model, batch, target, bases, return_type)
        total = sum(r.reshape(r.shape[0], -1).double().sum(1) for r in raw.values())
        delta = (total - (f_x.double() - base_t.double())).float()
        meta.update(
            n_steps=n_steps, rule=rule, baseline=baseline if isinstance(baseline, (str, float, int)) else "given"
        )
    else:
        grads, _ = grads_at(model, batch, names, target, return_type=return_type)
        raw = {h: grads[h].abs() if method == "saliency" else acts[h] * grads[h] for h in names}
    title = f"{method} of {getattr(target, 'name', 'target')}"
    scored = {h: _position_scores(model, batch, h, raw[h], f"{title} at {h}", h in seconds) for h in names}
    scores = {h: lab for h, (lab, _) in scored.items()}
    meta["streams"] = {h: stream for h, (_, stream) in scored.items() if stream != "none"}
    return InputAttribution(
        scores,
        raw,
        f_x.cpu(),
        None if base_t is None else base_t.cpu(),
        None if delta is None else delta.cpu(),
        method,
        batch,
        seconds,
        meta,
    )


def target_value(target: TargetFn, out: Any, batch: Prepared) -> Tensor:
    """``target(out, batch)`` detached, checked to be one value per item."""
    v = target(out, batch)
    if not isinstance(v, Tensor) or v.shape != (batch.batch_size,):
        raise ValueError(
            f"the target must return one value per batch item, shape ({batch.batch_size},); got "
            f"{tuple(getattr(v, 'shape', ()))}"
        )
    return v.detach().float()


def _replace_hooks(values: dict[str, Tensor]) -> list[tuple[str, Any]]:
    def make(v: Tensor) -> Any:
        return lambda x, hook: v.to(x.device, x.dtype)

    return [(h, make(v)) for h, v in values.items()]


def _value_with(
    model: HookedModel, batch: Prepared, target: TargetFn, values: dict[str, Tensor], return_type: str | None
) -> Tensor:
    with torch.no_grad():
        out = model.run_prepared(batch, return_type, fwd_hooks=_replace_hooks(values))
        return target_value(target, out, batch)
