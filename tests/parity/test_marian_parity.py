"""Marian parity against HF: logits, every encoder/decoder residual, self- and cross-attention patterns,
greedy and beam ``generate`` token for token.

Marian: post-LN, fixed sinusoidal positions (HF's half-sin / half-cos layout, not saved in checkpoints),
sqrt(d_model) embedding scale, no embedding norm, final_logits_bias; with
``share_encoder_decoder_embeddings=False`` the decoder has its own token table of ``decoder_vocab_size``
rows (the head and the bias follow it). Odd sizes, padded batches on both sides, decoder length 23.
"""

from __future__ import annotations

import pytest
import torch
from transformers import MarianConfig, MarianModel, MarianMTModel
from transformers.models.marian.modeling_marian import MarianSinusoidalPositionalEmbedding

from encoderlens import HookedEncoderDecoder
from encoderlens.convert.marian import marian_sinusoids
from tests.conftest import masked_max_diff, pattern_max_diff, randomize_norms, save_tiny
from tests.seq2seq_helpers import VOCAB, greedy_config, padded_seq2seq_batch, pick_eos

ATOL = 1e-4
DEC_VOCAB = 77  # < VOCAB: the decoder batch below keeps its ids under it


def marian_config(**kw) -> MarianConfig:
    base = dict(
        vocab_size=VOCAB,
        d_model=36,
        encoder_layers=3,
        decoder_layers=2,
        encoder_attention_heads=3,
        decoder_attention_heads=2,
        encoder_ffn_dim=37,
        decoder_ffn_dim=41,
        max_position_embeddings=40,
        scale_embedding=True,
        activation_function="swish",
        init_std=0.2,
        pad_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,  # opus-mt: generation starts from the pad token
        attn_implementation="eager",
    )
    base.update(kw)
    return MarianConfig(**base)


def make_marian(shared: bool = True, head: bool = True, seed: int = 0, untie_head: bool = False):
    torch.manual_seed(seed)
    kw = {} if shared else dict(share_encoder_decoder_embeddings=False, decoder_vocab_size=DEC_VOCAB)
    if untie_head:
        kw["tie_word_embeddings"] = False
    cfg = marian_config(**kw)
    hf = MarianMTModel(cfg) if head else MarianModel(cfg)
    randomize_norms(hf)
    if head:
        with torch.no_grad():
            hf.final_logits_bias.normal_(0.0, 0.5)
            if untie_head:
                hf.lm_head.weight.normal_(0.0, 1.0)
    return hf.eval()


def _decoder_batch(shared: bool):
    src, src_mask, tgt, tgt_mask = padded_seq2seq_batch(first_token=1)
    if not shared:
        tgt = tgt % DEC_VOCAB
    return src, src_mask, tgt, tgt_mask


def test_sinusoids_equal_hf_layout():
    for n, dim in ((40, 36), (7, 9)):  # odd width: HF puts one more sine column than cosine columns
        hf = MarianSinusoidalPositionalEmbedding(n, dim)
        assert torch.equal(marian_sinusoids(n, dim), hf.create_weight()), (n, dim)


@pytest.mark.parametrize("shared,via", [(True, "folder"), (True, "hf_model"), (False, "folder")])
def test_marian_parity_every_layer(tmp_path, shared, via):
    hf = make_marian(shared)
    if via == "folder":
        path = save_tiny(hf, tmp_path)
        assert "model.encoder.embed_positions.weight" not in _saved_keys(path)  # rebuilt by the converter
        model = HookedEncoderDecoder.from_pretrained(path)
    else:
        model = HookedEncoderDecoder.from_pretrained(hf_model=hf)
    assert model.cfg.shared_embedding is shared
    assert model.cfg.encoder_embed.scale == 6.0 and model.cfg.encoder.norm_position == "post"
    assert model.lm_head is not None and model.lm_head.b_U is not None
    assert (model.decoder_embed is None) is shared
    if not shared:
        assert model.cfg.d_vocab_out == DEC_VOCAB and model.W_U.shape == (36, DEC_VOCAB)
        assert model.W_U.data_ptr() == model.decoder_embed.W_E.data_ptr()  # tied to the decoder's own table
    src, src_mask, tgt, tgt_mask = _decoder_batch(shared)
    with torch.no_grad():
        out = hf(
            input_ids=src,
            attention_mask=src_mask,
            decoder_input_ids=tgt,
            decoder_attention_mask=tgt_mask,
            output_hidden_states=True,
            output_attentions=True,
        )
        res, cache = model.run_with_cache(
            src, tgt, return_type="all", one_zero_attention_mask=src_mask, decoder_attention_mask=tgt_mask
        )
        fast = model(src, tgt, one_zero_attention_mask=src_mask, decoder_attention_mask=tgt_mask)
    assert res.logits.shape[-1] == (VOCAB if shared else DEC_VOCAB)
    assert masked_max_diff(res.logits, out.logits, tgt_mask) < ATOL
    assert masked_max_diff(fast, out.logits, tgt_mask) < ATOL
    for side, hidden, attn, mask, n in (
        ("encoder", out.encoder_hidden_states, out.encoder_attentions, src_mask, 3),
        ("decoder", out.decoder_hidden_states, out.decoder_attentions, tgt_mask, 2),
    ):
        assert masked_max_diff(cache[f"{side}.hook_full_embed"], hidden[0], mask) < ATOL, side
        for i in range(n):
            assert masked_max_diff(cache[f"{side}.blocks.{i}.hook_resid_pre"], hidden[i], mask) < ATOL, (side, i)
            assert pattern_max_diff(cache[f"{side}.blocks.{i}.attn.hook_pattern"], attn[i], mask) < ATOL, (side, i)
        # post-LN: the block output (HF hidden state) is hook_normalized_resid_post (TransformerLens naming)
        assert masked_max_diff(cache[f"{side}.blocks.{n - 1}.hook_normalized_resid_post"], hidden[n], mask) < ATOL, side
    for i in range(2):
        ours = cache[f"decoder.blocks.{i}.cross_attn.hook_pattern"]
        assert pattern_max_diff(ours, out.cross_attentions[i], tgt_mask) < ATOL
    assert cache["decoder.blocks.0.cross_attn.hook_pattern"].shape == (3, 2, 23, 25)
    assert "encoder.hook_final_norm" not in cache


