"""wav2vec2 / HuBERT parity against HF: conv outputs, projected features, positional conv, every residual,
every attention pattern, final outputs and heads; padded batches of unequal lengths, odd sizes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import (
    HubertConfig,
    HubertForCTC,
    HubertModel,
    Wav2Vec2Config,
    Wav2Vec2CTCTokenizer,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForCTC,
    Wav2Vec2ForPreTraining,
    Wav2Vec2Model,
)

from encoderlens import HookedAudioEncoder
from tests.conftest import masked_max_diff, pattern_max_diff, raises_input_error, randomize_norms, save_claiming

ATOL = 1e-4
LENGTHS = (617, 403, 250)  # samples; the tiny conv stack (kernels 10, 3; strides 5, 2) needs >= 20
VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ", "'"]


def tiny_kwargs(**kw) -> dict:
    base = dict(
        hidden_size=36,
        num_hidden_layers=5,
        num_attention_heads=3,
        intermediate_size=37,
        conv_dim=(7, 11),
        conv_kernel=(10, 3),
        conv_stride=(5, 2),
        num_conv_pos_embeddings=5,
        num_conv_pos_embedding_groups=3,
        vocab_size=len(VOCAB),
        layer_norm_eps=1e-2,  # not the default 1e-5: a converter ignoring the config's eps cannot pass
        attn_implementation="eager",
    )
    base.update(kw)
    return base


def randomize_all(hf: torch.nn.Module) -> None:
    """randomize_norms, plus the weight-norm gain and BatchNorm statistics (which it does not reach)."""
    randomize_norms(hf)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith(("original0", "weight_g")):
                p.mul_(torch.rand(p.shape, generator=g) + 0.5)
        for name, b in hf.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.3)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)


def waveforms(seed: int = 3) -> list[np.ndarray]:
    g = np.random.default_rng(seed)
    return [(0.3 * g.standard_normal(n)).astype(np.float32) for n in LENGTHS]


def save_checkpoint(hf, tmp_path, return_attention_mask: bool, do_normalize: bool = True, tokenizer: bool = False):
    path = tmp_path / "ckpt"
    hf.save_pretrained(path)
    fe = Wav2Vec2FeatureExtractor(
        sampling_rate=16000, do_normalize=do_normalize, return_attention_mask=return_attention_mask
    )
    fe.save_pretrained(path)
    if tokenizer:
        vocab = tmp_path / "vocab.json"
        vocab.write_text(json.dumps({t: i for i, t in enumerate(VOCAB)}))
        Wav2Vec2CTCTokenizer(
            str(vocab), unk_token="<unk>", pad_token="<pad>", word_delimiter_token="|"
        ).save_pretrained(path)
    return path, fe


def capture_hf(hf) -> tuple[dict, list]:
    """Forward hooks on HF's front-end modules: conv layer outputs, feature projection, positional conv."""
    base = getattr(hf, hf.base_model_prefix, hf)
    got: dict = {}
    handles = []
    for j, layer in enumerate(base.feature_extractor.conv_layers):
        handles.append(layer.register_forward_hook(lambda m, i, o, j=j: got.__setitem__(f"conv{j}", o)))
    handles.append(base.feature_projection.register_forward_hook(lambda m, i, o: got.__setitem__("proj", o)))
    handles.append(base.encoder.pos_conv_embed.register_forward_hook(lambda m, i, o: got.__setitem__("pos", o)))
    return got, handles


def check_every_layer(model, hf_out, cache, frame_mask, n_layers):
    hidden = hf_out.hidden_states
    assert len(hidden) == n_layers + 1
    for i in range(n_layers):
        assert masked_max_diff(cache["resid_pre", i], hidden[i], frame_mask) < ATOL, i
        assert masked_max_diff(cache[model.stream_spec(None).resid_hook(i)], hidden[i + 1], frame_mask) < ATOL, i
        assert pattern_max_diff(cache["pattern", i], hf_out.attentions[i], frame_mask) < ATOL, i
    assert masked_max_diff(cache["hook_full_embed"], hidden[0], frame_mask) < ATOL


