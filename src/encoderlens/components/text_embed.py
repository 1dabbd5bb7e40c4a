"""TextEmbed: a text encoder's whole embedding (TransformerLens's ``BertEmbed``): token + position + segment, norm."""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from encoderlens.components.embed import Embed, EmbedProjection, PosEmbed, TokenTypeEmbed, position_ids
from encoderlens.components.norm import make_norm
from encoderlens.config import EmbeddingConfig
from encoderlens.hooks import HookPoint


class TextEmbed(nn.Module):
    """``proj(LN(W_E[tokens] + W_pos[positions] + W_token_type[segments]))``, each part optional.

    Modules: ``embed`` (``W_E``), ``pos_embed`` (``W_pos``), ``token_type_embed``, ``ln`` (the embedding
    norm), ``proj`` (factorised embeddings: ALBERT, ELECTRA), as TransformerLens's ``BertEmbed`` names
    them. Hooks: ``hook_embed``, ``hook_pos_embed``, ``hook_token_type_embed`` (the summands) and
    ``hook_embed_pre_proj`` (the normalised sum before ``proj``, factorised embeddings only).

    Calling it gives what HF's ``embeddings`` module returns (the input of block 0).
    """

    def __init__(self, d_embed: int, d_model: int, cfg: EmbeddingConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = Embed(d_embed, cfg)
        self.hook_embed = HookPoint()
        self.pos_embed = PosEmbed(d_embed, cfg) if cfg.n_ctx else None
        self.hook_pos_embed = HookPoint() if self.pos_embed is not None else None
        self.token_type_embed = TokenTypeEmbed(d_embed, cfg) if cfg.n_token_types else None
        self.hook_token_type_embed = HookPoint() if self.token_type_embed is not None else None
        self.ln = make_norm(d_embed, cfg.norm) if cfg.norm is not None else None
        self.proj = EmbedProjection(d_embed, d_model) if cfg.project else None
        self.hook_embed_pre_proj = HookPoint() if self.proj is not None else None

    @property
    def W_E(self) -> Float[Tensor, "d_vocab d_embed"]:
        return self.embed.W_E

    @property
    def max_positions(self) -> int | None:
        return self.pos_embed.max_positions if self.pos_embed is not None else None

    def forward(
        self,
        tokens: Int[Tensor, "batch pos"],
        token_type_ids: Int[Tensor, "batch pos"] | None = None,
        attention_mask: Int[Tensor, "batch pos"] | None = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        """The embedding of ``tokens`` (segment ids default to 0; the mask zeroes padding where the model does)."""
        x = self.hook_embed(self.embed(tokens))
        if self.pos_embed is not None:
            assert self.hook_pos_embed is not None
            x = x + self.hook_pos_embed(self.pos_embed(position_ids(tokens, self.cfg)))
        if self.token_type_embed is not None:
            assert self.hook_token_type_embed is not None
            tt = token_type_ids if token_type_ids is not None else torch.zeros_like(tokens)
            x = x + self.hook_token_type_embed(self.token_type_embed(tt))
        elif token_type_ids is not None:
            raise ValueError("this model has no token-type (segment) embeddings; do not pass token_type_ids")
        if self.ln is not None:
            x = self.ln(x)
        if self.proj is not None:
            assert self.hook_embed_pre_proj is not None
            x = self.proj(self.hook_embed_pre_proj(x))
        if self.cfg.zero_padding and attention_mask is not None:
            x = x * attention_mask[..., None].to(x.dtype)
        return x


#: Converter weight names (the flat layout) -> names inside a model whose ``embed`` is a :class:`TextEmbed`.
FLAT_EMBED_NAMES: dict[str, str] = {
    "embed.": "embed.embed.",
    "pos_embed.": "embed.pos_embed.",
    "token_type_embed.": "embed.token_type_embed.",
    "embed_ln.": "embed.ln.",
    "embed_proj.": "embed.proj.",
}


def nest_embed_weights(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename converter weights (``embed.W_E``, ``pos_embed.W_pos``, ``embed_ln.w``...) into :class:`TextEmbed`'s."""
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        for flat, nested in FLAT_EMBED_NAMES.items():
            if key.startswith(flat) and key.count(".") == 1:
                key = nested + key[len(flat) :]
                break
        out[key] = value
    return out