def _saved_keys(path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), "pt") as f:
        return set(f.keys())


def test_marian_model_without_head_and_untied_head(tmp_path):
    hf = make_marian(shared=False, head=False)
    model = HookedEncoderDecoder.from_pretrained(save_tiny(hf, tmp_path))
    assert model.lm_head is None
    src, src_mask, tgt, tgt_mask = _decoder_batch(shared=False)
    with torch.no_grad():
        theirs = hf(input_ids=src, attention_mask=src_mask, decoder_input_ids=tgt, decoder_attention_mask=tgt_mask)
        ours = model(src, tgt, one_zero_attention_mask=src_mask, decoder_attention_mask=tgt_mask)
    assert masked_max_diff(ours, theirs.last_hidden_state, tgt_mask) < ATOL

    hf = make_marian(shared=True, untie_head=True)
    model = HookedEncoderDecoder.from_pretrained(hf_model=hf)
    assert not model.cfg.unembed.tied
    src, src_mask, tgt, tgt_mask = _decoder_batch(shared=True)
    with torch.no_grad():
        theirs = hf(input_ids=src, attention_mask=src_mask, decoder_input_ids=tgt, decoder_attention_mask=tgt_mask)
        ours = model(src, tgt, one_zero_attention_mask=src_mask, decoder_attention_mask=tgt_mask)
    assert masked_max_diff(ours, theirs.logits, tgt_mask) < ATOL


def test_decoder_ids_are_checked_against_the_decoder_vocabulary():
    model = HookedEncoderDecoder.from_pretrained(hf_model=make_marian(shared=False))
    src = torch.randint(3, VOCAB, (1, 5))
    model(src, torch.tensor([[1, DEC_VOCAB - 1]]))  # encoder ids up to 98, decoder ids up to 76
    with pytest.raises(ValueError, match=str(DEC_VOCAB)):
        model(src, torch.tensor([[1, DEC_VOCAB]]))


def test_converter_rejects_inconsistent_vocabularies():
    hf = make_marian(shared=True)
    hf.config.decoder_vocab_size = 50
    with pytest.raises(ValueError, match="decoder_vocab_size=50"):
        HookedEncoderDecoder.from_pretrained(hf_model=hf)


def _generating(shared: bool):
    hf = make_marian(shared, untie_head=True, seed=4)
    return hf, HookedEncoderDecoder.from_pretrained(hf_model=hf)


@pytest.mark.parametrize("shared", [True, False])
def test_greedy_generate_equals_hf(shared):
    hf, model = _generating(shared)
    src, src_mask, _, _ = _decoder_batch(shared)
    free = model.generate(src, one_zero_attention_mask=src_mask, max_new_tokens=21, eos_token_id=())
    eos = pick_eos(free)
    gen_cfg = greedy_config(hf)
    gen_cfg.update(eos_token_id=eos)
    hf.generation_config = gen_cfg
    with torch.no_grad():
        theirs = hf.generate(input_ids=src, attention_mask=src_mask, max_new_tokens=21)
    ours = model.generate(src, one_zero_attention_mask=src_mask, max_new_tokens=21, eos_token_id=eos)
    assert theirs.shape[1] > 3
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("shared,num_beams", [(True, 3), (False, 4)])
def test_beam_generate_equals_hf(shared, num_beams):
    hf, model = _generating(shared)
    src, src_mask, _, _ = _decoder_batch(shared)
    free = model.generate(src, one_zero_attention_mask=src_mask, max_new_tokens=12, eos_token_id=())
    eos = pick_eos(free)
    gen_cfg = greedy_config(hf)
    gen_cfg.update(eos_token_id=eos, num_beams=num_beams, length_penalty=1.0, early_stopping=False)
    hf.generation_config = gen_cfg
    with torch.no_grad():
        theirs = hf.generate(input_ids=src, attention_mask=src_mask, max_new_tokens=12)
    ours = model.generate(
        src, one_zero_attention_mask=src_mask, max_new_tokens=12, eos_token_id=eos, num_beams=num_beams
    )
    assert torch.equal(ours, theirs)
