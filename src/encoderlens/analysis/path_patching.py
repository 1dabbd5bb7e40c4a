"""Path patching (Wang et al., 2022): the effect of a sender on the metric through chosen receivers only.

Three runs per sender (the first two shared):

1. the clean and corrupted runs, caching every attention head's ``hook_z`` (self- and cross-attention,
   every stream) and every MLP output;
2. a clean run where every head and MLP is *frozen* at its clean value, except the sender, which takes
   its corrupted value; the receivers' activations are recorded (they see the sender's change only
   through the direct residual paths, norms recomputed);
3. a clean run with only the receivers' activations replaced by those of run 2; the metric is read.

Receivers are any hook points computed upstream of the frozen outputs: a head's ``hook_q`` / ``hook_k`` /
``hook_v`` (``Target(hook, (slice(None), head))``), a residual hook, an MLP's ``hook_pre``. Encoder ->
cross-attention -> decoder paths: an encoder head as sender, ``decoder.blocks.{i}.cross_attn.hook_k`` /
``hook_v`` as receivers. Works on every family and norm position.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from encoderlens.analysis.patching_core import Direction, Metric, Target, setup_runs
from encoderlens.analysis.results import Labelled
from encoderlens.hooks import get_act_name
from encoderlens.models.base import HookedModel
from encoderlens.models.contract import StreamName


def frozen_hooks(model: HookedModel) -> list[str]:
    """Every head output (``hook_z`` of self- and cross-attention) and MLP output of every stream."""
    names = []
    for s in model.streams:
        spec = model.stream_spec(s)
        for i in range(spec.n_layers):
            names.append(spec.prefix + get_act_name("z", i))
            if spec.has_cross_attention:
                names.append(spec.prefix + get_act_name("z", i, "cross_attn"))
            names.append(spec.prefix + get_act_name("mlp_out", i))
    return names


def _as_target(t: str | Target) -> Target:
    return Target(t) if isinstance(t, str) else t


def head(model: HookedModel, layer: int, head_index: int, stream: StreamName = None, attn: str = "attn") -> Target:
    """The ``Target`` of one head's output (``hook_z``), for senders."""
    spec = model.stream_spec(model.resolve_stream(stream))
    return Target(spec.prefix + get_act_name("z", layer, attn), (slice(None), head_index))


def _set(x: Tensor, t: Target, src: Tensor) -> Tensor:
    x = x.clone()
    idx = (slice(None), *t.index)
    x[idx] = src.to(x.device, x.dtype)[idx]
    return x


