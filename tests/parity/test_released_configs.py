"""Released ``config.json`` files of the checkpoints the README names: accepted, and exact at two layers.

Each fixture in ``tests/fixtures/released_configs`` (provenance in its README) is loaded the way HF
loads a checkpoint's config (``from_dict``), shrunk, turned into an HF model with random weights and
converted by our loader; the model must then match HF on a padded batch: the embedding output, every
block's input and output, every attention pattern and the head's output (fp32, atol 1e-4).

What the shrinking changes (sizes only; every flag that changes the computation is kept as released):

- depth: 2 layers (encoder and decoder for T5 / BART), so a layer pattern of period 3 keeps its
  first global and first local layer (ModernBERT);
- widths: d_model 36 with 3 heads (text), 48 with 3 heads where rotary needs an even head size
  (ModernBERT) or a grouped positional conv needs a multiple of 16 (wav2vec2 / HuBERT); MLP 37;
  T5 ``d_kv`` 13; DeBERTa ``attention_head_size`` 12; a factorised ``embedding_size`` becomes 20
  (kept equal to d_model where it was equal); conv front-end channels 16 (kernels, strides, count kept);
- vocabulary: 99 entries (audio CTC vocabularies and Whisper's are kept: Whisper's special and timestamp
  ids sit below the top), special token ids at or above 99 move to the top of the new vocabulary in the
  same order.

Whisper is checked from waveforms (80 or 128 mel bins as released) through both stacks to the logits;
Marian as an encoder-decoder like BART. A released config refused for a documented reason asserts the
refusal instead (``REFUSED``). Fine-tunes (a SQuAD ALBERT, an NLI ModernBERT) are checked with their head:
HF's ``start_logits`` / ``end_logits`` or classifier logits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers
from transformers import CONFIG_MAPPING, AutoModel, Wav2Vec2FeatureExtractor, WhisperFeatureExtractor

from encoderlens import HookedAudioEncoder, HookedEncoder, HookedEncoderDecoder, HookedWhisper
from tests.conftest import masked_max_diff, pattern_max_diff, randomize_norms
from tests.parity.encoder_parity import padded_batch
from tests.parity.test_audio_parity import check_every_layer, randomize_all
from tests.parity.test_t5_parity import compare_stack
from tests.parity.test_whisper_parity import speech_like
from tests.seq2seq_helpers import padded_seq2seq_batch

ATOL = 1e-4
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "released_configs"
NAMES = sorted(p.stem for p in FIXTURES.glob("*.json"))

#: Released configs a converter refuses on purpose, with the start of the message it must give.
REFUSED = {
    # the ConvLayer after block 0 of DeBERTa-v2 xlarge / xxlarge is not implemented
    "microsoft__deberta-v2-xxlarge": "deberta-v2 converter does not support conv_kernel_size=3",
}
VOCAB = 99
ID_KEYS = (
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "sep_token_id",
    "cls_token_id",
    "decoder_start_token_id",
    "forced_bos_token_id",
    "forced_eos_token_id",
)
AUDIO, SEQ2SEQ = ("wav2vec2", "hubert"), ("t5", "mt5", "bart", "mbart", "marian")


def load_json(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def model_type(data: dict[str, Any]) -> str:
    # the original Google BERT releases (TF ``bert_config.json``) carry no model_type; HF reads them as BERT
    return str(data.get("model_type", "bert"))


def shrink(data: dict[str, Any]) -> dict[str, Any]:
    """The released config with the sizes listed in the module docstring; every other key unchanged."""
    d = dict(data)
    mt = model_type(d)
    if mt in AUDIO:
        d.update(hidden_size=48, num_attention_heads=3, intermediate_size=37, num_hidden_layers=2)
        d["conv_dim"] = [16] * len(d["conv_dim"])
        return d
    if mt in ("t5", "mt5"):
        d.update(d_model=36, d_kv=13, num_heads=3, d_ff=37, num_layers=2)
        if "num_decoder_layers" in d:
            d["num_decoder_layers"] = 2
    elif mt == "whisper":  # the vocabulary is kept: its special and timestamp ids sit below the top
        d.update(d_model=36, encoder_attention_heads=3, decoder_attention_heads=3, encoder_ffn_dim=37)
        d.update(decoder_ffn_dim=37, encoder_layers=2, decoder_layers=2, num_hidden_layers=2)
        return d
    elif mt in ("bart", "mbart", "marian"):
        d.update(d_model=36, encoder_attention_heads=3, decoder_attention_heads=3, encoder_ffn_dim=37)
        d.update(decoder_ffn_dim=37, encoder_layers=2, decoder_layers=2)
        if "num_hidden_layers" in d:  # a legacy mirror of encoder_layers
            d["num_hidden_layers"] = 2
    elif mt == "distilbert":
        d.update(dim=36, n_heads=3, hidden_dim=37, n_layers=2)
    elif mt == "modernbert":
        d.update(hidden_size=48, num_attention_heads=3, intermediate_size=37, num_hidden_layers=2)
    else:  # BERT-like, DeBERTa
        d.update(hidden_size=36, num_attention_heads=3, intermediate_size=37, num_hidden_layers=2)
        if "embedding_size" in d:
            d["embedding_size"] = 36 if data["embedding_size"] == data["hidden_size"] else 20
        if "attention_head_size" in d:
            d["attention_head_size"] = 12
    old_vocab = d["vocab_size"]
    d["vocab_size"] = VOCAB
    for key in ID_KEYS:
        if isinstance(d.get(key), int) and d[key] >= VOCAB:
            d[key] = d[key] - old_vocab + VOCAB
    return d


def hf_config(data: dict[str, Any]) -> Any:
    """Build the HF config as ``from_pretrained`` does (``from_dict``), with eager attention for patterns."""
    return CONFIG_MAPPING[model_type(data)].from_dict(dict(data, attn_implementation="eager"))


def hf_model(cfg: Any) -> Any:
    """The released architecture (the base model when it names none, or a class transformers no longer has)."""
    for name in cfg.architectures or []:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls(cfg).eval()
    return AutoModel.from_config(cfg).eval()


def test_every_checkpoint_the_readme_names_has_a_fixture():
    """Guards the list below against silent shrinkage; the README table cites exactly these files."""
    assert len(NAMES) >= 35
    for name in NAMES:
        data = load_json(name)
        assert "vocab_size" in data and model_type(data) in CONFIG_MAPPING, name


@pytest.mark.parametrize("name", NAMES)
def test_released_config_converts_and_matches_hf_at_two_layers(name, tmp_path):
    data = load_json(name)
    torch.manual_seed(0)
    hf = hf_model(hf_config(shrink(data)))
    mt = model_type(data)
    if name in REFUSED:
        family = HookedAudioEncoder if mt in AUDIO else HookedEncoderDecoder if mt in SEQ2SEQ else HookedEncoder
        with pytest.raises(ValueError, match="^" + REFUSED[name]):
            family.from_pretrained(hf_model=hf)
        return
    if mt in AUDIO:
        randomize_all(hf)
        check_audio(hf, data, tmp_path)
    elif mt == "whisper":
        randomize_norms(hf)
        check_whisper(hf)
    elif mt in SEQ2SEQ:
        randomize_norms(hf)
        check_seq2seq(hf)
    else:
        randomize_norms(hf)
        check_text(hf)


def check_text(hf: Any) -> None:
    model = HookedEncoder.from_pretrained(hf_model=hf)
    cfg = hf.config
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else 0
    n_types = getattr(cfg, "type_vocab_size", 0) or 0
    types = n_types if n_types > 1 else 0
    tokens, mask, tt = padded_batch(pad_id=pad, vocab=VOCAB, n_token_types=types, left_pad_row=True)
    hf_kw: dict[str, Any] = {"input_ids": tokens, "attention_mask": mask}
    our_kw: dict[str, Any] = {"one_zero_attention_mask": mask}
    if tt is not None:
        hf_kw["token_type_ids"] = our_kw["token_type_ids"] = tt
    with torch.no_grad():
        out = hf(**hf_kw, output_hidden_states=True, output_attentions=True)
        ours, cache = model.run_with_cache(tokens, return_type="all", **our_kw)
    n = model.cfg.n_layers
    hidden = out.hidden_states
    assert n == 2 and len(hidden) == n + 1 and len(out.attentions) == n
    assert masked_max_diff(cache["hook_full_embed"], hidden[0], mask) < ATOL
    for i in range(n):
        assert masked_max_diff(cache["resid_pre", i], hidden[i], mask) < ATOL, i
        assert pattern_max_diff(cache["pattern", i], out.attentions[i], mask) < ATOL, i
    final_norm = model.cfg.stack.final_norm  # HF's last hidden state is after it (ModernBERT)
    # the block output: hook_resid_post (pre-LN) or hook_normalized_resid_post (post-LN, TransformerLens's names)
    last = ours.embeddings if final_norm else cache[model.stream_spec().resid_hook(n - 1)]
    assert masked_max_diff(last, hidden[n], mask) < ATOL
    if getattr(out, "start_logits", None) is not None:  # question answering
        assert masked_max_diff(ours.start_logits, out.start_logits, mask) < ATOL
        assert masked_max_diff(ours.end_logits, out.end_logits, mask) < ATOL
        return
    logits = getattr(out, "logits", None)
    if logits is None:
        return
    if ours.logits is not None:
        assert masked_max_diff(ours.logits, logits, mask) < ATOL
    elif model.cfg.classifier is not None and model.cfg.classifier.task == "token":
        theirs = logits if logits.ndim == 3 else logits[..., None]  # ELECTRA's discriminator: one logit
        assert masked_max_diff(ours.classifier_logits, theirs, mask) < ATOL
    else:
        assert (ours.classifier_logits - logits).abs().max() < ATOL


def check_seq2seq(hf: Any) -> None:
    model = HookedEncoderDecoder.from_pretrained(hf_model=hf)
    start = hf.config.decoder_start_token_id or 0
    src, src_mask, tgt, tgt_mask = padded_seq2seq_batch(first_token=start)
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
    enc_final = model.cfg.encoder.final_norm
    dec_final = model.cfg.decoder is not None and model.cfg.decoder.final_norm
    if enc_final and dec_final:  # T5, mBART: HF's last hidden state is the final-norm output
        compare_stack(cache, "encoder", out.encoder_hidden_states, out.encoder_attentions, src_mask, 2, None)
        compare_stack(cache, "decoder", out.decoder_hidden_states, out.decoder_attentions, tgt_mask, 2, None)
    else:  # BART: post-LN, no final norm
        for prefix, hidden, attn, m in (
            ("encoder", out.encoder_hidden_states, out.encoder_attentions, src_mask),
            ("decoder", out.decoder_hidden_states, out.decoder_attentions, tgt_mask),
        ):
            for i in range(2):
                assert masked_max_diff(cache[f"{prefix}.blocks.{i}.hook_resid_pre"], hidden[i], m) < ATOL
                # post-LN block output: hook_normalized_resid_post (TransformerLens's BertBlock names)
                out_hook = f"{prefix}.blocks.{i}.hook_normalized_resid_post"
                assert masked_max_diff(cache[out_hook], hidden[i + 1], m) < ATOL
                assert pattern_max_diff(cache[f"{prefix}.blocks.{i}.attn.hook_pattern"], attn[i], m) < ATOL
    for i in range(2):
        cross = cache[f"decoder.blocks.{i}.cross_attn.hook_pattern"]
        assert pattern_max_diff(cross, out.cross_attentions[i], tgt_mask) < ATOL
    if getattr(out, "logits", None) is not None:
        assert masked_max_diff(res.logits, out.logits, tgt_mask) < ATOL
    else:
        assert res.logits is None


def check_audio(hf: Any, data: dict[str, Any], tmp_path: Path) -> None:
    # HF's feature extractor returns a mask for layer-norm front ends (the large checkpoints), not for group norm
    use_mask = data["feat_extract_norm"] == "layer"
    path = tmp_path / "ckpt"
    hf.save_pretrained(path)
    fe = Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True, return_attention_mask=use_mask)
    fe.save_pretrained(path)
    model = HookedAudioEncoder.from_pretrained(path)
    g = np.random.default_rng(3)
    waves = [(0.3 * g.standard_normal(n)).astype(np.float32) for n in (4001, 2803, 1650)]
    inputs = fe(waves, sampling_rate=16000, padding=True, return_tensors="pt")
    with torch.no_grad():
        hf_out = hf(**inputs, output_hidden_states=True, output_attentions=True)
        out, cache = model.run_with_cache(waves, return_type="all", sampling_rate=16000)
    mask = out.frame_mask
    check_every_layer(model, hf_out, cache, mask, 2)
    last = hf_out.logits if hasattr(hf_out, "logits") else hf_out.last_hidden_state
    assert masked_max_diff(out.logits if out.logits is not None else out.hidden, last, mask) < ATOL


def check_whisper(hf: Any) -> None:
    model = HookedWhisper.from_pretrained(hf_model=hf)
    cfg = hf.config
    waves = speech_like(lengths=(16000 * 2, 11_000, 7_000))
    fe = WhisperFeatureExtractor(feature_size=cfg.num_mel_bins)
    feats = fe(waves, sampling_rate=16000, return_tensors="pt").input_features
    g = torch.Generator().manual_seed(1)
    dec = torch.randint(0, cfg.vocab_size, (3, 11), generator=g)
    dec[:, 0] = cfg.decoder_start_token_id
    dec_mask = torch.ones_like(dec)
    dec_mask[1, 8:] = 0
    dec_mask[2, 4:] = 0
    enc_mask = torch.ones(3, cfg.max_source_positions, dtype=torch.long)
    with torch.no_grad():
        out = hf(
            input_features=feats,
            decoder_input_ids=dec,
            decoder_attention_mask=dec_mask,
            output_hidden_states=True,
            output_attentions=True,
        )
        logits, cache = model.run_with_cache(waves, dec, decoder_attention_mask=dec_mask)
    assert masked_max_diff(logits, out.logits, dec_mask) < ATOL
    for side, hidden, attn, mask in (
        ("encoder", out.encoder_hidden_states, out.encoder_attentions, enc_mask),
        ("decoder", out.decoder_hidden_states, out.decoder_attentions, dec_mask),
    ):
        assert len(hidden) == 3
        for i in range(2):
            assert masked_max_diff(cache[f"{side}.blocks.{i}.hook_resid_pre"], hidden[i], mask) < ATOL, (side, i)
            assert pattern_max_diff(cache[f"{side}.blocks.{i}.attn.hook_pattern"], attn[i], mask) < ATOL, (side, i)
        assert masked_max_diff(cache[f"{side}.hook_final_norm"], hidden[2], mask) < ATOL, side
    for i in range(2):
        cross = cache[f"decoder.blocks.{i}.cross_attn.hook_pattern"]
        assert pattern_max_diff(cross, out.cross_attentions[i], dec_mask) < ATOL, i
