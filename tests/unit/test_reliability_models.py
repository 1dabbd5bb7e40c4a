"""Model-side reliability: exact decoder masks, bounds that raise, errors that name the culprit, default outputs."""

from __future__ import annotations

import pytest
import torch

from encoderlens import HookedEncoderDecoder
from encoderlens.analysis import head_scores
from tests.conftest import raises_input_error
from tests.seq2seq_helpers import make_hf


@pytest.mark.parametrize("kind", ["t5", "bart"])
def test_padded_teacher_forcing_mask_is_exactly_the_real_targets(kind):
    model = HookedEncoderDecoder.from_pretrained(hf_model=make_hf(kind))
    g = torch.Generator().manual_seed(0)
    src = torch.randint(3, 99, (2, 7), generator=g)
    targets = [torch.randint(3, 99, (n,), generator=g) for n in (6, 3)]
    padded = torch.full((2, 6), -100)
    for i, t in enumerate(targets):
        padded[i, : len(t)] = t
    dec = model.decoder_input_from_targets(padded)
    assert dec.attention_mask.tolist() == [[1] * 6, [1, 1, 1, 0, 0, 0]]
    dets = ["entropy", "mean_distance"]
    batched = head_scores(model, src, dets, stream="decoder", decoder_input=dec)
    singles = []
    for i, t in enumerate(targets):
        one = model.decoder_input_from_targets(t[None])
        assert one.attention_mask.sum() == len(t)
        singles.append(head_scores(model, src[i : i + 1], dets, stream="decoder", decoder_input=one))
    # scores pool over real query positions: the batch is the position-weighted mean of its items
    for d in dets:
        n = [len(t) for t in targets]
        pooled = (singles[0][d].values * n[0] + singles[1][d].values * n[1]) / sum(n)
        assert (batched[d].values - pooled).abs().max() < 1e-5, d


def tiny_text_models():
    from transformers import BertForMaskedLM, BertModel

    from encoderlens import HookedEncoder
    from tests.unit.analysis_helpers import tiny_config

    cfg = tiny_config(num_hidden_layers=2)
    return [HookedEncoder.from_pretrained(hf_model=cls(cfg).eval()) for cls in (BertForMaskedLM, BertModel)]


def test_default_return_type_follows_the_checkpoint():
    from tests.unit.analysis_helpers import default_model

    model = default_model()  # all-MiniLM-L6-v2: a BertModel, no MLM head
    out, cache = model.run_with_cache("the cat sat")
    assert out.shape == (1, 5, model.cfg.d_model) and "blocks.5.hook_resid_post" in cache
    assert (out - model("the cat sat", return_type="embeddings")).abs().max() < 1e-5
    mlm, bare = tiny_text_models()
    ids = torch.tensor([[2, 10, 11, 3]])
    assert mlm(ids).shape == (1, 4, 99) and torch.equal(mlm(ids), mlm(ids, return_type="logits"))
    assert torch.equal(bare(ids), bare(ids, return_type="embeddings"))
    # stop_at_layer with the default return type gives the residual stream, as TransformerLens does
    assert torch.equal(mlm(ids, stop_at_layer=1), mlm(ids, return_type="embeddings", stop_at_layer=1))


def test_remove_batch_dim_and_stop_at_layer_bounds_raise():
    mlm, _ = tiny_text_models()
    ids = torch.tensor([[2, 10, 11, 3], [2, 12, 3, 0]])
    with pytest.raises(ValueError, match=r"remove_batch_dim=True needs a batch of one.*\(2, "):
        mlm.run_with_cache(ids, remove_batch_dim=True)
    assert not any(hp.has_hooks() for hp in mlm.hook_dict.values())
    _, cache = mlm.run_with_cache(ids[:1], remove_batch_dim=True)
    assert cache["blocks.0.hook_resid_pre"].shape == (4, mlm.cfg.d_model)
    for bad in (99, 3, -3):
        with pytest.raises(ValueError, match=rf"stop_at_layer={bad} is out of range for 2 blocks"):
            mlm(ids, return_type="embeddings", stop_at_layer=bad)
    with raises_input_error(TypeError, "stop_at_layer must be an int", param="stop_at_layer"):
        mlm(ids, return_type="embeddings", stop_at_layer=1.5)
    for ok in (0, 2, -2, -1):
        assert mlm(ids, return_type="embeddings", stop_at_layer=ok).shape == (2, 4, mlm.cfg.d_model)


def test_hook_returning_another_dtype_or_shape_is_named():
    mlm, _ = tiny_text_models()
    ids = torch.tensor([[2, 10, 11, 3]])
    name = "blocks.1.hook_mlp_out"
    with pytest.raises(TypeError, match=rf"hook on '{name}' returned a torch.float64 tensor.*expected torch.float32"):
        mlm.run_with_hooks(ids, fwd_hooks=[(name, lambda x, hook: x.double())])
    with pytest.raises(ValueError, match=rf"hook on '{name}' returned shape \(1, 4\)"):
        mlm.run_with_hooks(ids, fwd_hooks=[(name, lambda x, hook: x[..., 0])])
    assert not any(hp.has_hooks() for hp in mlm.hook_dict.values())


def test_none_input_says_what_is_accepted():
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    from encoderlens import HookedAudioEncoder
    from tests.parity.test_audio_parity import tiny_kwargs

    mlm, _ = tiny_text_models()
    with pytest.raises(TypeError, match="input is None; pass a string, a list of strings"):
        mlm(None)
    audio = HookedAudioEncoder.from_pretrained(hf_model=Wav2Vec2ForCTC(Wav2Vec2Config(**tiny_kwargs())).eval())
    with raises_input_error(TypeError, "expected a waveform .* got NoneType", param="input"):
        audio(None)
    seq = HookedEncoderDecoder.from_pretrained(hf_model=make_hf("t5"))
    with pytest.raises(TypeError, match="input is None"):
        seq(None)
    with pytest.raises(ValueError, match="needs a decoder input"):
        seq(torch.tensor([[3, 4]]), None)