def path_patch(
    model: HookedModel,
    clean: Any,
    corrupt: Any,
    metric: Metric,
    senders: Sequence[str | Target],
    receivers: Sequence[str | Target],
    *,
    direction: Direction = "noise",
    normalize: bool = True,
    return_type: str | None = None,
    input_kwargs: dict[str, Any] | None = None,
) -> Labelled:
    """The metric when each sender (separately) reaches the metric only through ``receivers``.

    Args:
        senders: Head outputs (``head(model, layer, h)``) or MLP outputs (``"blocks.1.hook_mlp_out"``); each
            must be one of :func:`frozen_hooks` (or a slice of one).
        receivers: Hook names or ``Target`` slices whose activations carry the sender's change.
        direction: ``"noise"`` (default, Wang et al.): clean run, corrupted sender. ``"denoise"``: the reverse.
        normalize: ``(m - m_base) / (m_source - m_base)``; raw values in ``meta``.

    Returns:
        ``(sender,)`` values (plus ``item`` for a per-item metric).

    Example:
        >>> s = [head(model, 0, h, stream="encoder") for h in range(4)]
        >>> r = [f"decoder.blocks.{i}.cross_attn.hook_{x}" for i in range(2) for x in "kv"]
        >>> path_patch(model, src, corrupt_src, metric, s, r, input_kwargs={"decoder_input": tgt})
    """
    frozen = frozen_hooks(model)
    send = [_as_target(s) for s in senders]
    recv = [_as_target(r) for r in receivers]
    for s in send:
        if s.hook not in frozen:
            raise ValueError(f"sender {s.hook!r} must be a head output (hook_z) or an MLP output; e.g. {frozen[:2]}")
    for r in recv:
        model.check_hook_name(r.hook)
        if r.hook in frozen:
            raise ValueError(f"receiver {r.hook!r} is frozen in path patching; use q/k/v, resid or mlp.hook_pre hooks")
    rnames = sorted({r.hook for r in recv})
    setup = setup_runs(
        model,
        clean,
        corrupt,
        metric,
        frozen + rnames,
        direction=direction,
        return_type=return_type,
        input_kwargs=input_kwargs,
    )
    base, base_cache, src_cache = setup.base, setup.base_cache, setup.source_cache
    values = []
    with torch.no_grad():
        for s in send:
            got: dict[str, Tensor] = {}

            def freeze(x: Tensor, hook: Any, s: Target = s) -> Tensor:
                out = base_cache[hook.name].to(x.device, x.dtype)
                return _set(out, s, src_cache[hook.name]) if hook.name == s.hook else out

            def grab(x: Tensor, hook: Any, got: dict[str, Tensor] = got) -> None:
                got[hook.name] = x.detach().clone()

            model.run_prepared(
                base, return_type, fwd_hooks=[*((n, freeze) for n in frozen), *((n, grab) for n in rnames)]
            )
            hooks = []
            for r in recv:

                def patch(x: Tensor, hook: Any, r: Target = r, got: dict[str, Tensor] = got) -> Tensor:
                    return _set(x, r, got[r.hook])

                hooks.append((r.hook, patch))
            out = model.run_prepared(base, return_type, fwd_hooks=hooks)
            values.append(torch.as_tensor(metric(out)).detach().float().cpu())
    vals = torch.stack(values)
    if normalize:
        denom = setup.metric_source - setup.metric_base
        if bool((denom.abs() < 1e-8).any()):
            raise ValueError("the metric is the same on the clean and corrupted runs; pass normalize=False")
        vals = (vals - setup.metric_base) / denom
    labels = {"sender": [f"{s.hook}{list(s.index) if s.index else ''}" for s in send]}
    axes: tuple[str, ...] = ("sender",)
    if vals.ndim == 2:
        axes = ("sender", "item")
    meta = {
        "metric_clean": setup.metric_clean.tolist(),
        "metric_corrupt": setup.metric_corrupt.tolist(),
        "direction": direction,
        "normalized": normalize,
        "receivers": [f"{r.hook}{list(r.index)}" for r in recv],
    }
    return Labelled(vals, axes, labels, "path patching", meta)


def path_patch_heads(
    model: HookedModel,
    clean: Any,
    corrupt: Any,
    metric: Metric,
    receivers: Sequence[str | Target],
    *,
    stream: StreamName = None,
    attn: str = "attn",
    layers: Sequence[int] | None = None,
    **kwargs: Any,
) -> Labelled:
    """:func:`path_patch` with every head of ``stream`` as a sender: ``(layer, head)``."""
    stream = model.resolve_stream(stream)
    spec = model.stream_spec(stream)
    lays = list(range(spec.n_layers)) if layers is None else list(layers)
    send = [head(model, lay, h, stream, attn) for lay in lays for h in range(spec.n_heads)]
    res = path_patch(model, clean, corrupt, metric, send, receivers, **kwargs)
    vals = res.values.reshape(len(lays), spec.n_heads, *res.values.shape[1:])
    axes = ("layer", "head", *res.axes[1:])
    labels = {"layer": [f"L{i}" for i in lays], "head": [f"H{h}" for h in range(spec.n_heads)]}
    return Labelled(vals, axes, labels, f"path patching: {spec.prefix}{attn} heads -> receivers", res.meta)
