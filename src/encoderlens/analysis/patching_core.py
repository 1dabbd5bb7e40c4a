"""The shared core of activation patching and attribution patching.

What :mod:`encoderlens.analysis.patching` and :mod:`encoderlens.analysis.attribution` both need:
the :class:`Target` of a patch, checking that a clean and a corrupted input line up
(:func:`check_compatible`), the batched patching engine (:func:`run_patches`), the clean/corrupted runs
and their metrics (:func:`setup_runs`, :class:`PatchSetup`), target lists for the residual stream and
the heads (:func:`resid_targets`, :func:`head_targets`), and the assembly of a
:class:`~encoderlens.analysis.results.Labelled` result (:func:`finish_result`).
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from encoderlens.analysis.results import Labelled
from encoderlens.analysis.targets import checked_positions
from encoderlens.cache import StreamSpec
from encoderlens.hooks import get_act_name
from encoderlens.models.base import HookedModel
from encoderlens.models.contract import Prepared, StreamName

#: Normalised patching warns when ``|source - base|`` is below this fraction of the metrics' magnitude
#: (the difference is then mostly float rounding)...
NEAR_EQUAL_RTOL = 1e-4
#: ...or when a normalised score exceeds this in absolute value (a clean/corrupted gap too small to divide by).
NORMALISED_PEAK = 10.0

Metric = Callable[[Any], Tensor | float]
Direction = Literal["denoise", "noise"]
HookList = Sequence[tuple[Any, Callable[..., Tensor | None]]]


class PositionMetric:
    """A metric that reads the logits at one position per item (:func:`~encoderlens.analysis.logit_diff`).

    Calling it is calling ``fn``; :meth:`check` (run by :func:`setup_runs` and the circuit tools on the
    clean run) refuses a position outside the logits or on an item's padding, whose logits are no output
    of that item (``position=-1`` is the padded batch's last position, padding for every shorter item).
    """

    def __init__(self, fn: Callable[[Tensor], Tensor], position: Any, what: str) -> None:
        self.fn, self.position, self.what = fn, position, what

    def __call__(self, logits: Tensor) -> Tensor:
        return self.fn(logits)

    def check(self, batch: Prepared, logits: Any) -> None:
        """Raise a ValueError if a position is outside ``logits`` or on padding of ``batch``'s items.

        The padding is that of the input's last stream as long as the logits' positions (the decoder's
        on an encoder-decoder); without one only the bounds are checked.
        """
        if not isinstance(logits, Tensor) or logits.ndim != 3:
            return  # the metric itself says what it needs
        b, n = logits.shape[:2]
        pos = torch.as_tensor(self.position).reshape(-1).long().cpu()
        pos = pos.expand(b) if pos.numel() == 1 else pos
        if pos.shape != (b,):
            return  # the metric itself raises, naming the shape it needs
        masks = [m for m in batch.masks.values() if m.shape == (b, n)]
        checked_positions(
            pos,
            n,
            masks[-1].bool().cpu() if masks else None,
            self.what,
            source="logits",
            real_name="real positions",
            hint="a negative position counts from the end of the padded batch; pass one real position per item, "
            "e.g. each item's last real one: mask.sum(1) - 1",
        )


def check_metric(metric: Metric, batch: Prepared, out: Any) -> None:
    """:meth:`PositionMetric.check` for a metric that reads positions; nothing for any other metric."""
    if isinstance(metric, PositionMetric):
        metric.check(batch, out)


@dataclass(frozen=True)
class Target:
    """One activation slice to patch: ``activation[:, *index]`` of hook ``hook`` (batch dim left out)."""

    hook: str
    index: tuple[Any, ...] = ()


def _tensors(v: Any) -> list[Tensor]:
    """Tensors of an argument, looking inside dataclasses (TextBatch, AudioBatch)."""
    if isinstance(v, Tensor):
        return [v]
    if is_dataclass(v) and not isinstance(v, type):
        return [t for f in fields(v) for t in _tensors(getattr(v, f.name))]
    return []


def check_compatible(clean: Prepared, corrupt: Prepared) -> None:
    """Raise a ValueError unless clean and corrupted inputs line up position by position."""
    if clean.family != corrupt.family:
        raise ValueError(f"clean is a {clean.family} input, corrupted a {corrupt.family} input")
    if clean.batch_size != corrupt.batch_size:
        raise ValueError(
            f"clean has {clean.batch_size} items but corrupted has {corrupt.batch_size}; "
            "pass one corrupted input per clean input"
        )
    pairs = list(zip(clean.args, corrupt.args)) + [(clean.kwargs[k], corrupt.kwargs.get(k)) for k in clean.kwargs]
    for a, b in pairs:
        for ta, tb in zip(_tensors(a), _tensors(b)):
            if ta.shape != tb.shape:
                raise ValueError(
                    f"clean and corrupted inputs have different shapes {tuple(ta.shape)} vs {tuple(tb.shape)}; "
                    "patching compares position p of one with position p of the other, so both need the same "
                    f"length. {clean.alignment_hint}{_token_hint(clean, corrupt)}"
                )
    for stream in clean.masks:
        a, b = clean.masks[stream], corrupt.masks.get(stream)
        if b is None:
            continue
        if a.shape != b.shape or not torch.equal(a, b):
            bad = (a != b).any(-1).nonzero().flatten().tolist() if a.shape == b.shape else "all"
            where = "" if stream is None else f" in the {stream} stream"
            raise ValueError(
                f"clean and corrupted inputs have different padding{where} (items {bad}); patching needs the "
                f"same real positions in both. {clean.alignment_hint}{_token_hint(clean, corrupt)}"
            )


def _token_hint(clean: Prepared, corrupt: Prepared) -> str:
    for stream, labs in clean.labels.items():
        other = corrupt.labels.get(stream)
        if labs is None or other is None or stream not in clean.token_ids:
            continue
        for i, (x, y) in enumerate(zip(labs, other)):
            xs = [t for t in x if t != "<pad>"]
            ys = [t for t in y if t != "<pad>"]
            if xs != ys and len(xs) != len(ys):
                return f" Item {i}: clean {xs} ({len(xs)} tokens) vs corrupted {ys} ({len(ys)} tokens)."
    return ""


# ---------------------------------------------------------------------- engine
def _as_metric_tensor(value: Any, batch: int) -> Tensor:
    if isinstance(value, (int, float)):
        value = torch.tensor(float(value))
    if not isinstance(value, Tensor):
        raise TypeError(f"the metric must return a tensor or a float, got {type(value).__name__}")
    value = value.detach().float()
    if value.ndim == 0 or (value.ndim == 1 and value.shape[0] == batch):
        return value.cpu()
    raise ValueError(
        f"the metric must return a scalar or one value per batch item (shape ({batch},)), got {tuple(value.shape)}"
    )


def per_copy(fn: Callable[..., Tensor | None], batch: int) -> Callable[..., Tensor]:
    """Apply a user hook to each copy of a repeated batch separately (it always sees the original batch)."""

    def wrapped(x: Tensor, hook: Any) -> Tensor:
        if x.shape[0] == batch:
            out = fn(x, hook=hook)
            return x if out is None else out
        parts = []
        for j in range(x.shape[0] // batch):
            part = x[j * batch : (j + 1) * batch]
            out = fn(part, hook=hook)
            parts.append(part if out is None else out)
        return torch.cat(parts)

    return wrapped


def _patch_hook(slots: list[tuple[int, tuple[Any, ...]]], source: Tensor, batch: int) -> Callable[..., Tensor]:
    def hook_fn(x: Tensor, hook: Any) -> Tensor:
        if source.shape[1:] != x.shape[1:]:
            raise ValueError(
                f"cannot patch {hook.name}: source activation has shape {tuple(source.shape)}, "
                f"this run's has {tuple(x.shape)}"
            )
        x = x.clone()
        src = source.to(x.device, x.dtype)
        for j, idx in slots:
            x[(slice(j * batch, (j + 1) * batch), *idx)] = src[(slice(None), *idx)]
        return x

    return hook_fn


def run_patches(
    model: HookedModel,
    base: Prepared,
    source_acts: dict[str, Tensor],
    targets: Sequence[Target],
    metric: Metric,
    *,
    return_type: str | None = None,
    base_hooks: HookList = (),
    chunk_size: int = 8,
    progress: bool = False,
    desc: str = "patching",
) -> Tensor:
    """Run ``base`` once per target with that slice of the activation replaced from ``source_acts``.

    The general engine behind every patching function (also used for ablations: pass zeros or means as
    ``source_acts``).

    Args:
        model: An encoderlens model.
        base: The input run each time.
        source_acts: Hook name -> replacement activation of the base run's shape.
        targets: What to patch, one run each.
        metric: Output -> scalar or per-item tensor.
        return_type: Forward ``return_type`` (the family's main output if None).
        base_hooks: Hooks active in every run (e.g. a corruption); each sees the original batch size.
        chunk_size: Patched copies of the batch per forward.
        progress: Show a tqdm progress bar.

    Returns:
        ``(n_targets,)`` or ``(n_targets, batch)`` metric values.
    """
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    for t in targets:
        if t.hook not in source_acts:
            raise ValueError(f"no source activation for {t.hook!r}; source_acts has {sorted(source_acts)[:8]}")
    b = base.batch_size
    wrapped_base = [(name, per_copy(fn, b)) for name, fn in base_hooks]
    results: list[Tensor] = []
    bar = _progress(len(targets), desc, progress)
    with torch.no_grad():
        i = 0
        while i < len(targets):
            chunk = list(targets[i : i + chunk_size])
            slots: dict[str, list[tuple[int, tuple[Any, ...]]]] = defaultdict(list)
            for j, t in enumerate(chunk):
                slots[t.hook].append((j, tuple(t.index)))
            hooks = [(name, _patch_hook(s, source_acts[name], b)) for name, s in slots.items()]
            out = model.run_prepared(base.repeat(len(chunk)), return_type, fwd_hooks=[*wrapped_base, *hooks])
            results.extend(_as_metric_tensor(m, b) for m in per_copy_metric(metric, out, len(chunk), b))
            bar.update(len(chunk))
            i += len(chunk)
    bar.close()
    return torch.stack(results)


def per_copy_metric(metric: Metric, out: Any, k: int, b: int) -> list[Any]:
    """The metric of each of ``k`` copies of a batch of ``b`` items run as one batch."""
    if k == 1:
        return [metric(out)]
    if not isinstance(out, Tensor):
        raise TypeError(
            f"batched runs split the output into {k} copies along the batch, so it must be a tensor; "
            f"got {type(out).__name__}. Pass chunk_size=1 or a return_type whose output is a tensor"
        )
    return [metric(out[j * b : (j + 1) * b]) for j in range(k)]


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, desc: str, show: bool) -> Any:
    if not show:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="run", leave=False)


# ---------------------------------------------------------------------- setup shared by patching functions
@dataclass
class PatchSetup:
    """Clean and corrupted runs prepared for patching (or attribution patching)."""

    clean: Prepared
    corrupt: Prepared
    base: Prepared
    base_hooks: list[tuple[Any, Any]]
    source_cache: dict[str, Tensor]
    base_cache: dict[str, Tensor]
    metric_base: Tensor
    metric_source: Tensor
    metric_clean: Tensor
    metric_corrupt: Tensor
    direction: str
    return_type: str | None


def setup_runs(
    model: HookedModel,
    clean: Any,
    corrupt: Any,
    metric: Metric,
    hook_names: Sequence[str],
    *,
    direction: Direction = "denoise",
    corrupt_hooks: HookList = (),
    return_type: str | None = None,
    input_kwargs: dict[str, Any] | None = None,
) -> PatchSetup:
    """Prepare both inputs, check they line up, cache ``hook_names`` in both runs and compute baselines."""
    if direction not in ("denoise", "noise"):
        raise ValueError(f"direction must be 'denoise' (patch clean into corrupted) or 'noise', got {direction!r}")
    kw = dict(input_kwargs or {})
    clean_p = model.prepare_input(clean, **kw)
    if corrupt is None:
        if not corrupt_hooks:
            raise ValueError(
                "pass a corrupted input, or corrupt=None with corrupt_hooks that corrupt the clean run "
                "(e.g. noise on embed.hook_embed)"
            )
        corrupt_p = clean_p
    else:
        corrupt_p = model.prepare_input(corrupt, **kw)
    check_compatible(clean_p, corrupt_p)
    names = list(dict.fromkeys(hook_names))
    for n in names:
        model.check_hook_name(n)
    cached = set(names)
    with torch.no_grad():
        clean_out, clean_cache = model.run_prepared_with_cache(
            clean_p, names_filter=cached.__contains__, return_type=return_type
        )
        with model.hooks(fwd_hooks=list(corrupt_hooks)):
            corrupt_out, corrupt_cache = model.run_prepared_with_cache(
                corrupt_p, names_filter=cached.__contains__, return_type=return_type
            )
    b = clean_p.batch_size
    check_metric(metric, clean_p, clean_out)
    m_clean = _as_metric_tensor(metric(clean_out), b)
    m_corrupt = _as_metric_tensor(metric(corrupt_out), b)
    if direction == "denoise":
        base, hooks, src, base_cache = corrupt_p, list(corrupt_hooks), clean_cache, corrupt_cache
        m_base, m_src = m_corrupt, m_clean
    else:
        base, hooks, src, base_cache = clean_p, [], corrupt_cache, clean_cache
        m_base, m_src = m_clean, m_corrupt
    return PatchSetup(
        clean_p,
        corrupt_p,
        base,
        hooks,
        dict(src.items()),
        dict(base_cache.items()),
        m_base,
        m_src,
        m_clean,
        m_corrupt,
        direction,
        return_type,
    )


def normalise(values: Tensor, setup: PatchSetup, normalize: bool) -> Tensor:
    """``(values - base) / (source - base)`` when ``normalize`` (raises if the two baselines coincide)."""
    if not normalize:
        return values
    denom = setup.metric_source - setup.metric_base
    if bool((denom.abs() < 1e-8).any()):
        raise ValueError(
            f"the metric is the same on the clean ({setup.metric_clean.tolist()}) and corrupted "
            f"({setup.metric_corrupt.tolist()}) runs, so effects cannot be normalised; pass normalize=False, "
            "or choose a corruption / metric that differ"
        )
    out = (values - setup.metric_base) / denom
    scale = torch.maximum(setup.metric_clean.abs(), setup.metric_corrupt.abs())
    small_gap = bool((denom.abs() < NEAR_EQUAL_RTOL * scale).any())
    finite = out[torch.isfinite(out)]
    peak = float(finite.abs().max()) if finite.numel() else 0.0
    if small_gap or peak > NORMALISED_PEAK:
        warnings.warn(
            f"the clean ({setup.metric_clean.tolist()}) and corrupted ({setup.metric_corrupt.tolist()}) metrics are "
            f"nearly equal: normalised scores divide by their difference ({denom.tolist()}) and reach "
            f"{peak:.3g} in absolute value, so they say little. Pass normalize=False to see raw metric values, "
            "or choose a corruption / metric the model separates more clearly",
            UserWarning,
            stacklevel=4,
        )
    return out


def _meta(setup: PatchSetup, normalize: bool, **extra: Any) -> dict[str, Any]:
    def val(t: Tensor) -> Any:
        return float(t) if t.ndim == 0 else t.tolist()

    return {
        "direction": setup.direction,
        "normalized": normalize,
        "metric_clean": val(setup.metric_clean),
        "metric_corrupt": val(setup.metric_corrupt),
        **extra,
    }


def position_labels(setup: PatchSetup, stream: StreamName, n: int, item: int = 0) -> list[str]:
    """``"p:token"`` per position of ``stream`` (``"p:clean/corrupt"`` where the two runs differ)."""
    clean = setup.clean.labels.get(stream)
    corrupt = setup.corrupt.labels.get(stream)
    if clean is None:
        return [str(p) for p in range(n)]
    out = []
    for p in range(n):
        a = clean[item][p]
        b = corrupt[item][p] if corrupt is not None else a
        out.append(f"{p}:{a}" if a == b else f"{p}:{a}/{b}")
    return out


_RESID_HOOKS = ("resid_pre", "resid_mid", "resid_mid_cross", "resid_post", "attn_out", "cross_attn_out", "mlp_out")


def resid_targets(
    model: HookedModel, stream: StreamName, hook: str, layers: Sequence[int] | None
) -> tuple[StreamName, list[int], list[str]]:
    """Validate a per-block residual target and return ``(stream, layers, hook names)``."""
    if hook not in _RESID_HOOKS:
        raise ValueError(f"hook must be one of {_RESID_HOOKS}, got {hook!r}")
    stream = model.resolve_stream(stream)
    spec = model.stream_spec(stream)
    lays = select_layers(spec.n_layers, layers)
    return stream, lays, [spec.prefix + get_act_name(hook, i) for i in lays]


def head_targets(
    model: HookedModel, stream: StreamName, attn: str, act: str, layers: Sequence[int] | None
) -> tuple[StreamName, StreamSpec, list[int], list[str]]:
    """Validate a per-head target and return ``(stream, spec, layers, hook names)``."""
    acts = ("z", "pattern", "q", "k", "v", "result")
    if act not in acts:
        raise ValueError(f"act must be one of {acts}, got {act!r}")
    if attn not in ("attn", "cross_attn"):
        raise ValueError(f"attn must be 'attn' or 'cross_attn', got {attn!r}")
    stream = model.resolve_stream(stream)
    spec = model.stream_spec(stream)
    if attn == "cross_attn" and not spec.has_cross_attention:
        raise ValueError("attn='cross_attn' needs a stream with cross-attention (the decoder of an encoder-decoder)")
    lays = select_layers(spec.n_layers, layers)
    return stream, spec, lays, [spec.prefix + get_act_name(act, i, attn) for i in lays]


def select_layers(n_layers: int, layers: Sequence[int] | None) -> list[int]:
    """``layers`` checked against ``n_layers`` and made non-negative (None: every layer)."""
    if layers is None:
        return list(range(n_layers))
    out = []
    for layer in layers:
        if not isinstance(layer, int) or not -n_layers <= layer < n_layers:
            raise ValueError(f"layer {layer!r} out of range for {n_layers} layers")
        out.append(layer % n_layers)
    return out


def select_positions(n_pos: int, positions: Sequence[int] | None) -> list[int]:
    """``positions`` checked against ``n_pos`` and made non-negative (None: every position)."""
    if positions is None:
        return list(range(n_pos))
    out = []
    for p in positions:
        if not isinstance(p, int) or not -n_pos <= p < n_pos:
            raise ValueError(f"position {p!r} out of range for sequences of {n_pos} positions")
        out.append(p % n_pos)
    return out


def finish_result(
    values: Tensor,
    shape: list[int],
    axes: list[str],
    labels: dict[str, list[str]],
    setup: PatchSetup,
    normalize: bool,
    title: str,
    **meta: Any,
) -> Labelled:
    """The patching result: ``values`` normalised (if asked), shaped by ``axes``, with a trailing ``item`` axis
    for a per-item metric, and the run's raw metric values in ``meta``."""
    values = normalise(values, setup, normalize)
    if values.ndim == 2:  # per-item metric
        shape = [*shape, values.shape[1]]
        axes = [*axes, "item"]
        labels = {**labels, "item": [str(i) for i in range(values.shape[1])]}
    return Labelled(values.reshape(shape), tuple(axes), labels, title, _meta(setup, normalize, **meta))
