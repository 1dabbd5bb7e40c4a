"""Explanatory AttributeErrors raised inside properties reach the user on every model family.

``nn.Module.__getattr__`` would replace them with "object has no attribute"; the one mechanism is
:class:`encoderlens.hooks.KeepPropertyErrors` on the base class of every model.
"""

from __future__ import annotations

import pytest
import torch
from transformers import (
    BertConfig,
    BertModel,
    HubertConfig,
    HubertModel,
    ModernBertConfig,
    ModernBertModel,
    T5Config,
    T5EncoderModel,
)

from encoderlens import HookedAudioEncoder, HookedEncoder, HookedEncoderDecoder
from encoderlens.hooks import HookedRootModule, HookPoint, KeepPropertyErrors


def test_text_encoder_without_mlm_head_explains_w_u_and_b_u():
    hf = BertModel(
        BertConfig(
            vocab_size=50,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=20,
            max_position_embeddings=32,
        )
    ).eval()
    model = HookedEncoder.from_pretrained(hf_model=hf)
    with pytest.raises(AttributeError, match="no MLM head, hence no unembedding W_U"):
        _ = model.W_U
    with pytest.raises(AttributeError, match="no MLM head, hence no unembedding b_U"):
        _ = model.b_U
    assert model.W_pos.shape == (32, 16)  # a working property still works


def test_text_encoder_without_learned_positions_explains_w_pos():
    cfg = ModernBertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=20,
        max_position_embeddings=32,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        cls_token_id=1,
        sep_token_id=2,
    )
    model = HookedEncoder.from_pretrained(hf_model=ModernBertModel(cfg).eval())
    with pytest.raises(AttributeError, match="no learned position embedding"):
        _ = model.W_pos


def test_audio_encoder_without_ctc_head_explains_w_u_and_b_u():
    cfg = HubertConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=20,
        conv_dim=(8, 8),
        conv_kernel=(10, 3),
        conv_stride=(5, 2),
        num_conv_pos_embeddings=4,
        num_conv_pos_embedding_groups=2,
        vocab_size=10,
    )
    model = HookedAudioEncoder.from_pretrained(hf_model=HubertModel(cfg).eval())
    with pytest.raises(AttributeError, match="no CTC head, hence no unembedding W_U"):
        _ = model.W_U
    with pytest.raises(AttributeError, match="no CTC head, hence no unembedding b_U"):
        _ = model.b_U


def test_encoder_decoder_without_lm_head_explains_w_u_and_stack_cross():
    cfg = T5Config(
        vocab_size=50, d_model=16, d_kv=8, d_ff=20, num_layers=1, num_heads=2, relative_attention_num_buckets=8
    )
    model = HookedEncoderDecoder.from_pretrained(hf_model=T5EncoderModel(cfg).eval())
    with pytest.raises(AttributeError, match="no LM head, hence no unembedding"):
        _ = model.W_U
    with pytest.raises(AttributeError, match="only the decoder has"):
        _ = model.encoder.cross


def test_mechanism_keeps_plain_missing_attributes_and_properties_of_any_module():
    class Root(HookedRootModule):
        def __init__(self) -> None:
            super().__init__()
            self.hook_x = HookPoint()
            self.setup()

        @property
        def thing(self) -> torch.Tensor:
            raise AttributeError("thing needs a head this model lacks; load one with a head")

    class Part(KeepPropertyErrors, torch.nn.Module):
        @property
        def thing(self) -> torch.Tensor:
            raise AttributeError("part explains itself")

    root = Root()
    assert isinstance(root.hook_x, HookPoint)  # submodules still resolve through nn.Module.__getattr__
    with pytest.raises(AttributeError, match="thing needs a head this model lacks"):
        _ = root.thing
    with pytest.raises(AttributeError, match="has no attribute 'missing'"):
        _ = root.missing
    with pytest.raises(AttributeError, match="part explains itself"):
        _ = Part().thing
    assert getattr(root, "thing", None) is None and not hasattr(root, "thing")
