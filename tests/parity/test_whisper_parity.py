"""Whisper parity against HF: log-mel features (80 and 128 bins) against ``WhisperFeatureExtractor``, the
conv stem, every encoder and decoder layer, self- and cross-attention patterns, logits, gradients to the
waveform, and greedy ``generate`` token for token with the forced prompt and suppressed tokens.

Tiny random models keep Whisper's real audio geometry (30 s chunks, 3000 mel frames, 1500 encoder
positions) with d_model 36 and 3 heads; decoder batches are padded and 23 tokens long.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import (
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperModel,
)

from encoderlens import HookedWhisper
from tests.conftest import masked_max_diff, pattern_max_diff, randomize_norms, save_tiny

ATOL = 1e-4
VOCAB = 99
# special tokens at the top of the vocabulary, as in Whisper's: HF reads ids above <|notimestamps|> as timestamps
START, EOS, PAD = 93, 2, 1
LANGS = {"<|en|>": 94, "<|de|>": 95}
TASKS = {"transcribe": 96, "translate": 97}
NO_TS = 98
RATE = 16000


def whisper_config(**kw) -> WhisperConfig:
    base = dict(
        vocab_size=VOCAB,
        num_mel_bins=80,
        d_model=36,
        encoder_layers=2,
        decoder_layers=3,
        encoder_attention_heads=3,
        decoder_attention_heads=3,
        encoder_ffn_dim=37,
        decoder_ffn_dim=41,
        max_source_positions=1500,
        max_target_positions=40,
        pad_token_id=PAD,
        eos_token_id=EOS,
        bos_token_id=EOS,
        decoder_start_token_id=START,
        activation_function="gelu",
        attn_implementation="eager",
    )
    base.update(kw)
    return WhisperConfig(**base)


def make_whisper(head: bool = True, seed: int = 0, **kw):
    torch.manual_seed(seed)
    cfg = whisper_config(**kw)
    hf = (WhisperForConditionalGeneration if head else WhisperModel)(cfg)
    randomize_norms(hf)
    with torch.no_grad():  # larger conv and embedding weights: attention patterns far from uniform
        base = hf.model if head else hf
        base.encoder.conv1.weight.mul_(4.0)
        base.decoder.embed_tokens.weight.normal_(0.0, 1.0)
        base.decoder.embed_positions.weight.normal_(0.0, 0.5)
    return hf.eval()


def speech_like(lengths=(RATE * 2, 11_000, RATE * 29 + 123), seed: int = 0) -> list[np.ndarray]:
    """Audio-like test signals: harmonic chirps with an envelope, noise, silence; unequal lengths."""
    g = np.random.default_rng(seed)
    out = []
    for i, n in enumerate(lengths):
        t = np.arange(n) / RATE
        f0 = 120 + 60 * i + 40 * np.sin(2 * np.pi * 0.7 * t)
        phase = 2 * np.pi * np.cumsum(f0) / RATE
        voiced = sum(np.sin(k * phase) / k for k in range(1, 6))
        env = 0.5 * (1 + np.sin(2 * np.pi * 2.5 * t + i))
        x = 0.2 * env * voiced + 0.01 * g.standard_normal(n)
        x[n // 3 : n // 3 + n // 10] = 0.0  # a pause
        out.append(x.astype(np.float32))
    return out


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_equals_hf_feature_extractor(n_mels):
    fe = WhisperFeatureExtractor(feature_size=n_mels)
    hf = make_whisper(num_mel_bins=n_mels)
    model = HookedWhisper.from_pretrained(hf_model=hf)
    waves = speech_like()
    theirs = fe(waves, sampling_rate=RATE, return_tensors="pt").input_features
    with torch.no_grad():
        ours = model.features(waves)
    assert ours.shape == (3, 3000, n_mels)
    assert (ours.transpose(1, 2) - theirs).abs().max() < 1e-5
    # the filters themselves
    assert np.abs(model.mel.filters.double().numpy() - fe.mel_filters).max() < 1e-7


@pytest.mark.parametrize("via,n_mels", [("folder", 80), ("hf_model", 128)])
def test_whisper_parity_every_layer(tmp_path, via, n_mels):
    hf = make_whisper(num_mel_bins=n_mels)
    if via == "folder":
        model = HookedWhisper.from_pretrained(save_tiny(hf, tmp_path))
    else:
        model = HookedWhisper.from_pretrained(hf_model=hf)
    waves = speech_like()
    feats = WhisperFeatureExtractor(feature_size=n_mels)(waves, sampling_rate=RATE, return_tensors="pt").input_features
    g = torch.Generator().manual_seed(1)
    dec = torch.randint(3, VOCAB, (3, 23), generator=g)
    dec[:, 0] = START
    dec_mask = torch.ones_like(dec)
    dec_mask[1, 20:] = 0
    dec_mask[2, 5:] = 0
    enc_mask = torch.ones(3, 1500, dtype=torch.long)
    captured = {}
    base = hf.model
    handles = [
        base.encoder.conv1.register_forward_hook(lambda m, i, o: captured.__setitem__("conv1", o)),
        base.encoder.conv2.register_forward_hook(lambda m, i, o: captured.__setitem__("conv2", o)),
    ]
    with torch.no_grad():
        out = hf(
            input_features=feats,
            decoder_input_ids=dec,
            decoder_attention_mask=dec_mask,
            output_hidden_states=True,
            output_attentions=True,
        )
        logits, cache = model.run_with_cache(waves, dec, decoder_attention_mask=dec_mask)
        fast = model(waves, dec, decoder_attention_mask=dec_mask)
    for h in handles:
        h.remove()
    assert masked_max_diff(logits, out.logits, dec_mask) < ATOL
    assert masked_max_diff(fast, out.logits, dec_mask) < ATOL
    assert (cache["mel.hook_mel"].transpose(1, 2) - feats).abs().max() < 1e-5
    gelu = torch.nn.functional.gelu
    assert (cache["encoder.stem.hook_conv1"] - gelu(captured["conv1"]).transpose(1, 2)).abs().max() < ATOL
    assert (cache["encoder.stem.hook_conv2"] - gelu(captured["conv2"]).transpose(1, 2)).abs().max() < ATOL
    for side, hidden, attn, mask, n in (
        ("encoder", out.encoder_hidden_states, out.encoder_attentions, enc_mask, 2),
        ("decoder", out.decoder_hidden_states, out.decoder_attentions, dec_mask, 3),
    ):
        assert len(hidden) == n + 1
        assert masked_max_diff(cache[f"{side}.hook_full_embed"], hidden[0], mask) < ATOL, side
        for i in range(n):
            assert masked_max_diff(cache[f"{side}.blocks.{i}.hook_resid_pre"], hidden[i], mask) < ATOL, (side, i)
            assert pattern_max_diff(cache[f"{side}.blocks.{i}.attn.hook_pattern"], attn[i], mask) < ATOL, (side, i)
        # HF's last hidden state is after the final layer norm
        assert masked_max_diff(cache[f"{side}.hook_final_norm"], hidden[n], mask) < ATOL, side
    for i in range(3):
        ours = cache[f"decoder.blocks.{i}.cross_attn.hook_pattern"]
        assert ours.shape == (3, 3, 23, 1500)
        assert pattern_max_diff(ours, out.cross_attentions[i], dec_mask) < ATOL, i
    assert masked_max_diff(cache["encoder.hook_final_norm"], out.encoder_last_hidden_state, enc_mask) < ATOL
    # HF-layout features give the same result as the waveforms
    with torch.no_grad():
        from_feats = model(input_features=feats, decoder_input=dec, decoder_attention_mask=dec_mask)
    assert masked_max_diff(from_feats, out.logits, dec_mask) < ATOL


def test_whisper_model_without_head(tmp_path):
    hf = make_whisper(head=False)
    model = HookedWhisper.from_pretrained(save_tiny(hf, tmp_path))
    assert model.lm_head is None
    waves = speech_like((RATE, 5000, 7000))
    feats = WhisperFeatureExtractor()(waves, sampling_rate=RATE, return_tensors="pt").input_features
    dec = torch.randint(3, VOCAB, (3, 21))
    with torch.no_grad():
        theirs = hf(input_features=feats, decoder_input_ids=dec).last_hidden_state
        ours = model(waves, dec)
    assert (ours - theirs).abs().max() < ATOL
    with pytest.raises(ValueError, match="needs an LM head"):
        model(waves, dec, return_type="logits")


def test_gradients_reach_the_waveform():
    model = HookedWhisper.from_pretrained(hf_model=make_whisper())
    wave = torch.tensor(speech_like((RATE,))[0], requires_grad=True)
    logits = model(wave, torch.tensor([[START, 94, 96]]))
    logits[0, -1].logsumexp(-1).backward()
    assert wave.grad is not None and wave.grad.shape == wave.shape
    assert wave.grad.abs().sum() > 0
    # and a backward hook on hook_waveform sees a gradient for array inputs too
    seen = []
    model.hook_waveform.add_hook(lambda g, hook: seen.append(g), dir="bwd")
    out = model(speech_like((RATE,))[0], torch.tensor([[START]]))
    out.sum().backward()
    model.reset_hooks()
    assert seen and seen[0].shape == (1, 30 * RATE) and seen[0].abs().sum() > 0


def _generation_config(**kw) -> GenerationConfig:
    base = dict(
        decoder_start_token_id=START,
        eos_token_id=EOS,
        pad_token_id=PAD,
        lang_to_id=LANGS,
        task_to_id=TASKS,
        no_timestamps_token_id=NO_TS,
        is_multilingual=True,
        suppress_tokens=[],
        begin_suppress_tokens=[],
        max_length=40,
    )
    base.update(kw)
    return GenerationConfig(**base)


def _generating(seed: int = 4):
    """A tiny Whisper whose greedy output varies with the audio and over time.

    A tied random head mostly copies the current token, so this one has a random untied ``proj_out``
    (the tied head is covered by the forward parity tests); larger conv and cross-attention weights make
    the decoder read the audio.
    """
    hf = make_whisper(seed=seed, tie_word_embeddings=False)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        hf.proj_out.weight.copy_(torch.randn(hf.proj_out.weight.shape, generator=g))
        hf.model.encoder.conv2.weight.mul_(4.0)
        for name, p in hf.named_parameters():
            if "encoder_attn." in name and name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(4.0)
            if "encoder_attn." in name and name.endswith(("v_proj.weight", "out_proj.weight")):
                p.mul_(3.0)
    return hf


@pytest.mark.parametrize("language,task", [("en", None), ("de", "translate"), ("german", "transcribe")])
def test_greedy_generate_equals_hf(tmp_path, language, task):
    hf = _generating()
    waves = speech_like((RATE * 28, RATE * 9, RATE * 25), seed=7)
    feats = WhisperFeatureExtractor()(waves, sampling_rate=RATE, return_tensors="pt").input_features
    # tokens the unconstrained model likes, suppressed so that the rules change the output
    hf.generation_config = _generation_config()
    free = HookedWhisper.from_pretrained(hf_model=hf, generation_config=hf.generation_config)
    base_out = free.generate(waves, language=language, task=task, max_new_tokens=20)
    prompt_len = 4
    first = base_out[:, prompt_len].unique().tolist()
    later = [t for t in base_out[:, prompt_len + 2 :].unique().tolist() if t not in (EOS, PAD)][:3]
    gen_cfg = _generation_config(suppress_tokens=later, begin_suppress_tokens=[EOS, *first])
    hf.generation_config = gen_cfg
    gen_cfg.save_pretrained(save_tiny(hf, tmp_path))
    model = HookedWhisper.from_pretrained(tmp_path / "ckpt")
    assert model.decoding.suppress_tokens == tuple(later)
    expected_prompt = [START, model.decoding.language_id(language), TASKS[task or "transcribe"], NO_TS]
    assert model.prompt_ids(language, task).tolist() == [expected_prompt]
    with torch.no_grad():
        theirs = hf.generate(input_features=feats, language=language, task=task, max_new_tokens=20)
    ours = model.generate(waves, language=language, task=task, max_new_tokens=20)
    ours_new = ours[:, prompt_len:]
    assert not torch.equal(ours, base_out)  # the suppression rules matter on this input
    assert not bool(torch.isin(ours_new, torch.tensor(later)).any())
    assert not bool(torch.isin(ours_new[:, 0], torch.tensor([EOS, *first])).any())
    assert ours_new.shape[1] > 3
    assert torch.equal(ours_new, theirs)  # HF returns the generated tokens only (short form); we keep the prompt


@pytest.mark.parametrize("forced", [None, [[1, None], [2, TASKS["transcribe"]]]])
def test_language_detection_equals_hf(forced):
    """No language: detected per row as HF does (with and without the checkpoint's forced_decoder_ids)."""
    hf = _generating()
    hf.generation_config = _generation_config(forced_decoder_ids=forced)
    model = HookedWhisper.from_pretrained(hf_model=hf, generation_config=hf.generation_config)
    waves = speech_like((RATE * 28, RATE * 9, RATE * 25), seed=7)
    feats = WhisperFeatureExtractor()(waves, sampling_rate=RATE, return_tensors="pt").input_features
    with torch.no_grad():
        their_langs = hf.detect_language(input_features=feats)
        theirs = hf.generate(input_features=feats, max_new_tokens=20)
    assert torch.equal(model.detect_language(waves), their_langs)
    ours = model.generate(waves, max_new_tokens=20)
    prompt_len = 3 if forced is None else 4  # HF adds no task token without language, task or forced ids
    assert torch.equal(ours[:, 1], their_langs)
    assert torch.equal(ours[:, prompt_len:], theirs)
    # a forced language logit that the model would not pick: detection must follow the logits
    other = [v for v in LANGS.values() if v != int(their_langs[0])][0]
    with torch.no_grad():
        hf.proj_out.weight[other] += 50 * hf.model.decoder.layer_norm.weight.sign()
    model = HookedWhisper.from_pretrained(hf_model=hf, generation_config=hf.generation_config)
    assert model.detect_language(waves).tolist() == [other] * 3


@pytest.mark.parametrize("max_initial", [None, 3])
def test_timestamp_generate_equals_hf(max_initial):
    """timestamps=True: HF's timestamp rules (pairs, monotone, first token a timestamp, forced by mass)."""
    hf = _generating()
    no_ts = 70  # ids 71..98 are timestamps (HF reads every id above <|notimestamps|> as one)
    hf.generation_config = _generation_config(no_timestamps_token_id=no_ts, max_initial_timestamp_index=max_initial)
    model = HookedWhisper.from_pretrained(hf_model=hf, generation_config=hf.generation_config)
    waves = speech_like((RATE * 28, RATE * 9, RATE * 25), seed=7)
    feats = WhisperFeatureExtractor()(waves, sampling_rate=RATE, return_tensors="pt").input_features
    kw = dict(language="en", max_new_tokens=20)
    with torch.no_grad():  # one 30 s window: HF's single underlying generate call, prompt included
        theirs = hf.generate(input_features=feats, return_timestamps=True, force_unique_generate_call=True, **kw)
    ours = model.generate(waves, timestamps=True, **kw)
    assert ours[0, :3].tolist() == [START, LANGS["<|en|>"], TASKS["transcribe"]]  # no <|notimestamps|>
    new = ours[:, 3:]
    assert bool((new[:, 0] > no_ts).all())  # the first generated token is a timestamp
    if max_initial is not None:
        assert bool((new[:, 0] <= no_ts + 1 + max_initial).all())
    assert bool(((new > no_ts) & (new != PAD)).sum(dim=1).ge(2).all())
    assert torch.equal(ours, theirs)
    without = HookedWhisper.from_pretrained(
        hf_model=hf, generation_config=_generation_config(no_timestamps_token_id=None)
    )
    with pytest.raises(ValueError, match="timestamps=True needs a checkpoint with timestamp tokens"):
        without.generate(waves, timestamps=True, **kw)


def test_generate_hooks_fire_every_step():
    hf = _generating()
    model = HookedWhisper.from_pretrained(hf_model=hf, generation_config=_generation_config())
    steps = []
    with model.hooks(fwd_hooks=[("decoder.blocks.0.cross_attn.hook_pattern", lambda t, hook: steps.append(t.shape))]):
        tokens = model.generate(speech_like((RATE,)), language="en", max_new_tokens=6, decoder_input=None)
    assert len(steps) == tokens.shape[1] - 4
    assert steps[0] == (1, 3, 4, 1500) and all(s == (1, 3, 1, 1500) for s in steps[1:])


def test_bad_inputs_get_clear_errors():
    model = HookedWhisper.from_pretrained(hf_model=make_whisper(), generation_config=_generation_config())
    with pytest.raises(ValueError, match="31.00 s long.*Split it into chunks"):
        model.features(np.zeros(31 * RATE, dtype=np.float32))
    with pytest.raises(ValueError, match="resample=True"):
        model.features(np.zeros(8000, dtype=np.float32), sampling_rate=8000)
    resampled = model.features(np.zeros(8000, dtype=np.float32), sampling_rate=8000, resample=True)
    assert resampled.shape == (1, 3000, 80)
    with pytest.raises(ValueError, match="language='fr'.*not a language token of this checkpoint"):
        model.prompt_ids(language="fr")
    with pytest.raises(ValueError, match="no language given"):
        model.prompt_ids()
    with pytest.raises(ValueError, match="exactly one of audio"):
        model.detect_language()
    with pytest.raises(ValueError, match="task must be"):
        model.prompt_ids(language="en", task="summarize")
    with pytest.raises(ValueError, match="1500 positions"):
        model(input_features=torch.zeros(1, 80, 200), decoder_input=torch.tensor([[START]]))
    english_only = HookedWhisper.from_pretrained(
        hf_model=make_whisper(), generation_config=_generation_config(lang_to_id=None, task_to_id=None)
    )
    assert english_only.prompt_ids().tolist() == [[START, NO_TS]]
    with pytest.raises(ValueError, match="English-only"):
        english_only.prompt_ids(language="en")


def test_model_contract_and_generic_loader(tmp_path):
    import encoderlens

    hf = make_whisper()
    model = encoderlens.from_pretrained(save_tiny(hf, tmp_path))
    assert isinstance(model, HookedWhisper) and model.streams == ("encoder", "decoder")
    ex = model.example_input()
    batch = model.prepare_input(ex.input, **ex.options)
    assert batch.masks["encoder"].shape == (1, 1500) and batch.labels["encoder"][0][1] == "0.020s"
    with torch.no_grad():
        logits = model.run_prepared(batch)
        direct = model(ex.input, ex.options["decoder_input"])
    assert torch.equal(logits, direct)
    assert model.readout("decoder") is not None and model.readout("encoder") is None
    assert model.cross_attention_source("decoder") == "encoder"
