"""HF config keys are checked against each converter's whitelist; errors name the real architecture."""

from __future__ import annotations

import pytest
from transformers import (
    AlbertConfig,
    AlbertModel,
    BartConfig,
    BartModel,
    BertConfig,
    BertModel,
    ElectraConfig,
    ElectraModel,
    HubertConfig,
    HubertModel,
    ModernBertConfig,
    ModernBertModel,
    RobertaConfig,
    RobertaModel,
    T5Config,
    T5Model,
    Wav2Vec2Config,
    Wav2Vec2Model,
    XLMRobertaConfig,
    XLMRobertaModel,
)

from encoderlens import HookedAudioEncoder, HookedEncoder, HookedEncoderDecoder
from encoderlens.convert.registry import check_config_keys

TEXT = dict(vocab_size=99, hidden_size=12, num_hidden_layers=1, num_attention_heads=3, intermediate_size=13)
BART_HEADS = dict(encoder_attention_heads=3, decoder_attention_heads=3, encoder_ffn_dim=13, decoder_ffn_dim=13)
AUDIO = dict(
    hidden_size=12,
    num_hidden_layers=1,
    num_attention_heads=3,
    intermediate_size=13,
    conv_dim=(4, 4),
    conv_kernel=(3, 2),
    conv_stride=(2, 2),
    num_conv_pos_embeddings=3,
    num_conv_pos_embedding_groups=3,
)


@pytest.mark.parametrize(
    "family,hf_cls,cfg,name",
    [
        (HookedEncoder, BertModel, BertConfig(**TEXT), "bert"),
        (HookedEncoder, RobertaModel, RobertaConfig(**TEXT, pad_token_id=1), "roberta"),
        (HookedEncoder, XLMRobertaModel, XLMRobertaConfig(**TEXT, pad_token_id=1), "xlm-roberta"),
        (HookedEncoder, ElectraModel, ElectraConfig(**TEXT, embedding_size=12), "electra"),
        (HookedEncoder, AlbertModel, AlbertConfig(**TEXT, embedding_size=6), "albert"),
        (HookedEncoder, ModernBertModel, ModernBertConfig(**TEXT, pad_token_id=0), "modernbert"),
        (HookedEncoderDecoder, T5Model, T5Config(vocab_size=99, d_model=12, d_kv=4, d_ff=13, num_layers=1), "t5"),
        (
            HookedEncoderDecoder,
            BartModel,
            BartConfig(vocab_size=99, d_model=12, encoder_layers=1, decoder_layers=1, **BART_HEADS),
            "bart",
        ),
        (HookedAudioEncoder, Wav2Vec2Model, Wav2Vec2Config(**AUDIO), "wav2vec2"),
        (HookedAudioEncoder, HubertModel, HubertConfig(**AUDIO), "hubert"),
    ],
)
def test_unknown_key_with_a_value_is_refused_naming_key_value_and_architecture(family, hf_cls, cfg, name):
    hf = hf_cls(cfg).eval()
    family.from_pretrained(hf_model=hf)  # the plain config converts
    hf.config.attention_sink_tokens = 4  # a flag HF might add one day: changes the computation, adds no weight
    with pytest.raises(ValueError, match=f"^{name} converter does not support attention_sink_tokens=4"):
        family.from_pretrained(hf_model=hf)


@pytest.mark.parametrize(
    "hf_cls,cfg,name",
    [
        (RobertaModel, RobertaConfig(**TEXT, pad_token_id=1), "roberta"),
        (ElectraModel, ElectraConfig(**TEXT, embedding_size=12), "electra"),
        (AlbertModel, AlbertConfig(**TEXT, embedding_size=6), "albert"),
    ],
)
def test_handled_setting_errors_name_the_real_architecture(hf_cls, cfg, name):
    """These converters share BERT's config mapping; their errors used to say 'bert'."""
    hf = hf_cls(cfg).eval()
    hf.config.position_embedding_type = "relative_key"
    with pytest.raises(ValueError, match=f"^{name} converter does not support position_embedding_type='relative_key'"):
        HookedEncoder.from_pretrained(hf_model=hf)
    hf.config.position_embedding_type = "absolute"
    hf.config.hidden_act = "swishy"
    with pytest.raises(ValueError, match=f"^{name} converter does not support hidden_act='swishy'"):
        HookedEncoder.from_pretrained(hf_model=hf)


def test_ignored_legacy_keys_and_explicit_defaults_are_accepted():
    hf = BertModel(BertConfig(**TEXT)).eval()
    for key, value in dict(directionality="bidi", pooler_fc_size=768, pooler_type="first_token_transform").items():
        setattr(hf.config, key, value)
    hf.config.output_past = True
    hf.config.gradient_checkpointing = False
    hf.config.is_decoder = False  # a key the converter reads, at the value it supports
    model = HookedEncoder.from_pretrained(hf_model=hf)
    assert model.cfg.n_layers == 1


def test_a_leftover_weight_is_still_an_error():
    hf = BertModel(BertConfig(**TEXT)).eval()
    sd = dict(hf.state_dict())
    sd["encoder.layer.0.attention.self.rotary.inv_freq_scale"] = sd["pooler.dense.bias"].clone()
    from encoderlens.convert.bert import convert

    with pytest.raises(ValueError, match="bert converter left 1 HF weight"):
        convert(hf.config, sd)


def test_check_config_keys_compares_with_the_class_defaults():
    cfg = BertConfig(**TEXT)
    check_config_keys(cfg, "bert", handled=set(TEXT))  # everything else is at its BertConfig default
    cfg.hidden_dropout_prob = 0.3  # a non-default value of a key nobody listed
    with pytest.raises(ValueError, match="^bert converter does not support hidden_dropout_prob=0.3"):
        check_config_keys(cfg, "bert", handled=set(TEXT))
    check_config_keys(cfg, "bert", handled=set(TEXT), ignored={"hidden_dropout_prob"})
