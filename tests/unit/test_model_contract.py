"""The model contract on each family: prepare_input, run_prepared, default_return_type, readout, example_input."""

from __future__ import annotations

import pytest
import torch
from transformers import BertForTokenClassification

from encoderlens import HookedEncoderDecoder
from encoderlens.analysis import direct_logit_attribution, logit_lens
from tests.parity.encoder_parity import load_pair
from tests.seq2seq_helpers import make_hf
from tests.unit.analysis_helpers import padded_tokens, tiny_config, tiny_mlm
from tests.unit.test_analysis_audio import build, waves


@pytest.fixture(scope="module")
def mlm():
    return tiny_mlm()


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    torch.manual_seed(1)
    cfg = tiny_config(
        num_labels=3, id2label={0: "O", 1: "B-LOC", 2: "I-LOC"}, label2id={"O": 0, "B-LOC": 1, "I-LOC": 2}
    )
    hf = BertForTokenClassification(cfg)
    return load_pair(hf, tmp_path_factory.mktemp("tagger"))[1]


@pytest.fixture(scope="module")
def t5():
    return HookedEncoderDecoder.from_pretrained(hf_model=make_hf("t5"))


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    return build(tmp_path_factory.mktemp("speech"), pre_ln=True)[0]


def test_text_encoder(mlm):
    tokens, mask = padded_tokens()
    p = mlm.prepare_input(tokens, one_zero_attention_mask=mask)
    assert p.family == "encoder" and p.streams == (None,) and p.batch_size == 2
    assert torch.equal(p.mask(None), mask) and torch.equal(p.token_ids[None], tokens)
    assert mlm.prepare_input(p) is p
    with pytest.raises(ValueError, match="already prepared"):
        mlm.prepare_input(p, one_zero_attention_mask=mask)
    with pytest.raises(TypeError, match="unexpected options"):
        mlm.prepare_input(tokens, decoder_input=tokens)
    assert mlm.default_return_type == "logits"
    torch.testing.assert_close(mlm.run_prepared(p), mlm(tokens, one_zero_attention_mask=mask))
    r = mlm.readout()
    assert r is not None and (r.kind, r.linear, r.return_type) == ("mlm", False, "logits")
    ex = mlm.example_input()
    assert mlm.run_prepared(mlm.prepare_input(ex.input, **ex.options)).shape[-1] == mlm.cfg.d_vocab
    four = p.repeat(2)
    assert four.batch_size == 4 and torch.equal(four.mask(None)[2:], mask) and torch.equal(four.args[0][2:], tokens)


def test_token_classifier_is_the_readout_without_an_mlm_head(tagger):
    """Before the contract the lens refused every encoder without an MLM head; a tagger reads its labels."""
    tokens, mask = padded_tokens()
    assert tagger.default_return_type == "embeddings"
    r = tagger.readout()
    assert r is not None and r.kind == "classifier" and r.output_labels == ("O", "B-LOC", "I-LOC")
    lens = logit_lens(tagger, tokens, one_zero_attention_mask=mask)
    assert lens.logits.shape == (4, 2, 9, 3) and lens.meta["final_max_abs_diff"] < 1e-5
    assert lens.top_tokens(0, k=1)[-1][0][0][0] in r.output_labels
    assert lens.target_prob("B-LOC").values.shape == (4, 9)
    dla = direct_logit_attribution(tagger, tokens, "B-LOC", wrong_token="O", position=2, one_zero_attention_mask=mask)
    with torch.no_grad():
        out = tagger(tokens, one_zero_attention_mask=mask, return_type="classification")
    assert dla.meta["actual"] == pytest.approx(float(out[0, 2, 1] - out[0, 2, 0]), abs=1e-4)
    with pytest.raises(ValueError, match="not an output label"):
        lens.target_prob("PER")


def test_encoder_decoder(t5, mlm):
    src = torch.tensor([[5, 6, 7, 1], [8, 9, 1, 0]])
    dec = torch.tensor([[0, 5, 6], [0, 8, 9]])
    p = t5.prepare_input(src, one_zero_attention_mask=(src != 0).long(), decoder_input=dec)
    assert p.streams == ("encoder", "decoder") and torch.equal(p.token_ids["decoder"], dec)
    assert t5.default_return_type == "logits" and t5.resolve_stream(None) == "decoder"
    assert t5.readout("encoder") is None and t5.readout().kind == "lm" and t5.readout().linear
    assert t5.cross_attention_source("decoder") == "encoder"
    with pytest.raises(ValueError, match="no cross-attention"):
        t5.cross_attention_source("encoder")
    with pytest.raises(ValueError, match="needs decoder_input"):
        t5.prepare_input(src)
    with pytest.raises(ValueError, match="prepared by a 'encoder' model"):
        t5.prepare_input(mlm.prepare_input(src))
    ex = t5.example_input()
    assert t5.run_prepared(t5.prepare_input(ex.input, **ex.options)).shape[:2] == (1, 2)


def test_speech_encoder(speech):
    p = speech.prepare_input(waves())
    assert p.token_ids == {} and p.seconds_per_position(None) == speech.hop_length / speech.sampling_rate
    n = p.mask(None).shape[1]
    torch.testing.assert_close(p.times[None].float(), speech.frame_times(n, span="hop"))
    assert p.mask(None).sum(1).tolist() == speech.frame_mask(p.args[0].lengths, n).sum(1).tolist()
    r = speech.readout()
    assert r is not None and (r.kind, r.linear, r.blank_id) == ("ctc", True, speech.cfg.ctc_head.blank_id)
    assert speech.default_return_type == "logits"
    ex = speech.example_input()
    assert speech.run_prepared(speech.prepare_input(ex.input, **ex.options)).ndim == 3
    with pytest.raises(ValueError, match="already prepared"):
        speech.prepare_input(p.args[0], sampling_rate=16000)


def test_token_labels_name_ids_past_the_tokenizer_vocabulary():
    """T5 has more embedding rows than tokens: such ids get a label saying their id, never None."""
    from encoderlens.models.contract import text_position_labels
    from tests.seq2seq_helpers import t5_tokenizer

    tok = t5_tokenizer()
    past = len(tok) + 3
    assert tok.convert_ids_to_tokens([past]) == [None]  # what the tokenizer gives
    labels = text_position_labels(tok, torch.tensor([[4, past, 0]]), torch.tensor([[1, 1, 0]]))
    assert labels == [[tok.convert_ids_to_tokens(4), f"<id {past}>", "<pad>"]]