VARIANTS = {
    # name: (HF class, config class, config overrides, HF mask policy of the feature extractor)
    "hubert_post_ln_group": (
        HubertModel,
        HubertConfig,
        dict(do_stable_layer_norm=False, feat_extract_norm="group", conv_bias=False, hidden_act="gelu"),
        False,
    ),
    "hubert_pre_ln_layer": (
        HubertModel,
        HubertConfig,
        dict(
            do_stable_layer_norm=True,
            feat_extract_norm="layer",
            conv_bias=True,
            num_conv_pos_embeddings=4,
            feat_proj_layer_norm=False,
            hidden_act="gelu_new",
        ),
        True,
    ),
    "hubert_post_ln_pos_batch_norm": (
        HubertModel,
        HubertConfig,
        dict(do_stable_layer_norm=False, feat_extract_norm="layer", conv_pos_batch_norm=True, hidden_act="relu"),
        True,
    ),
    "wav2vec2_post_ln_group": (
        Wav2Vec2Model,
        Wav2Vec2Config,
        dict(
            do_stable_layer_norm=False,
            feat_extract_norm="group",
            conv_bias=True,
            num_conv_pos_embeddings=4,
            feat_extract_activation="relu",
        ),
        False,
    ),
    "wav2vec2_pre_ln_layer": (
        Wav2Vec2Model,
        Wav2Vec2Config,
        dict(do_stable_layer_norm=True, feat_extract_norm="layer", conv_bias=False, hidden_act="gelu_new"),
        True,
    ),
    "hubert_ctc_post_ln": (
        HubertForCTC,
        HubertConfig,
        dict(do_stable_layer_norm=False, feat_extract_norm="group", conv_bias=True),
        False,
    ),
    "hubert_ctc_pre_ln": (
        HubertForCTC,
        HubertConfig,
        dict(do_stable_layer_norm=True, feat_extract_norm="layer", conv_bias=True, num_conv_pos_embeddings=4),
        True,
    ),
    "wav2vec2_ctc_post_ln": (
        Wav2Vec2ForCTC,
        Wav2Vec2Config,
        dict(do_stable_layer_norm=False, feat_extract_norm="group"),
        False,
    ),
    "wav2vec2_ctc_pre_ln": (
        Wav2Vec2ForCTC,
        Wav2Vec2Config,
        dict(do_stable_layer_norm=True, feat_extract_norm="layer", conv_bias=True, hidden_act="relu"),
        True,
    ),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_audio_parity_every_layer(tmp_path, variant):
    hf_cls, cfg_cls, overrides, hf_mask = VARIANTS[variant]
    hf = hf_cls(cfg_cls(**tiny_kwargs(**overrides))).eval()
    randomize_all(hf)
    path, fe = save_checkpoint(hf, tmp_path, return_attention_mask=hf_mask)
    model = HookedAudioEncoder.from_pretrained(path)
    assert not any("hf" in name for name, _ in model.named_modules())
    waves = waveforms()
    # HF pipeline: its feature extractor (mask only where it returns one), then the model
    inputs = fe(waves, sampling_rate=16000, padding=True, return_tensors="pt")
    assert ("attention_mask" in inputs) == hf_mask
    got, handles = capture_hf(hf)
    with torch.no_grad():
        hf_out = hf(**inputs, output_hidden_states=True, output_attentions=True)
        out, cache = model.run_with_cache(waves, return_type="all", sampling_rate=16000)
    for h in handles:
        h.remove()

    # the input values our loader made are HF's feature-extractor output
    assert (out.batch.input_values - inputs["input_values"]).abs().max() < 1e-5
    assert out.batch.use_attention_mask == hf_mask
    mask = out.frame_mask
    base = getattr(hf, hf.base_model_prefix, hf)
    hf_mask_frames = base._get_feature_vector_attention_mask(mask.shape[1], torch.tensor(_sample_mask(waves)))
    assert torch.equal(mask, hf_mask_frames)

    # conv layers: identical on every frame (both sides run the same padded input)
    for j in range(len(model.cfg.frontend.conv_dim)):
        ours = cache[f"frontend.conv.{j}.hook_out"]
        assert ours.shape == got[f"conv{j}"].transpose(1, 2).shape
        assert (ours - got[f"conv{j}"].transpose(1, 2)).abs().max() < ATOL, j
    assert (cache["hook_features"] - got[f"conv{j}"].transpose(1, 2)).abs().max() < ATOL
    hf_proj = got["proj"][0] if isinstance(got["proj"], tuple) else got["proj"]
    assert masked_max_diff(cache["hook_projected"], hf_proj, mask) < ATOL
    if isinstance(got["proj"], tuple):  # wav2vec2 also returns the normalised features (extract_features)
        assert (cache["hook_features_normed"] - got["proj"][1]).abs().max() < ATOL
    if hf_mask:  # HF zeroes padded frames before the positional conv, and so do we
        assert cache["hook_projected"][~mask].abs().max() == 0
    assert (cache["hook_pos_conv"] - got["pos"]).abs().max() < ATOL

    check_every_layer(model, hf_out, cache, mask, model.cfg.n_layers)
    last = hf_out.logits if hasattr(hf_out, "logits") else hf_out.last_hidden_state
    ours_last = out.logits if out.logits is not None else out.hidden
    assert masked_max_diff(ours_last, last, mask) < ATOL
    if hasattr(hf_out, "logits"):
        assert model.ctc_head is not None
        assert masked_max_diff(model(waves), hf_out.logits, mask) < ATOL  # return_type="auto" -> logits
    else:
        assert model.ctc_head is None
        assert masked_max_diff(model(waves), hf_out.last_hidden_state, mask) < ATOL


def _sample_mask(waves) -> list[list[int]]:
    longest = max(len(w) for w in waves)
    return [[1] * len(w) + [0] * (longest - len(w)) for w in waves]


@pytest.mark.parametrize("stable", [False, True])
def test_group_norm_model_with_forced_mask(tmp_path, stable):
    """use_attention_mask=True on a group-norm checkpoint = HF's feature extractor with return_attention_mask=True."""
    cfg = Wav2Vec2Config(**tiny_kwargs(do_stable_layer_norm=stable, feat_extract_norm="group"))
    hf = Wav2Vec2Model(cfg).eval()
    randomize_all(hf)
    path, _ = save_checkpoint(hf, tmp_path, return_attention_mask=False)
    model = HookedAudioEncoder.from_pretrained(path)
    waves = waveforms(5)
    inputs = Wav2Vec2FeatureExtractor(return_attention_mask=True)(
        waves, sampling_rate=16000, padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        hf_out = hf(**inputs, output_hidden_states=True, output_attentions=True)
        out, cache = model.run_with_cache(waves, return_type="all", use_attention_mask=True)
    assert (out.batch.input_values - inputs["input_values"]).abs().max() < 1e-5
    check_every_layer(model, hf_out, cache, out.frame_mask, cfg.num_hidden_layers)
    assert masked_max_diff(out.hidden, hf_out.last_hidden_state, out.frame_mask) < ATOL
    # HF-made (input_values, attention_mask) passed straight in: the given mask is used
    with torch.no_grad():
        direct = model(
            inputs["input_values"], attention_mask=inputs["attention_mask"], normalize=False, return_type="hidden"
        )
    assert masked_max_diff(direct, hf_out.last_hidden_state, out.frame_mask) < ATOL
    # and without the mask the padded items really do differ (the setting matters, so the test can fail)
    no_mask = model(waves, return_type="hidden", use_attention_mask=False)
    assert masked_max_diff(no_mask, hf_out.last_hidden_state, out.frame_mask) > 1e-3


@pytest.mark.parametrize("stable", [False, True])
def test_wav2vec2_pretraining_head(tmp_path, stable):
    cfg = Wav2Vec2Config(
        **tiny_kwargs(
            do_stable_layer_norm=stable,
            feat_extract_norm="layer" if stable else "group",
            num_codevector_groups=2,
            num_codevectors_per_group=7,
            codevector_dim=10,
            proj_codevector_dim=9,
        )
    )
    hf = Wav2Vec2ForPreTraining(cfg).eval()
    randomize_all(hf)
    path, fe = save_checkpoint(hf, tmp_path, return_attention_mask=stable)
    model = HookedAudioEncoder.from_pretrained(path)
    assert model.quantizer is not None and model.ctc_head is None
    waves = waveforms(7)
    inputs = fe(waves, sampling_rate=16000, padding=True, return_tensors="pt")
    with torch.no_grad():
        hf_out = hf(**inputs, output_hidden_states=True, output_attentions=True)
        out, cache = model.run_with_cache(waves, return_type="all")
    mask = out.frame_mask
    check_every_layer(model, hf_out, cache, mask, cfg.num_hidden_layers)
    pre = out.pretraining
    assert masked_max_diff(pre.projected_states, hf_out.projected_states, mask) < ATOL
    assert (pre.projected_quantized_states - hf_out.projected_quantized_states).abs().max() < ATOL
    assert abs(pre.codevector_perplexity.item() - hf_out.codevector_perplexity.item()) < 1e-4
    assert len(set(pre.codevector_ids.flatten().tolist())) > 1  # codes really vary, so the comparison bites
    assert cache["quantizer.hook_code_logits"].shape == (*mask.shape, 2, 7)

    # SpecAugment masking with given frames (masked_spec_embed), on the encoder alone
    mti = torch.zeros(mask.shape, dtype=torch.bool)
    mti[0, 3:9] = True
    mti[1, 10:12] = True
    with torch.no_grad():
        hf_masked = hf.wav2vec2(**inputs, mask_time_indices=mti).last_hidden_state
        ours_masked = model(waves, return_type="hidden", mask_time_indices=mti)
    assert masked_max_diff(ours_masked, hf_masked, mask) < ATOL
    assert masked_max_diff(ours_masked, out.hidden, mask) > 1e-3


@pytest.mark.parametrize("hf_cls,cfg_cls", [(HubertForCTC, HubertConfig), (Wav2Vec2ForCTC, Wav2Vec2Config)])
def test_transcribe_matches_hf_greedy_decoding(tmp_path, hf_cls, cfg_cls):
    hf = hf_cls(cfg_cls(**tiny_kwargs(do_stable_layer_norm=True, feat_extract_norm="layer"))).eval()
    randomize_all(hf)
    waves = waveforms(11)
    fe = Wav2Vec2FeatureExtractor(return_attention_mask=True)
    inputs = fe(waves, sampling_rate=16000, padding=True, return_tensors="pt")
    with torch.no_grad():
        # a random model's final states vary little over time: centre the head on their mean and scale it up,
        # so the argmax moves between many letters (and rarely hits the blank)
        base = getattr(hf, hf.base_model_prefix)
        mean = base(**inputs).last_hidden_state.mean((0, 1))
        hf.lm_head.weight.mul_(50.0)
        hf.lm_head.bias.copy_(-hf.lm_head.weight @ mean)
        hf.lm_head.bias[hf.config.pad_token_id] -= 3.0
    path, fe = save_checkpoint(hf, tmp_path, return_attention_mask=True, tokenizer=True)
    model = HookedAudioEncoder.from_pretrained(path)
    assert model.tokenizer is not None
    with torch.no_grad():
        logits = hf(**inputs).logits
        texts = model.transcribe(waves)
        single = model.transcribe(waves[1], return_timestamps=True)
    tok = model.tokenizer
    frames = model.num_frames(torch.tensor(LENGTHS))
    expected = [tok.decode(logits[b, : frames[b]].argmax(-1).tolist()) for b in range(len(waves))]
    assert texts == expected
    assert all(len(set(t)) > 2 for t in texts)
    assert isinstance(single.text, str) and single.text == model.transcribe(waves[1])
    assert len(single.tokens) == len(single.start_times) == len(single.end_times)
    assert all(s < e for s, e in zip(single.start_times, single.end_times))
    assert single.end_times[-1] <= LENGTHS[1] / 16000 + 1e-9
    # a file path gives the same as the array (float wav at the model's rate: no resampling, no quantisation)
    import soundfile as sf

    sf.write(tmp_path / "item.wav", waves[1], 16000, subtype="FLOAT")
    assert model.transcribe(tmp_path / "item.wav") == single.text
    assert model.transcribe([str(tmp_path / "item.wav"), waves[0]]) == model.transcribe([waves[1], waves[0]])


def test_pre_ln_decomposition_is_exact_and_ctc_logit_attrs(tmp_path):
    hf = Wav2Vec2ForCTC(Wav2Vec2Config(**tiny_kwargs(do_stable_layer_norm=True, feat_extract_norm="layer"))).eval()
    randomize_all(hf)
    path, _ = save_checkpoint(hf, tmp_path, return_attention_mask=True)
    model = HookedAudioEncoder.from_pretrained(path)
    with torch.no_grad():
        logits, cache = model.run_with_cache(waveforms(13))
    n = model.cfg.n_layers
    for layer in (0, 2, n):
        comps, labels = cache.decompose_resid(layer=layer, return_labels=True)
        target = cache["resid_pre", layer] if layer < n else cache[model.stream_spec(None).resid_hook(n - 1)]
        assert labels[:2] == ["projected", "pos_conv"]
        assert (comps.sum(0) - target).abs().max() < 1e-4, layer
    with torch.no_grad():
        partial = model(waveforms(13), return_type="hidden", stop_at_layer=2)
    assert (partial - cache["resid_pre", 2]).abs().max() < 1e-5
    full = cache.get_full_resid_decomposition(layer=3, expand_neurons=True)
    assert (full.sum(0) - cache["resid_pre", 3]).abs().max() < 1e-4
    # logits from the decomposition: normalise each component by the final norm (its affine is folded
    # into the unembedding the cache uses), project, add the folded bias
    comps = cache.decompose_resid()
    tokens = logits.argmax(-1)
    attrs = cache.logit_attrs(comps, tokens)  # normalises by the cached final-norm scale itself (TL)
    const = (model.ln_final.b @ model.W_U)[tokens] + model.b_U[tokens]
    assert (attrs.sum(0) + const - logits.gather(-1, tokens[..., None])[..., 0]).abs().max() < 1e-4


def test_post_ln_decomposition_raises_by_design(tmp_path):
    hf = HubertForCTC(HubertConfig(**tiny_kwargs())).eval()
    path, _ = save_checkpoint(hf, tmp_path, return_attention_mask=False)
    model = HookedAudioEncoder.from_pretrained(path)
    with torch.no_grad():
        _, cache = model.run_with_cache(waveforms())
    with pytest.raises(ValueError, match="post-LN"):
        cache.decompose_resid()
    resid = cache.accumulated_resid()
    assert resid.shape[0] == model.cfg.n_layers + 1
    heads = cache.stack_head_results(layer=1)  # valid in post-LN: heads + b_O = attn_out of block 0
    assert (heads.sum(0) + model.blocks[0].attn.b_O - cache["attn_out", 0]).abs().max() < 1e-4


def test_conv_hook_edit_changes_output_and_waveform_gets_gradient(tmp_path):
    hf = Wav2Vec2ForCTC(Wav2Vec2Config(**tiny_kwargs())).eval()
    randomize_all(hf)
    path, _ = save_checkpoint(hf, tmp_path, return_attention_mask=False)
    model = HookedAudioEncoder.from_pretrained(path)
    wave = torch.tensor(waveforms()[0])
    seen = {}

    def zero_channel(x, hook):
        seen["shape"] = tuple(x.shape)
        x = x.clone()
        x[:, :, 2] = 0.0
        return x

    with torch.no_grad():
        clean = model(wave)
        edited = model.run_with_hooks(wave, fwd_hooks=[("frontend.conv.0.hook_out", zero_channel)])
    assert seen["shape"] == (1, (len(wave) - 10) // 5 + 1, 7)  # (batch, frames of conv 0, its channels)
    assert (clean - edited).abs().max() > 1e-3

    # saliency: gradients reach the raw samples (through normalisation, every conv, attention and the head)
    x = torch.tensor(waveforms()[1], requires_grad=True)
    model(x)[0, :, 5].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().max() > 0
    _, cache = model.run_with_cache(x.detach(), incl_bwd=True, names_filter=["hook_waveform", "hook_features"])
    assert cache["hook_waveform_grad"].abs().max() > 0


def test_frame_helpers_match_hf(tmp_path):
    hf = HubertModel(HubertConfig(**tiny_kwargs())).eval()
    path, _ = save_checkpoint(hf, tmp_path, return_attention_mask=False)
    model = HookedAudioEncoder.from_pretrained(path)
    assert model.hop_length == 10 and model.receptive_field == 20
    lengths = torch.tensor([20, 21, 29, 30, 31, 250, 403, 617])
    assert torch.equal(model.num_frames(lengths), hf._get_feat_extract_output_lengths(lengths))
    sample_mask = torch.tensor([[1] * int(n) + [0] * (617 - int(n)) for n in lengths])
    n_frames = int(model.num_frames(617))
    assert torch.equal(model.frame_mask(lengths), hf._get_feature_vector_attention_mask(n_frames, sample_mask))
    assert torch.equal(model.frame_mask(sample_mask), model.frame_mask(lengths))
    times = model.frame_times(3)
    expected = torch.tensor([[0, 20], [10, 30], [20, 40]]) / 16000
    assert torch.allclose(times, expected.float())
    assert torch.allclose(model.frame_times(2, span="hop"), torch.tensor([[0, 10], [10, 20]]) / 16000)
    assert model.time_to_frame(0.0) == 0 and model.time_to_frame(25 / 16000) == 2
    with raises_input_error(ValueError, "span", param="span"):
        model.frame_times(2, span="window")


def test_loads_from_hf_object_and_rejects_unsupported(tmp_path):
    hf = Wav2Vec2ForCTC(Wav2Vec2Config(**tiny_kwargs())).eval()
    model = HookedAudioEncoder.from_pretrained(hf_model=hf)
    assert model.ctc_head is not None and model.tokenizer is None
    with torch.no_grad():
        wave = torch.tensor(waveforms()[0])
        assert (model(wave, normalize=False) - hf(wave[None]).logits).abs().max() < ATOL
    with pytest.raises(ValueError, match="tokenizer"):
        model.transcribe(wave)
    with pytest.raises(ValueError, match="add_adapter"):
        HookedAudioEncoder.from_pretrained(hf_model=Wav2Vec2Model(Wav2Vec2Config(**tiny_kwargs(add_adapter=True))))
    with pytest.raises(ValueError, match="return_type='logits' needs a CTC head"):
        HookedAudioEncoder.from_pretrained(hf_model=Wav2Vec2Model(Wav2Vec2Config(**tiny_kwargs())))(
            wave, return_type="logits"
        )


def test_converter_rejects_leftover_weights(tmp_path):
    from transformers import Wav2Vec2ForSequenceClassification

    hf = Wav2Vec2ForSequenceClassification(Wav2Vec2Config(**tiny_kwargs(num_labels=3))).eval()
    path = save_claiming(hf, tmp_path, ["Wav2Vec2Model"])  # pretend; the classifier weights must still be noticed
    with pytest.raises(ValueError, match="classifier"):
        HookedAudioEncoder.from_pretrained(path)


def test_legacy_weight_norm_names_convert_the_same():
    """Hub checkpoints saved before torch's parametrizations API store the positional conv as weight_g / weight_v."""
    from encoderlens.convert import find_converter

    hf = HubertForCTC(HubertConfig(**tiny_kwargs())).eval()
    randomize_all(hf)
    sd = dict(hf.state_dict())
    legacy = {
        k.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v"
        ): v
        for k, v in sd.items()
    }
    assert any(k.endswith("weight_g") for k in legacy)
    convert = find_converter(hf.config)
    cfg_new, new = convert(hf.config, sd)
    cfg_old, old = convert(hf.config, legacy)
    assert cfg_new == cfg_old and new.keys() == old.keys()
    assert all(torch.equal(new[k], old[k]) for k in new)
