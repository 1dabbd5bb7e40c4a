"""TransformerLens's flat ``HookedTransformerConfig``, mapped onto our typed :class:`EncoderConfig`.

Only for building a randomly initialised ``HookedEncoder(cfg)`` the TransformerLens way; checkpoints
come with their own config through ``from_pretrained``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from encoderlens.config.attention import AttentionConfig, NormConfig
from encoderlens.config.heads import MLMHeadConfig
from encoderlens.config.stack import MLPConfig, StackConfig
from encoderlens.config.text import EmbeddingConfig, EncoderConfig


@dataclass
class HookedTransformerConfig:
    """The fields of TransformerLens's ``HookedTransformerConfig`` a ``HookedEncoder`` (BERT layout) uses.

    ``HookedEncoder(HookedTransformerConfig(d_model=12, d_head=4, n_layers=3, n_ctx=5, d_vocab=22))``
    builds a post-LN BERT with an MLM head (untied ``W_U``), a pooler and an NSP head, as TransformerLens
    does. Settings a BERT cannot have raise a ValueError from :meth:`to_encoder_config`.

    Differs from TransformerLens: only these fields exist (TL's config has ~90, most for decoder-only models).
    """

    d_model: int
    d_head: int
    n_layers: int
    n_ctx: int
    d_vocab: int = -1
    n_heads: int = -1
    d_mlp: int | None = None
    act_fn: str = "gelu"
    eps: float = 1e-5
    d_vocab_out: int = -1
    normalization_type: str | None = "LN"
    attention_dir: str = "bidirectional"
    positional_embedding_type: str = "standard"
    n_token_types: int = 2
    device: str | None = None
    dtype: torch.dtype = torch.float32
    n_devices: int = 1
    tokenizer_name: str | None = None
    original_architecture: str | None = None
    seed: int | None = None

    def to_encoder_config(self) -> EncoderConfig:
        """The same model as our :class:`EncoderConfig`.

        Raises:
            ValueError: A setting a BERT-layout encoder cannot have (naming it and the allowed values).
        """
        if self.d_vocab <= 0:
            raise ValueError(f"d_vocab must be given (> 0) to build a HookedEncoder, got {self.d_vocab}")
        if self.d_vocab_out not in (-1, self.d_vocab):
            raise ValueError(f"d_vocab_out must equal d_vocab for an MLM head, got {self.d_vocab_out}")
        if self.normalization_type != "LN":
            raise ValueError(
                f"a HookedEncoder (BERT) uses LayerNorm: normalization_type must be 'LN', got {self.normalization_type!r}"
            )
        if self.attention_dir != "bidirectional":
            raise ValueError(
                f"a HookedEncoder is bidirectional: attention_dir must be 'bidirectional', got {self.attention_dir!r}"
            )
        if self.positional_embedding_type != "standard":
            raise ValueError(
                f"a HookedEncoder has learned positions: positional_embedding_type must be 'standard', "
                f"got {self.positional_embedding_type!r}"
            )
        if self.n_devices != 1:
            raise ValueError(f"models here live on one device: n_devices must be 1, got {self.n_devices}")
        n_heads = self.n_heads if self.n_heads > 0 else self.d_model // self.d_head
        if n_heads * self.d_head != self.d_model:
            raise ValueError(f"n_heads * d_head must equal d_model, got {n_heads} * {self.d_head} != {self.d_model}")
        norm = NormConfig(kind="layernorm", eps=self.eps)
        stack = StackConfig(
            n_layers=self.n_layers,
            d_model=self.d_model,
            attn=AttentionConfig(n_heads=n_heads, d_head=self.d_head),
            mlp=MLPConfig(d_mlp=self.d_mlp if self.d_mlp is not None else 4 * self.d_model, act_fn=self.act_fn),
            norm=norm,
            norm_position="post",
        )
        embed = EmbeddingConfig(d_vocab=self.d_vocab, n_ctx=self.n_ctx, n_token_types=self.n_token_types, norm=norm)
        return EncoderConfig(
            architecture=self.original_architecture or "BertForPreTraining",
            model_type="bert",
            embed=embed,
            stack=stack,
            mlm_head=MLMHeadConfig(act_fn=self.act_fn, norm=norm, tied=False),
            pooler=True,
            nsp_head=True,
            device=self.device,
        )

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> HookedTransformerConfig:
        """Build from a dict (``HookedEncoder({"d_model": ...})``), naming unknown keys."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(
                f"HookedTransformerConfig fields {unknown} are not supported here; supported: {sorted(known)}"
            )
        return cls(**fields)
