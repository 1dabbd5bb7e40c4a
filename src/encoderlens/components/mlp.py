"""Feed-forward blocks: plain (``act(x W_in + b_in) W_out``) and gated (T5 v1.1 / Flan-T5)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from encoderlens.config import MLPConfig
from encoderlens.hooks import HookPoint


def _gelu_new(x: Tensor) -> Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def _gelu_fast(x: Tensor) -> Tensor:
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu,
    "gelu_new": _gelu_new,
    "gelu_fast": _gelu_fast,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
}


# in-place variants (same kernels, the result written over the input), for buffers nothing else holds
_INPLACE_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": torch.ops.aten.gelu_,
    "relu": torch.relu_,
    "silu": lambda x: F.silu(x, inplace=True),
    "swish": lambda x: F.silu(x, inplace=True),
}


def get_inplace_activation(name: str) -> Callable[[Tensor], Tensor] | None:
    """The in-place form of the activation called ``name`` (HF naming), or None where there is none.

    Only for a tensor that nothing else reads (no hook saw it, no autograd graph needs it).
    """
    get_activation(name)  # the same error for an unknown name
    return _INPLACE_ACTIVATIONS.get(name)


def apply_activation(
    x: Tensor, act: Callable[[Tensor], Tensor], act_inplace: Callable[[Tensor], Tensor] | None, overwrite_ok: bool
) -> Tensor:
    """``act(x)``, written over ``x`` when the caller allows it (nothing else holds ``x``), an in-place
    form exists and no autograd graph needs ``x``."""
    if overwrite_ok and act_inplace is not None and not (torch.is_grad_enabled() and x.requires_grad):
        return act_inplace(x)
    return act(x)


def get_activation(name: str) -> Callable[[Tensor], Tensor]:
    """Return the activation function called ``name`` (HF naming)."""
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(_ACTIVATIONS)}") from None


class MLP(nn.Module):
    """Position-wise MLP.

    Plain: ``post = act(x @ W_in + b_in)``. Gated: ``post = act(x @ W_gate) * (x @ W_in)``.
    Output: ``post @ W_out + b_out``.

    Hooks: ``hook_pre`` (input of the activation; the gate pre-activation when gated),
    ``hook_pre_linear`` (gated only: the linear branch), ``hook_post`` (what ``W_out`` reads).
    """

    def __init__(self, d_model: int, cfg: MLPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.act = get_activation(cfg.act_fn)
        self.act_inplace = get_inplace_activation(cfg.act_fn)
        self.W_in = nn.Parameter(torch.empty(d_model, cfg.d_mlp))
        self.W_out = nn.Parameter(torch.empty(cfg.d_mlp, d_model))
        self.W_gate = nn.Parameter(torch.empty(d_model, cfg.d_mlp)) if cfg.gated else None
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp)) if cfg.bias else None
        self.b_out = nn.Parameter(torch.zeros(d_model)) if cfg.bias else None
        self.hook_pre = HookPoint()
        # only gated MLPs have a linear branch; no dead hook point elsewhere
        self.hook_pre_linear = HookPoint() if cfg.gated else None
        self.hook_post = HookPoint()

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        # F.linear on W.t() is one matmul with the bias fused in, no weight copy
        lin = F.linear(x, self.W_in.t(), self.b_in)
        if self.W_gate is not None:
            pre = self.hook_pre(F.linear(x, self.W_gate.t()))
            assert self.hook_pre_linear is not None
            post = self.hook_post(self.act(pre) * self.hook_pre_linear(lin))
        else:
            # the fresh pre-activation may be overwritten unless a hook on hook_pre holds it
            unhooked = not self.hook_pre.has_hooks()
            post = self.hook_post(apply_activation(self.hook_pre(lin), self.act, self.act_inplace, unhooked))
        if post.dtype != self.W_out.dtype:  # W_out kept in float32 (cfg.out_float32_in_fp16), as HF's T5
            post = post.to(self.W_out.dtype)
        return F.linear(post, self.W_out.t(), self.b_out)

    def keep_out_in_float32(self) -> None:
        """Put ``W_out`` (and ``b_out``) in float32 if ``cfg.out_float32_in_fp16`` and the model is float16."""
        if self.cfg.out_float32_in_fp16 and self.W_out.dtype == torch.float16:
            self.W_out.data = self.W_out.data.float()
            if self.b_out is not None:
                self.b_out.data = self.b_out.data.float()
