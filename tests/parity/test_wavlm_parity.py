"""WavLM parity against HF: every residual, every head's attention pattern, the gated position bias of every
block, final outputs and the CTC head; post-LN base and pre-LN large ("stable layer norm") layouts, padded
batches of unequal lengths, odd sizes.

HF returns WavLM attentions averaged over heads (``F.multi_head_attention_forward``'s default), so the
per-head patterns and the gated bias are read from that call with ``average_attn_weights=False``.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers import WavLMConfig, WavLMForCTC, WavLMModel

from encoderlens import HookedAudioEncoder
from tests.conftest import masked_max_diff, pattern_max_diff
from tests.parity.test_audio_parity import check_every_layer, randomize_all, save_checkpoint, tiny_kwargs, waveforms

ATOL = 1e-4

VARIANTS = {
    # name: (HF class, config overrides, HF mask policy of the feature extractor)
    "base_post_ln_group": (
        WavLMModel,
        dict(do_stable_layer_norm=False, feat_extract_norm="group", num_buckets=16, max_bucket_distance=20),
        False,
    ),
    "large_pre_ln_layer": (
        WavLMModel,
        dict(do_stable_layer_norm=True, feat_extract_norm="layer", conv_bias=True, hidden_act="gelu_new"),
        True,
    ),
    "ctc_post_ln": (
        WavLMForCTC,
        dict(do_stable_layer_norm=False, feat_extract_norm="layer", num_buckets=10, max_bucket_distance=30),
        True,
    ),
    "ctc_pre_ln": (
        WavLMForCTC,
        dict(do_stable_layer_norm=True, feat_extract_norm="layer", num_buckets=32, max_bucket_distance=40),
        True,
    ),
}


def make_wavlm(hf_cls, overrides):
    hf = hf_cls(WavLMConfig(**tiny_kwargs(**overrides))).eval()
    randomize_all(hf)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith(("gru_rel_pos_const", "rel_attn_embed.weight", "gru_rel_pos_linear.weight")):
                p.copy_(torch.randn(p.shape, generator=g))
    return hf


def record_per_head(monkeypatch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(per-head pattern, gated bias) of every HF WavLM attention call, in call order."""
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = F.multi_head_attention_forward

    def wrapper(*args, **kwargs):
        per_head = original(*args, **{**kwargs, "average_attn_weights": False})[1]
        calls.append((per_head, kwargs["attn_mask"]))
        return original(*args, **kwargs)

    monkeypatch.setattr(F, "multi_head_attention_forward", wrapper)
    return calls


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_wavlm_parity_every_layer(tmp_path, monkeypatch, variant):
    hf_cls, overrides, hf_mask = VARIANTS[variant]
    hf = make_wavlm(hf_cls, overrides)
    path, fe = save_checkpoint(hf, tmp_path, return_attention_mask=hf_mask)
    model = HookedAudioEncoder.from_pretrained(path)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    assert model.cfg.stack.norm_position == ("pre" if overrides["do_stable_layer_norm"] else "post")
    waves = waveforms()
    inputs = fe(waves, sampling_rate=16000, padding=True, return_tensors="pt")
    calls = record_per_head(monkeypatch)
    with torch.no_grad():
        hf_out = hf(**inputs, output_hidden_states=True, output_attentions=True)
        out, cache = model.run_with_cache(waves, return_type="all", sampling_rate=16000)
    monkeypatch.undo()
    mask = out.frame_mask
    batch, frames = mask.shape
    assert len(calls) == n_layers

    # the shared (ungated) bias, and every block's gate and gated bias
    bias = cache["hook_position_bias"]
    assert bias.shape == (1, n_heads, frames, frames)
    base = getattr(hf, hf.base_model_prefix, hf)
    hf_bias = base.encoder.layers[0].attention.compute_bias(frames, frames)
    assert (bias[0] - hf_bias).abs().max() < ATOL
    for i, (per_head, gated) in enumerate(calls):
        ours_gated = cache[f"blocks.{i}.attn.hook_gated_position_bias"]
        assert ours_gated.shape == (batch, n_heads, frames, frames)
        assert (ours_gated - gated.view(batch, n_heads, frames, frames)).abs().max() < ATOL, i
        gate = cache[f"blocks.{i}.attn.hook_position_gate"]
        assert gate.shape == (batch, frames, n_heads)
        assert torch.allclose(ours_gated, gate.transpose(1, 2)[..., None] * bias)
        assert pattern_max_diff(cache["pattern", i], per_head, mask) < ATOL, i
        # the biased scores: softmax of them is the pattern, and they include the gated bias
        assert torch.allclose(cache["attn_scores", i].softmax(-1), cache["pattern", i], atol=1e-6)

    # HF's returned attentions are head averages: compare ours averaged
    for i in range(n_layers):
        avg = cache["pattern", i].mean(1, keepdim=True).expand(-1, n_heads, -1, -1)
        assert pattern_max_diff(avg, hf_out.attentions[i], mask) < ATOL, i
    per_head_out = SimpleNamespace(hidden_states=hf_out.hidden_states, attentions=[c[0] for c in calls])
    check_every_layer(model, per_head_out, cache, mask, n_layers)

    last = hf_out.logits if hasattr(hf_out, "logits") else hf_out.last_hidden_state
    ours_last = out.logits if out.logits is not None else out.hidden
    assert masked_max_diff(ours_last, last, mask) < ATOL
    assert (model.ctc_head is not None) == hasattr(hf_out, "logits")
    with torch.no_grad():
        fast = model(waves)  # no pattern hooks: the SDPA path
    assert masked_max_diff(fast, last, mask) < ATOL


def test_wavlm_hook_names_and_intervention(tmp_path):
    hf = make_wavlm(WavLMModel, dict(do_stable_layer_norm=False, feat_extract_norm="group"))
    path, _ = save_checkpoint(hf, tmp_path, return_attention_mask=False)
    model = HookedAudioEncoder.from_pretrained(path)
    names = model.hook_names()
    assert "hook_position_bias" in names
    assert {f"blocks.{i}.attn.hook_position_gate" for i in range(5)} <= set(names)
    waves = waveforms()
    # a gate of 0 removes the position bias from a block: the same as zeroing its gated bias
    with torch.no_grad():
        a = model.run_with_hooks(waves, fwd_hooks=[("blocks.2.attn.hook_position_gate", lambda t, hook: t * 0)])
        b = model.run_with_hooks(waves, fwd_hooks=[("blocks.2.attn.hook_gated_position_bias", lambda t, hook: t * 0)])
        clean = model(waves)
    assert torch.allclose(a, b, atol=1e-6)
    assert not torch.allclose(a, clean, atol=1e-3)
