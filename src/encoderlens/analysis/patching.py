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

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from encoderlens.analysis.patching_core import (
    Direction,
    HookList,
    Metric,
    PatchSetup,
    PositionMetric,
    Target,
    check_compatible,
    finish_result,
    head_targets,
    position_labels,
    resid_targets,
    run_patches,
    select_layers,
    select_positions,
    setup_runs,
)
from encoderlens.analysis.results import Labelled
from encoderlens.hooks import get_act_name
from encoderlens.models.base import HookedModel
from encoderlens.models.contract import StreamName
from encoderlens.names import hook_axes

__all__ = [
    "Direction",
    "HookList",
    "Metric",
    "PatchSetup",
    "PositionMetric",
    "Target",
    "check_compatible",
    "embedding_noise_hook",
    "head_targets",
    "log_prob",
    "logit_diff",
    "patch_attn_layers",
    "patch_block_outputs",
    "patch_heads",
    "patch_mlp",
    "patch_residual",
    "resid_targets",
    "run_patches",
    "setup_runs",
]


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

    return PositionMetric(metric, position, "logit_diff")


def log_prob(
    position: int | Sequence[int] | Tensor,
    token: int | Sequence[int] | Tensor,
    reduce: Literal["mean", "none"] = "mean",
) -> Callable[[Tensor], Tensor]:
    """Metric: log-probability of ``token`` at ``position`` (softmax over the vocabulary)."""

    def metric(logits: Tensor) -> Tensor:
        lp = logits.log_softmax(-1)
        return logit_diff(position, token, None, reduce)(lp)

    return PositionMetric(metric, position, "log_prob")


# ---------------------------------------------------------------------- validation
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
        corrupt_hooks: Hooks that corrupt the corrupted run (e.g. noise on ``embed.hook_embed``); deterministic.
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
    poss = select_positions(n_pos, positions)
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
    all_labels = position_labels(setup, stream, n_pos)
    return finish_result(
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
        labels["pos"] = position_labels(setup, pos_stream, n_pos)
    return finish_result(
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
    lays = select_layers(spec.n_layers, layers)
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
    return finish_result(
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
    hook: str = "embed.hook_embed",
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
