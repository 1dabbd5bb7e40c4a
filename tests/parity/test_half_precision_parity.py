"""Half precision (bfloat16, float16) against HF run in the same dtype, one tiny model per family, on CPU.

Tolerance, per dtype: two implementations that round differently (a fused q|k|v matmul, LayerNorm's
affine in one ``addcmul``, SDPA) cannot agree to the last bit in 8 (bf16) or 11 (fp16) mantissa bits.
What they can do is agree as well as HF's own half-precision run agrees with its float32 run. So
every compared tensor must satisfy

    max |ours_dtype - HF_dtype|  <=  2 * max |HF_dtype - HF_fp32|  +  4 * ULP[dtype] * max |HF_fp32|

over real (unpadded) positions, with ``ULP = {bf16: 2**-8, fp16: 2**-11}`` (one unit in the last
place at the tensor's largest value; four of them for rounding that differs at each of a few layers). A wrong weight, mask or scale is off by far more than that.
Softmax and norms accumulate as HF does (softmax and LayerNorm statistics in float32 inside the
kernels, RMSNorm's variance in float32 then cast, as T5LayerNorm does).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from transformers import (
    BertForMaskedLM,
    DebertaV2ForMaskedLM,
    HubertConfig,
    HubertForCTC,
    ModernBertForMaskedLM,
    Wav2Vec2Config,
    Wav2Vec2ForCTC,
)

from encoderlens import HookedAudioEncoder, HookedEncoder, HookedEncoderDecoder
from tests.conftest import randomize_norms, save_tiny
from tests.parity import test_bert_parity as bert
from tests.parity import test_modernbert_parity as modernbert
from tests.parity.encoder_parity import padded_batch
from tests.parity.test_audio_parity import randomize_all, save_checkpoint, tiny_kwargs, waveforms
from tests.parity.test_deberta_parity import V3
from tests.parity.test_deberta_parity import tiny_config as deberta_config
from tests.seq2seq_helpers import greedy_config, make_hf, padded_seq2seq_batch, sharpen_t5

ULP = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
DTYPES = [torch.bfloat16, torch.float16]


def check(name: str, ours: torch.Tensor, hf_half: torch.Tensor, hf_fp32: torch.Tensor, mask: torch.Tensor | None):
    """The per-dtype tolerance above, over positions where ``mask`` (batch, pos) is 1.

    The dtypes must be HF's too (T5 under float16 keeps ``wo`` and so the residual stream in float32).
    """
    assert ours.dtype == hf_half.dtype, (name, ours.dtype, hf_half.dtype)
    dtype = hf_half.dtype if hf_half.dtype in ULP else torch.float16

    def diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        d = (a.float() - b.float()).abs()
        return d[mask.bool()] if mask is not None else d

    ours_err = diff(ours, hf_half).max().item()
    hf_err = diff(hf_half, hf_fp32).max().item()
    scale = (hf_fp32[mask.bool()] if mask is not None else hf_fp32).abs().max().item()
    tol = 2 * hf_err + 4 * ULP[dtype] * scale
    assert ours_err <= tol, f"{name}: |ours - HF| = {ours_err:.3g} > {tol:.3g} (HF half vs fp32: {hf_err:.3g})"


def check_patterns(name: str, ours: torch.Tensor, hf_half: torch.Tensor, hf_fp32: torch.Tensor, mask: torch.Tensor):
    """Attention patterns (batch, head, query, key) over real query rows; probabilities <= 1, so scale 1."""
    m = mask.bool()[:, None, :, None].expand_as(hf_fp32)
    ours_err = (ours.float() - hf_half.float())[m].abs().max().item()
    hf_err = (hf_half.float() - hf_fp32)[m].abs().max().item()
    assert ours_err <= 2 * hf_err + ULP[hf_half.dtype], (name, ours_err, hf_err)


def hf_pair(hf_fp32: Any, path: Any, dtype: torch.dtype) -> Any:
    """HF's own loader in ``dtype`` (T5 keeps ``wo`` in float32 under fp16, as HF does for checkpoints)."""
    return type(hf_fp32).from_pretrained(path, dtype=dtype, attn_implementation="eager").eval()


ENCODERS = {
    # name: (HF model, whether HF's last hidden state is after the final norm (pre-LN))
    "bert": (lambda: BertForMaskedLM(bert.tiny_config()), False),
    "deberta_v3": (lambda: DebertaV2ForMaskedLM(deberta_config(**V3)), False),
    "modernbert": (lambda: ModernBertForMaskedLM(modernbert.tiny_config()), True),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("arch", list(ENCODERS))
def test_text_encoder_half_precision(tmp_path, arch, dtype):
    make, final_norm_last = ENCODERS[arch]
    hf = make().eval()
    randomize_norms(hf)
    path = save_tiny(hf, tmp_path)
    hf_half = hf_pair(hf, path, dtype)
    model = HookedEncoder.from_pretrained(path, dtype=dtype)
    assert {p.dtype for p in model.parameters()} == {dtype}
    tokens, mask, _ = padded_batch()
    with torch.no_grad():
        ref = hf(input_ids=tokens, attention_mask=mask, output_hidden_states=True, output_attentions=True)
        half = hf_half(input_ids=tokens, attention_mask=mask, output_hidden_states=True, output_attentions=True)
        out, cache = model.run_with_cache(tokens, return_type="all", one_zero_attention_mask=mask)
        fast = model(tokens, one_zero_attention_mask=mask)  # no hooks: the SDPA path
    check("logits", out.logits, half.logits, ref.logits, mask)
    check("logits (no hooks)", fast, half.logits, ref.logits, mask)
    n = model.cfg.n_layers
    for i in range(n):
        ours = cache["resid_post", i]
        if i == n - 1 and final_norm_last:
            ours = model.ln_final(ours)
        check(f"resid_post {i}", ours, half.hidden_states[i + 1], ref.hidden_states[i + 1], mask)
        check_patterns(f"pattern {i}", cache["pattern", i], half.attentions[i], ref.attentions[i], mask)
    assert all(t.dtype == dtype for t in cache.values() if t.is_floating_point())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["t5", "bart"])
