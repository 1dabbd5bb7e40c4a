"""Gradients of a target at hook points, and integrated gradients with batched interpolations.

The engine behind :mod:`encoderlens.analysis.input_attribution` (and EAP-IG in
:mod:`encoderlens.analysis.circuits`). A *target* maps the model output of a prepared batch to one value
per item; gradients are taken with respect to activations at named hook points, which may be replaced by
given values (the interpolations of integrated gradients).

Integrated gradients (Sundararajan et al., 2017) of activation ``x`` with baseline ``x'``::

    IG_i = (x_i - x'_i) * integral_0^1 d f(x' + a (x - x')) / d x_i  da
         ~= (x_i - x'_i) * sum_k w_k * d f(x' + a_k (x - x')) / d x_i

with the quadrature rules of captum (``riemann_left``, ``riemann_right``, ``riemann_middle``,
``riemann_trapezoid``, ``gausslegendre``: the same ``a_k`` and ``w_k``). Completeness: the attributions
sum to ``f(x) - f(x')`` up to the quadrature error, reported as the *convergence delta*.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from encoderlens.models.base import HookedModel
from encoderlens.models.contract import Prepared

TargetFn = Callable[[Any, Prepared], Tensor]
"""``target(output, batch) -> (batch,)``: the value attributed, one per item of ``batch``."""

RULES = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")


def quadrature(rule: str, n_steps: int) -> tuple[list[float], list[float]]:
    """``(alphas, weights)`` of an integration rule on [0, 1] (captum's ``approximation_parameters``).

    Example:
        >>> quadrature("riemann_trapezoid", 3)
        ([0.0, 0.5, 1.0], [0.1666..., 0.333..., 0.1666...])
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if not isinstance(n_steps, int) or n_steps < (1 if rule == "gausslegendre" else 2):
        raise ValueError(f"n_steps must be an int >= 2 (>= 1 for gausslegendre), got {n_steps!r}")
    n = n_steps
    if rule == "gausslegendre":
        nodes, w = np.polynomial.legendre.leggauss(n)
        return (0.5 * (nodes + 1)).tolist(), (0.5 * w).tolist()
    weights = [1 / n] * n
    if rule == "riemann_trapezoid":
        weights[0] /= 2
        weights[-1] /= 2
        alphas = torch.linspace(0, 1, n).tolist()
    elif rule == "riemann_left":
        alphas = torch.linspace(0, 1 - 1 / n, n).tolist()
    elif rule == "riemann_middle":
        alphas = torch.linspace(1 / (2 * n), 1 - 1 / (2 * n), n).tolist()
    else:
        alphas = torch.linspace(1 / n, 1, n).tolist()
    return alphas, weights


def target_values(value: Any, batch_size: int, what: str = "the target") -> Tensor:
    """Check that a target returned one differentiable value per item."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{what} must return a tensor of shape ({batch_size},), got {type(value).__name__}")
    if value.shape != (batch_size,):
        raise ValueError(
            f"{what} must return one value per batch item, shape ({batch_size},); got {tuple(value.shape)}. "
            "Reduce over positions / classes inside the target, not over items"
        )
    return value


def activations(
    model: HookedModel, batch: Prepared, hooks: Sequence[str], return_type: str | None = None
) -> tuple[Any, dict[str, Tensor]]:
    """One no-grad run: ``(output, {hook: activation})``."""
    names = list(dict.fromkeys(hooks))
    for n in names:
        model.check_hook_name(n)
    with torch.no_grad():
        out, cache = model.run_prepared_with_cache(batch, names_filter=set(names).__contains__, return_type=return_type)
    return out, {n: cache[n] for n in names}


def grads_at(
    model: HookedModel,
    batch: Prepared,
    hooks: Sequence[str],
    target: TargetFn,
    *,
    values: dict[str, Tensor] | None = None,
    return_type: str | None = None,
    extra_hooks: Sequence[tuple[Any, Callable[..., Any]]] = (),
) -> tuple[dict[str, Tensor], Tensor]:
    """``d target / d activation`` at ``hooks`` (one forward, one backward).

    Args:
        values: Replace the activation at these hooks by these tensors (same shape) before taking gradients.
        extra_hooks: Further forward hooks for the run (applied as given).

    Returns:
        ``(grads, target values)``; activations the target does not depend on get zero gradients.
    """
    acts: dict[str, Tensor] = {}
    vals = values or {}

    def keep(x: Tensor, hook: Any) -> Tensor:
        new = vals.get(hook.name)
        if new is not None:
            if new.shape != x.shape:
                raise ValueError(
                    f"replacement for {hook.name} has shape {tuple(new.shape)}, the run's {tuple(x.shape)}"
                )
            x = new.to(x.device, x.dtype).detach().requires_grad_(True)
        elif not x.requires_grad:
            # a leaf when nothing upstream needs a gradient (parameters frozen, raw waveforms)
            x = x.detach().requires_grad_(True)
        # kept in the graph otherwise: the gradient at a hook is the total one, including through later hooks
        acts[hook.name] = x
        return x

    names = list(dict.fromkeys(hooks))
    with torch.enable_grad():
        out = model.run_prepared(batch, return_type, fwd_hooks=[*extra_hooks, *((n, keep) for n in names)])
        value = target_values(target(out, batch), batch.batch_size)
        if not value.requires_grad:
            raise TypeError(
                "the target does not depend on the attributed activations through differentiable operations; "
                "avoid .item(), argmax or torch.no_grad inside the target"
            )
        missing = [n for n in names if n not in acts]
        if missing:
            raise RuntimeError(f"hooks never fired during the forward: {missing[:5]}")
        grads = torch.autograd.grad(value.sum(), [acts[n] for n in names], allow_unused=True)
    out_grads = {n: (g if g is not None else torch.zeros_like(acts[n])).detach() for n, g in zip(names, grads)}
    return out_grads, value.detach()


def integrated_grads(
    model: HookedModel,
    batch: Prepared,
    inputs: dict[str, Tensor],
    baselines: dict[str, Tensor],
    target: TargetFn,
    *,
    n_steps: int = 64,
    rule: str = "gausslegendre",
    chunk_size: int = 16,
    return_type: str | None = None,
) -> dict[str, Tensor]:
    """``sum_k w_k * grad f(baseline + a_k (input - baseline))`` at every hook of ``inputs`` (all interpolated
    together), the interpolations batched ``chunk_size`` at a time.

    Returns:
        Per hook, the weighted gradient sum (multiply by ``input - baseline`` for the attributions).
    """
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    alphas, weights = quadrature(rule, n_steps)
    b = batch.batch_size
    total = {h: torch.zeros_like(x) for h, x in inputs.items()}
    for i in range(0, len(alphas), chunk_size):
        a = alphas[i : i + chunk_size]
        w = weights[i : i + chunk_size]
        k = len(a)
        vals = {}
        for h, x in inputs.items():
            base = baselines[h].to(x.device, x.dtype)
            al = torch.tensor(a, dtype=x.dtype, device=x.device).view(k, *([1] * x.ndim))
            vals[h] = (base + al * (x - base)).reshape(k * b, *x.shape[1:])
        grads, _ = grads_at(model, batch.repeat(k), list(inputs), target, values=vals, return_type=return_type)
        wt = torch.tensor(w, dtype=torch.float64)
        for h, g in grads.items():
            g = g.reshape(k, b, *g.shape[1:]).to(torch.float64)
            total[h] = total[h] + (wt.view(k, *([1] * (g.ndim - 1))).to(g.device) * g).sum(0).to(total[h].dtype)
    return total
