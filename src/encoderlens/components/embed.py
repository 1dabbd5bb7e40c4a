"""Token, learned-position and token-type embeddings."""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from encoderlens.config import EmbeddingConfig


class Embed(nn.Module):
    """Token embedding ``W_E: (d_vocab, d_model)``, times ``cfg.scale``."""

    def __init__(self, d_model: int, cfg: EmbeddingConfig) -> None:
        super().__init__()
        self.scale = cfg.scale
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, d_model))

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        e = nn.functional.embedding(tokens, self.W_E)
        return e * self.scale if self.scale != 1.0 else e


class PosEmbed(nn.Module):
    """Learned absolute positions ``W_pos: (n_ctx, d_model)``; row ``offset + i`` is used for position ``i``."""

    def __init__(self, d_model: int, cfg: EmbeddingConfig) -> None:
        super().__init__()
        self.offset = cfg.position_offset
        self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, d_model))

    @property
    def max_positions(self) -> int:
        return self.W_pos.shape[0] - self.offset

    def forward(self, position_ids: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        return nn.functional.embedding(position_ids + self.offset, self.W_pos)


class TokenTypeEmbed(nn.Module):
    """Segment embedding ``W_token_type: (n_token_types, d_model)``."""

    def __init__(self, d_model: int, cfg: EmbeddingConfig) -> None:
        super().__init__()
        self.W_token_type = nn.Parameter(torch.empty(cfg.n_token_types, d_model))

    def forward(self, token_type_ids: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        return nn.functional.embedding(token_type_ids, self.W_token_type)
