"""Token, learned-position and token-type embeddings, position ids, and the factorised-embedding projection."""

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


def position_ids(tokens: Int[Tensor, "batch pos"], cfg: EmbeddingConfig) -> Int[Tensor, "batch pos"]:
    """Position of each token (before ``cfg.position_offset``).

    Default: ``0, 1, 2, ...`` along the sequence. With ``cfg.positions_skip_padding`` (RoBERTa / XLM-R)
    only tokens ``!= pad_token_id`` are counted and padding tokens get ``-1``, so that after the offset
    they read the padding row, exactly as HF's ``create_position_ids_from_input_ids``.
    """
    if not cfg.positions_skip_padding:
        return torch.arange(tokens.shape[1], device=tokens.device)[None].expand_as(tokens)
    assert cfg.pad_token_id is not None  # EmbeddingConfig checks this
    not_pad = tokens.ne(cfg.pad_token_id).long()
    return torch.cumsum(not_pad, dim=1) * not_pad - 1


class EmbedProjection(nn.Module):
    """Linear map from the embedding width to the residual stream (ALBERT, ELECTRA): ``x @ W + b``."""

    def __init__(self, d_embed: int, d_model: int) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.empty(d_embed, d_model))
        self.b = nn.Parameter(torch.zeros(d_model))

    def forward(self, x: Float[Tensor, "batch pos d_embed"]) -> Float[Tensor, "batch pos d_model"]:
        return x @ self.W + self.b
