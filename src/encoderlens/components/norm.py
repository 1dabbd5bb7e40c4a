"""Normalisation layers with hook points on the scale and the normalised activation."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn

from encoderlens.config import NormConfig
from encoderlens.hooks import HookPoint


class LayerNorm(nn.Module):
    """LayerNorm: ``(x - mean) / sqrt(var + eps) * w + b``.

    Hooks: ``hook_scale`` (``sqrt(var + eps)``, shape ``(..., 1)``) and ``hook_normalized``
    (before the affine ``w``/``b``).
    """

    def __init__(self, d_model: int, cfg: NormConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.eps = cfg.eps
        self.w = nn.Parameter(torch.ones(d_model))
        self.b = nn.Parameter(torch.zeros(d_model)) if cfg.bias else None
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()

    def forward(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        if not (self.hook_scale.has_hooks() or self.hook_normalized.has_hooks()):
            return nn.functional.layer_norm(x, (x.shape[-1],), self.w, self.b, self.eps)
        if not (self.hook_scale.may_edit() or self.hook_normalized.may_edit()):
            # only read (cached): the fused kernel gives the normalised stream and the statistics in one
            # pass; the affine in one addcmul
            normalized, _, rstd = torch.native_layer_norm(x, (x.shape[-1],), None, None, self.eps)
            self.hook_scale(rstd.reciprocal())
            normalized = self.hook_normalized(normalized)
            return torch.addcmul(self.b, normalized, self.w) if self.b is not None else normalized * self.w
        # a hook may edit the scale or the normalised stream: step by step, so the edit flows on. Two-pass
        # statistics (torch.var_mean is many times slower on CPU); the affine in one addcmul
        x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        x = self.hook_normalized(x / scale)
        return torch.addcmul(self.b, x, self.w) if self.b is not None else x * self.w

    def jvp(self, x: Float[Tensor, "... d_model"], v: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        """The norm's Jacobian at ``x`` applied to ``v`` (``x`` broadcasts against ``v``)::

            J v = w * (v_c - x_hat * mean(x_hat * v_c)) / scale,   v_c = v - mean(v)

        with ``x_hat`` and ``scale`` of ``x`` as in :meth:`forward` (centring and the change of the scale).
        """
        xc = x - x.mean(-1, keepdim=True)
        scale = (xc.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()
        x_hat = xc / scale
        vc = v - v.mean(-1, keepdim=True)
        return self.w * (vc - x_hat * (x_hat * vc).mean(-1, keepdim=True)) / scale


class RMSNorm(nn.Module):
    """T5-style RMSNorm: ``x / sqrt(mean(x^2) + eps) * w`` (no mean subtraction, no bias).

    The variance is computed in fp32 as HF does, then cast back to the weight dtype.
    """

    def __init__(self, d_model: int, cfg: NormConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.eps = cfg.eps
        self.w = nn.Parameter(torch.ones(d_model))
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()

    def forward(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        scale = self.hook_scale((x.float().pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        x = self.hook_normalized((x.float() / scale).to(self.w.dtype))
        return x * self.w

    def jvp(self, x: Float[Tensor, "... d_model"], v: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        """The norm's Jacobian at ``x`` applied to ``v``: ``w * (v - x_hat * mean(x_hat * v)) / scale``."""
        scale = (x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()
        x_hat = x / scale
        return self.w * (v - x_hat * (x_hat * v).mean(-1, keepdim=True)) / scale


def make_norm(d_model: int, cfg: NormConfig) -> LayerNorm | RMSNorm:
    """Build the norm a :class:`NormConfig` describes."""
    if cfg.kind == "layernorm":
        return LayerNorm(d_model, cfg)
    if cfg.kind == "rmsnorm":
        return RMSNorm(d_model, cfg)
    raise ValueError(f"unknown norm kind {cfg.kind!r}; expected 'layernorm' or 'rmsnorm'")
