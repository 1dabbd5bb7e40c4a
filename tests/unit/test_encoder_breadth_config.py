"""Config validation and position ids for the encoder-breadth features (no HF models needed)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from encoderlens.components.embed import position_ids
from encoderlens.config import (
    AttentionConfig,
    ClassifierHeadConfig,
    EmbeddingConfig,
    EncoderConfig,
    MLPConfig,
    NormConfig,
    SentencePoolingConfig,
    StackConfig,
)


def encoder_config(**kw) -> EncoderConfig:
    stack = StackConfig(
        n_layers=4,
        d_model=12,
        attn=AttentionConfig(n_heads=3, d_head=4),
        mlp=MLPConfig(d_mlp=7, act_fn="gelu"),
        norm=NormConfig(),
        norm_position="post",
    )
    base = dict(architecture="X", model_type="x", embed=EmbeddingConfig(d_vocab=9, n_ctx=8), stack=stack)
    base.update(kw)
    return EncoderConfig(**base)


def test_positions_skip_padding_matches_fairseq_rule():
    cfg = EmbeddingConfig(d_vocab=9, n_ctx=12, position_offset=2, pad_token_id=1, positions_skip_padding=True)
    tokens = torch.tensor([[0, 5, 6, 2, 1, 1], [1, 1, 0, 5, 2, 1], [0, 5, 1, 6, 2, 1]])
    # HF: cumsum(not_pad) * not_pad + pad_id; ours + offset must give the same rows
    not_pad = tokens.ne(1).int()
    hf = torch.cumsum(not_pad, dim=1) * not_pad + 1
    assert torch.equal(position_ids(tokens, cfg) + cfg.position_offset, hf)
    plain = EmbeddingConfig(d_vocab=9, n_ctx=12)
    assert torch.equal(position_ids(tokens, plain)[1], torch.arange(6))


def test_embedding_config_checks():
    with pytest.raises(ValueError, match="pad_token_id"):
        EmbeddingConfig(d_vocab=9, n_ctx=8, position_offset=2, positions_skip_padding=True)
    with pytest.raises(ValueError, match="position_offset"):
        EmbeddingConfig(d_vocab=9, n_ctx=8, pad_token_id=1, positions_skip_padding=True)
    cfg = encoder_config()
    with pytest.raises(ValueError, match="project=True"):
        dataclasses.replace(cfg, embed=dataclasses.replace(cfg.embed, d_embed=5))
    assert dataclasses.replace(cfg, embed=dataclasses.replace(cfg.embed, d_embed=5, project=True)).d_embed == 5


def test_param_source_checks():
    assert encoder_config(param_source=(0, 0, 2, 2)).param_source == (0, 0, 2, 2)
    with pytest.raises(ValueError, match="one entry per block"):
        encoder_config(param_source=(0, 0))
    with pytest.raises(ValueError, match="earlier"):
        encoder_config(param_source=(0, 2, 2, 2))  # block 1 cannot use a later block
    with pytest.raises(ValueError, match="earlier"):
        encoder_config(param_source=(0, 0, 1, 1))  # block 1 does not own its parameters


def test_head_config_checks():
    with pytest.raises(ValueError, match="pooler"):
        encoder_config(classifier=ClassifierHeadConfig("sequence", ("a", "b"), input="pooler"))
    with pytest.raises(ValueError, match="token classifier"):
        ClassifierHeadConfig("token", ("a",), input="pooler")
    with pytest.raises(ValueError, match="activation"):
        ClassifierHeadConfig("sequence", ("a",), hidden_act="nope")
    with pytest.raises(ValueError, match="at least one label"):
        ClassifierHeadConfig("sequence", ())
    with pytest.raises(ValueError, match="pooling mode"):
        SentencePoolingConfig(("median",))