def test_encoder_decoder_half_precision(tmp_path, kind, dtype):
    hf = make_hf(kind)
    path = save_tiny(hf, tmp_path)
    hf_half = hf_pair(hf, path, dtype)
    model = HookedEncoderDecoder.from_pretrained(path, dtype=dtype)
    src, src_mask, tgt, tgt_mask = padded_seq2seq_batch(first_token=0 if kind == "t5" else None)
    kw = dict(input_ids=src, attention_mask=src_mask, decoder_input_ids=tgt, decoder_attention_mask=tgt_mask)
    with torch.no_grad():
        ref = hf(**kw, output_hidden_states=True, output_attentions=True)
        half = hf_half(**kw, output_hidden_states=True, output_attentions=True)
        out, cache = model.run_with_cache(
            src, tgt, return_type="all", one_zero_attention_mask=src_mask, decoder_attention_mask=tgt_mask
        )
        fast = model(src, tgt, one_zero_attention_mask=src_mask, decoder_attention_mask=tgt_mask)
    check("logits", out.logits, half.logits, ref.logits, tgt_mask)
    check("logits (no hooks)", fast, half.logits, ref.logits, tgt_mask)
    for i in range(model.cfg.n_layers):
        name = f"encoder.blocks.{i}.hook_resid_pre"
        check(name, cache[name], half.encoder_hidden_states[i], ref.encoder_hidden_states[i], src_mask)
        name = f"encoder.blocks.{i}.attn.hook_pattern"
        check_patterns(name, cache[name], half.encoder_attentions[i], ref.encoder_attentions[i], src_mask)
    for i in range(model.cfg.n_decoder_layers):
        name = f"decoder.blocks.{i}.hook_resid_pre"
        check(name, cache[name], half.decoder_hidden_states[i], ref.decoder_hidden_states[i], tgt_mask)
        name = f"decoder.blocks.{i}.cross_attn.hook_pattern"
        check_patterns(name, cache[name], half.cross_attentions[i], ref.cross_attentions[i], tgt_mask)


@pytest.mark.parametrize("dtype", [torch.bfloat16], ids=str)
def test_t5_generate_half_precision(tmp_path, dtype):
    hf = sharpen_t5(make_hf("t5"))  # peaked logits: greedy choices are not near-ties that rounding could flip
    path = save_tiny(hf, tmp_path)
    hf_half = hf_pair(hf, path, dtype)
    model = HookedEncoderDecoder.from_pretrained(path, dtype=dtype)
    src, src_mask, _, _ = padded_seq2seq_batch(first_token=0)
    cfg = greedy_config(hf_half)
    with torch.no_grad():
        expected = hf_half.generate(input_ids=src, attention_mask=src_mask, generation_config=cfg, max_new_tokens=8)
        got = model.generate(src, one_zero_attention_mask=src_mask, max_new_tokens=8, eos_token_id=None)
    assert torch.equal(got[:, : expected.shape[1]], expected)


AUDIO = {
    "hubert_ctc": (HubertForCTC, HubertConfig, dict(do_stable_layer_norm=False, feat_extract_norm="group"), False),
    "wav2vec2_ctc_pre_ln": (
        Wav2Vec2ForCTC,
        Wav2Vec2Config,
        dict(do_stable_layer_norm=True, feat_extract_norm="layer", conv_bias=True),
        True,
    ),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("variant", list(AUDIO))
def test_audio_encoder_half_precision(tmp_path, variant, dtype):
    hf_cls, cfg_cls, overrides, hf_mask = AUDIO[variant]
    hf = hf_cls(cfg_cls(**tiny_kwargs(**overrides))).eval()
    randomize_all(hf)
    path, fe = save_checkpoint(hf, tmp_path, return_attention_mask=hf_mask)
    hf_half = hf_pair(hf, path, dtype)
    model = HookedAudioEncoder.from_pretrained(path, dtype=dtype)
    waves: list[np.ndarray] = waveforms()
    inputs = fe(waves, sampling_rate=16000, padding=True, return_tensors="pt")
    half_inputs = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}
    with torch.no_grad():
        ref = hf(**inputs, output_hidden_states=True, output_attentions=True)
        half = hf_half(**half_inputs, output_hidden_states=True, output_attentions=True)
        out, cache = model.run_with_cache(waves, return_type="all", sampling_rate=16000)
        fast = model(waves, sampling_rate=16000)
    mask = out.frame_mask
    check("logits", out.logits, half.logits, ref.logits, mask)
    check("logits (no hooks)", fast, half.logits, ref.logits, mask)
    for i in range(model.cfg.n_layers):
        check(f"resid_post {i}", cache["resid_post", i], half.hidden_states[i + 1], ref.hidden_states[i + 1], mask)
        check_patterns(f"pattern {i}", cache["pattern", i], half.attentions[i], ref.attentions[i], mask)
