"""Activation patching: which activations carry the difference between a clean and a corrupted input.

Two runs, one *clean* (the behaviour of interest) and one *corrupted* (a minimally different input, e.g.
one token swapped, or the clean input with noise added to its embeddings through ``corrupt_hooks``).
For every target activation (a layer x position on the residual stream, one head's ``z`` or pattern, one
MLP output...) the model is run again with that activation taken from the other run, and a ``metric``
of the output is recorded.

- ``direction="denoise"`` (default): run the corrupted input, patch in *clean* activations. A normalised
  score of 1 means this activation alone restores the clean behaviour.
- ``direction="noise"``: run the clean input, patch in *corrupted* activations. A normalised score of 1
  means this activation alone destroys it.

With ``normalize=True`` scores are ``(metric_patched - metric_base) / (metric_source - metric_base)``, where
*base* is the run being patched and *source* the run the activations come from. Raw metric values are kept
in ``result.meta``.

Shapes: the clean and corrupted inputs must have the same shape and the same padding (the same mask of
real positions), so that position ``p`` means the same slot in both; a padded batch is fine. The metric
receives the model output for the whole batch and returns a scalar, or one value per item (then the
result has a trailing ``item`` axis).

Runs are batched: ``chunk_size`` patched copies of the batch go through the model at once (each copy with
its own patch), which is several times faster than one forward per target on CPU.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from encoderlens.analysis.results import Labelled
from encoderlens.cache import StreamSpec
from encoderlens.hooks import get_act_name
from encoderlens.models.base import HookedModel
from encoderlens.models.contract import Prepared, StreamName
from encoderlens.names import hook_axes

Metric = Callable[[Any], Tensor | float]
Direction = Literal["denoise", "noise"]
HookList = Sequence[tuple[Any, Callable[..., Tensor | None]]]


@dataclass(frozen=True)
class Target:
    """One activation slice to patch: ``activation[:, *index]`` of hook ``hook`` (batch dim left out)."""

    hook: str
    index: tuple[Any, ...] = ()


# ---------------------------------------------------------------------- metrics
def _per_item(values: Tensor | int | Sequence[int], batch: int, device: torch.device, what: str) -> Tensor:
    t = torch.as_tensor(values, device=device)
    if t.ndim == 0:
        return t.expand(batch).long()
    if t.shape != (batch,):
        raise ValueError(f"{what} must be an int or one per batch item ({batch}), got shape {tuple(t.shape)}")
    return t.long()


def logit_diff(
    position: int | Sequence[int] | Tensor,
    good: int | Sequence[int] | Tensor,
    bad: int | Sequence[int] | Tensor | None = None,
    reduce: Literal["mean", "none"] = "mean",
) -> Callable[[Tensor], Tensor]:
    """Metric: ``logits[item, position, good] - logits[item, position, bad]`` (just the good logit if no bad).

    Args:
        position: The position read, one int or one per item (e.g. each item's ``[MASK]``).
        good, bad: Token ids, one int or one per item.
        reduce: ``"mean"`` over the batch (a scalar), or ``"none"`` (one value per item).

    Example:
        >>> mask_pos = tokens.eq(tokenizer.mask_token_id).nonzero()[0, 1]
        >>> metric = logit_diff(mask_pos, good=paris_id, bad=rome_id)
    """
    if reduce not in ("mean", "none"):
        raise ValueError(f"reduce must be 'mean' or 'none', got {reduce!r}")

    def metric(logits: Tensor) -> Tensor:
        if not isinstance(logits, Tensor) or logits.ndim != 3:
            raise TypeError(
                "logit_diff expects logits of shape (batch, pos, vocab); run with return_type='logits' "
                f"(got {type(logits).__name__} {tuple(getattr(logits, 'shape', ()))})"
            )
        b = logits.shape[0]
        rows = torch.arange(b, device=logits.device)
        pos = _per_item(position, b, logits.device, "position")
        sel = logits[rows, pos]
        val = sel[rows, _per_item(good, b, logits.device, "good")]
        if bad is not None:
            val = val - sel[rows, _per_item(bad, b, logits.device, "bad")]
        return val.mean() if reduce == "mean" else val

    return metric


def log_prob(
    position: int | Sequence[int] | Tensor,
    token: int | Sequence[int] | Tensor,
    reduce: Literal["mean", "none"] = "mean",
) -> Callable[[Tensor], Tensor]:
    """Metric: log-probability of ``token`` at ``position`` (softmax over the vocabulary)."""

    def metric(logits: Tensor) -> Tensor:
        lp = logits.log_softmax(-1)
        return logit_diff(position, token, None, reduce)(lp)

    return metric


# ---------------------------------------------------------------------- validation
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


def _per_copy(fn: Callable[..., Tensor | None], batch: int) -> Callable[..., Tensor]:
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
    wrapped_base = [(name, _per_copy(fn, b)) for name, fn in base_hooks]
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
            if len(chunk) == 1:
                results.append(_as_metric_tensor(metric(out), b))
            else:
                if not isinstance(out, Tensor):
                    raise TypeError(
                        f"batched patching splits the output per copy and needs a tensor output, got "
                        f"{type(out).__name__}; pass chunk_size=1 or a return_type that gives a tensor"
                    )
                for j in range(len(chunk)):
                    results.append(_as_metric_tensor(metric(out[j * b : (j + 1) * b]), b))
            bar.update(len(chunk))
            i += len(chunk)
    bar.close()
    return torch.stack(results)


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
                "(e.g. noise on hook_embed)"
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
    return (values - setup.metric_base) / denom


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


def _pos_labels(setup: PatchSetup, stream: StreamName, n: int, item: int = 0) -> list[str]:
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
    lays = _layers(spec.n_layers, layers)
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
    lays = _layers(spec.n_layers, layers)
    return stream, spec, lays, [spec.prefix + get_act_name(act, i, attn) for i in lays]


def _layers(n_layers: int, layers: Sequence[int] | None) -> list[int]:
    if layers is None:
        return list(range(n_layers))
    out = []
    for layer in layers:
        if not isinstance(layer, int) or not -n_layers <= layer < n_layers:
            raise ValueError(f"layer {layer!r} out of range for {n_layers} layers")
        out.append(layer % n_layers)
    return out


def _positions(n_pos: int, positions: Sequence[int] | None) -> list[int]:
    if positions is None:
        return list(range(n_pos))
    out = []
    for p in positions:
        if not isinstance(p, int) or not -n_pos <= p < n_pos:
            raise ValueError(f"position {p!r} out of range for sequences of {n_pos} positions")
        out.append(p % n_pos)
    return out


def _finish(
    values: Tensor,
    shape: list[int],
    axes: list[str],
    labels: dict[str, list[str]],
    setup: PatchSetup,
    normalize: bool,
    title: str,
    **meta: Any,
) -> Labelled:
    values = normalise(values, setup, normalize)
    if values.ndim == 2:  # per-item metric
        shape = [*shape, values.shape[1]]
        axes = [*axes, "item"]
        labels = {**labels, "item": [str(i) for i in range(values.shape[1])]}
    return Labelled(values.reshape(shape), tuple(axes), labels, title, _meta(setup, normalize, **meta))


# ---------------------------------------------------------------------- public patching functions


def patch_residual(
    model: HookedModel,
    clean: Any,
    corrupt: Any,
    metric: Metric,
    *,
    hook: str = "resid_pre",
    stream: StreamName = None,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    direction: Direction = "denoise",
    normalize: bool = True,
    corrupt_hooks: HookList = (),
    return_type: str | None = None,
    chunk_size: int = 8,
    progress: bool = False,
    input_kwargs: dict[str, Any] | None = None,
) -> Labelled:
    """Patch one position of one layer's residual stream (or attn/MLP output) at a time.

    Args:
        model: An encoderlens model.
        clean, corrupt: Inputs (text, token ids, waveforms, or :class:`~encoderlens.models.contract.Prepared`);
            ``corrupt=None`` with ``corrupt_hooks`` corrupts the clean input through hooks.
        metric: Model output -> scalar (or one value per item).
        hook: Which per-block activation: ``"resid_pre"``, ``"resid_mid"``, ``"resid_post"``, ``"attn_out"``,
            ``"mlp_out"``, or for decoders ``"resid_mid_cross"``, ``"cross_attn_out"``.
        stream: ``"encoder"``/``"decoder"`` on encoder-decoders (default decoder); None otherwise.
        layers, positions: Subsets to patch (all by default).
        direction: ``"denoise"`` or ``"noise"`` (see module doc).
        normalize: Report ``(patched - base) / (source - base)`` instead of raw metric values.
        corrupt_hooks: Hooks that corrupt the corrupted run (e.g. noise on ``hook_embed``); deterministic.
        return_type: Forward return type given to the metric (default: the family's main output).
        chunk_size: Patched copies per forward.
        progress: tqdm progress bar.
        input_kwargs: Extra options for preparing both inputs (e.g. ``decoder_input``).

    Returns:
        :class:`Labelled` with axes ``("layer", "pos")`` (plus ``"item"`` for per-item metrics).

    Example:
        >>> res = patch_residual(model, "The capital of France is [MASK].", "The capital of Italy is [MASK].",
        ...                      logit_diff(6, paris_id, rome_id))
        >>> print(res.to_text())
    """
    stream, lays, names = resid_targets(model, stream, hook, layers)
    setup = setup_runs(
        model,
        clean,
        corrupt,
        metric,
        names,
        direction=direction,
        corrupt_hooks=corrupt_hooks,
        return_type=return_type,
        input_kwargs=input_kwargs,
    )
    n_pos = int(setup.base.mask(stream).shape[1])
    poss = _positions(n_pos, positions)
    targets = [Target(nm, (p,)) for nm in names for p in poss]
    vals = run_patches(
        model,
        setup.base,
        setup.source_cache,
        targets,
        metric,
        return_type=return_type,
        base_hooks=setup.base_hooks,
        chunk_size=chunk_size,
        progress=progress,
        desc=f"patching {hook}",
    )
    all_labels = _pos_labels(setup, stream, n_pos)
    return _finish(
        vals,
        [len(lays), len(poss)],
        ["layer", "pos"],
        {"layer": [f"L{i}" for i in lays], "pos": [all_labels[p] for p in poss]},
        setup,
        normalize,
        f"activation patching: {model.stream_spec(stream).prefix}{hook} by layer and position",
        hook=hook,
        stream=stream,
    )


def patch_heads(
    model: HookedModel,
    clean: Any,
    corrupt: Any,
    metric: Metric,
    *,
    act: str = "z",
    attn: str = "attn",
    stream: StreamName = None,
    layers: Sequence[int] | None = None,
    by_pos: bool = False,
    direction: Direction = "denoise",
    normalize: bool = True,
    corrupt_hooks: HookList = (),
    return_type: str | None = None,
    chunk_size: int = 8,
    progress: bool = False,
    input_kwargs: dict[str, Any] | None = None,
) -> Labelled:
    """Patch one attention head at a time (all positions, or one query position with ``by_pos``).

    Args:
        act: ``"z"`` (the head's output before ``W_O``), ``"pattern"`` (its attention probabilities),
            ``"q"``, ``"k"``, ``"v"`` or ``"result"`` (its output after ``W_O``).
        attn: ``"attn"`` (self-attention) or ``"cross_attn"`` (decoder cross-attention).
        by_pos: Also split by position: the query position for z/q/pattern/result, the key position
            for k/v (encoder positions for cross-attention k/v).
        (others as in :func:`patch_residual`)

    Returns:
        :class:`Labelled` with axes ``("layer", "head")`` or ``("layer", "head", "pos")``.
    """
    stream, spec, lays, names = head_targets(model, stream, attn, act, layers)
    setup = setup_runs(
        model,
        clean,
        corrupt,
        metric,
        names,
        direction=direction,
        corrupt_hooks=corrupt_hooks,
        return_type=return_type,
        input_kwargs=input_kwargs,
    )
    n_heads = spec.n_heads
    lay = hook_axes(names[0])
    targets: list[Target] = []
    pos_stream = model.cross_attention_source(stream) if attn == "cross_attn" and act in ("k", "v") else stream
    n_pos = int(setup.source_cache[names[0]].shape[lay["pos"]])
    for nm in names:
        for h in range(n_heads):
            if not by_pos:
                targets.append(Target(nm, (h,) if lay["head"] == 1 else (slice(None), h)))
            else:
                for p in range(n_pos):
                    targets.append(Target(nm, (h, p) if lay["head"] == 1 else (p, h)))
    vals = run_patches(
        model,
        setup.base,
        setup.source_cache,
        targets,
        metric,
        return_type=return_type,
        base_hooks=setup.base_hooks,
        chunk_size=chunk_size,
        progress=progress,
        desc=f"patching heads ({act})",
    )
    labels = {"layer": [f"L{i}" for i in lays], "head": [f"H{h}" for h in range(n_heads)]}
    shape, axes = [len(lays), n_heads], ["layer", "head"]
    if by_pos:
        shape.append(n_pos)
        axes.append("pos")
        labels["pos"] = _pos_labels(setup, pos_stream, n_pos)
    return _finish(
        vals,
        shape,
        axes,
        labels,
        setup,
        normalize,
        f"activation patching: {spec.prefix}{attn} heads ({act})",
        act=act,
        attn=attn,
        stream=stream,
    )


def patch_block_outputs(
    model: HookedModel,
    clean: Any,
    corrupt: Any,
    metric: Metric,
    *,
    component: Literal["mlp", "attn", "cross_attn"] = "mlp",
    stream: StreamName = None,
    layers: Sequence[int] | None = None,
    by_pos: bool = False,
    **kwargs: Any,
) -> Labelled:
    """Patch a whole MLP (``mlp_out``), attention layer (``attn_out``) or cross-attention layer per layer.

    With ``by_pos`` this is :func:`patch_residual` on that output. Other arguments as there.

    Returns:
        :class:`Labelled` with axes ``("layer",)`` or ``("layer", "pos")``.
    """
    hooks = {"mlp": "mlp_out", "attn": "attn_out", "cross_attn": "cross_attn_out"}
    if component not in hooks:
        raise ValueError(f"component must be one of {tuple(hooks)}, got {component!r}")
    if by_pos:
        return patch_residual(
            model, clean, corrupt, metric, hook=hooks[component], stream=stream, layers=layers, **kwargs
        )
    stream = model.resolve_stream(stream)
    spec = model.stream_spec(stream)
    if component == "cross_attn" and not spec.has_cross_attention:
        raise ValueError("component='cross_attn' needs the decoder stream of an encoder-decoder")
    lays = _layers(spec.n_layers, layers)
    names = [spec.prefix + get_act_name(hooks[component], i) for i in lays]
    normalize = kwargs.pop("normalize", True)
    chunk_size = kwargs.pop("chunk_size", 8)
    progress = kwargs.pop("progress", False)
    setup = setup_runs(model, clean, corrupt, metric, names, **kwargs)
    vals = run_patches(
        model,
        setup.base,
        setup.source_cache,
        [Target(nm) for nm in names],
        metric,
        return_type=setup.return_type,
        base_hooks=setup.base_hooks,
        chunk_size=chunk_size,
        progress=progress,
        desc=f"patching {component}",
    )
    return _finish(
        vals,
        [len(lays)],
        ["layer"],
        {"layer": [f"L{i}" for i in lays]},
        setup,
        normalize,
        f"activation patching: {spec.prefix}{hooks[component]} by layer",
        component=component,
        stream=stream,
    )


def patch_mlp(model: HookedModel, clean: Any, corrupt: Any, metric: Metric, **kwargs: Any) -> Labelled:
    """Patch each layer's MLP output (see :func:`patch_block_outputs`)."""
    return patch_block_outputs(model, clean, corrupt, metric, component="mlp", **kwargs)


def patch_attn_layers(model: HookedModel, clean: Any, corrupt: Any, metric: Metric, **kwargs: Any) -> Labelled:
    """Patch each layer's attention output (see :func:`patch_block_outputs`)."""
    return patch_block_outputs(model, clean, corrupt, metric, component="attn", **kwargs)


def embedding_noise_hook(
    std: float,
    positions: Sequence[int] | None = None,
    seed: int = 0,
    hook: str = "hook_embed",
) -> tuple[str, Callable[..., Tensor]]:
    """A deterministic corruption for ``corrupt_hooks``: fixed Gaussian noise on the token embeddings.

    This is the corruption of causal tracing (Meng et al., 2022): noise of standard deviation ``std`` on
    the embeddings of ``positions`` (all if None). The noise is drawn once (from ``seed``) on first use and
    reused, so every patched run sees the same corruption.

    Returns:
        ``(hook_name, hook_fn)`` to put in ``corrupt_hooks``.
    """
    state: dict[str, Tensor] = {}

    def fn(x: Tensor, hook: Any) -> Tensor:
        noise = state.get("noise")
        if noise is None or noise.shape != x.shape:
            g = torch.Generator().manual_seed(seed)
            noise = torch.randn(tuple(x.shape), generator=g) * std
            if positions is not None:
                keep = torch.zeros(x.shape[1], dtype=torch.bool)
                keep[list(positions)] = True
                noise = noise * keep[None, :, None]
            state["noise"] = noise
        return x + noise.to(x.device, x.dtype)

    return hook, fn
