"""Output heads: BERT masked-LM head, tanh pooler, next-sentence classifier."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn

from encoderlens.components.embed import Embed
from encoderlens.components.mlp import get_activation
from encoderlens.components.norm import make_norm
from encoderlens.config import MLMHeadConfig
from encoderlens.hooks import HookPoint


class MLMHead(nn.Module):
    """``logits = LN(act(x @ W_transform + b_transform)) @ W_U + b_U``.

    When tied, ``W_U`` is the transpose of the token embedding (one parameter, not a copy).
    Hook: ``hook_transformed`` (the normalised transform, what ``W_U`` reads).
    """

    def __init__(self, d_model: int, d_vocab: int, cfg: MLMHeadConfig, embed: Embed) -> None:
        super().__init__()
        self.cfg = cfg
        self.act = get_activation(cfg.act_fn)
        self.W_transform = nn.Parameter(torch.empty(d_model, d_model))
        self.b_transform = nn.Parameter(torch.zeros(d_model))
        self.ln = make_norm(d_model, cfg.norm)
        # a list keeps the shared embedding from being registered twice as a submodule
        self._embed = [embed]
        self.W_U_untied = None if cfg.tied else nn.Parameter(torch.empty(d_model, d_vocab))
        self.b_U = nn.Parameter(torch.zeros(d_vocab))
        self.hook_transformed = HookPoint()

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        return self._embed[0].W_E.T if self.W_U_untied is None else self.W_U_untied

    def transform(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        return self.hook_transformed(self.ln(self.act(x @ self.W_transform + self.b_transform)))

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]:
        return self.transform(x) @ self.W_U + self.b_U


class Pooler(nn.Module):
    """``pooled = tanh(x[:, 0] @ W_pool + b_pool)``. Hook: ``hook_pooled``."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.W_pool = nn.Parameter(torch.empty(d_model, d_model))
        self.b_pool = nn.Parameter(torch.zeros(d_model))
        self.hook_pooled = HookPoint()

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch d_model"]:
        return self.hook_pooled(torch.tanh(x[:, 0] @ self.W_pool + self.b_pool))


class NSPHead(nn.Module):
    """Next-sentence prediction: ``pooled @ W + b`` -> logits ``(is_next, is_random)``."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.empty(d_model, 2))
        self.b = nn.Parameter(torch.zeros(2))

    def forward(self, pooled: Float[Tensor, "batch d_model"]) -> Float[Tensor, "batch 2"]:
        return pooled @ self.W + self.b
