"""Tests that plausible one-line bugs fail (see tools/mutants.py, run by `make mutants`)."""

from __future__ import annotations

import pytest
import torch

from encoderlens import HookedEncoderDecoder
from encoderlens.analysis import SentenceEncoder, attribute_similarity
from encoderlens.io.checkpoint import default_model_path
from tests.seq2seq_helpers import make_hf
from tests.unit.analysis_helpers import WORDS, default_model


def test_a_names_filter_string_is_one_exact_name():
    model = HookedEncoderDecoder.from_pretrained(hf_model=make_hf("t5"))
    name = "decoder.blocks.0.hook_resid_mid"  # a prefix of decoder.blocks.0.hook_resid_mid_cross
    assert any(n != name and n.startswith(name) for n in model.hook_dict)
    src, dec = torch.tensor([[5, 6, 7]]), torch.tensor([[0, 8, 9]])
    with torch.no_grad():
        _, cache = model.run_with_cache(src, dec, names_filter=name)
    assert list(cache.keys()) == [name]
    _, cache = model.run_with_cache(src, dec, names_filter=[name])
    assert list(cache.keys()) == [name]


def test_text_one_token_too_long_is_truncated_with_a_warning():
    model = default_model()
    limit = model.cfg.sentence_pooling.max_seq_length  # 256, below the 512 positions
    words = [w for w in WORDS if w.isalpha()]  # one token each in its vocabulary
    for n_tokens in (limit, limit + 1, limit + 2):
        text = " ".join(words[i % len(words)] for i in range(n_tokens - 2))  # + [CLS] and [SEP]
        assert len(model.tokenizer(text)["input_ids"]) == n_tokens
        if n_tokens <= limit:
            assert model.tokenize(text).tokens.shape[1] == n_tokens
            continue
        with pytest.warns(UserWarning, match=rf"input of {n_tokens} tokens exceeds the model's {limit} positions"):
            batch = model.tokenize(text)
        assert batch.tokens.shape == (1, limit) and batch.tokens[0, -1] == model.tokenizer.sep_token_id


def test_mean_ablation_averages_each_text_over_its_real_tokens_only():
    encoder = SentenceEncoder.from_model(default_model(), default_model_path())
    a, b = "A man is playing a guitar on stage tonight.", "Music."
    res = attribute_similarity(encoder, a, b, ablation="mean", heads=False, token_method="grad_x_input")
    p = encoder.prepare([a, b])
    mask = p.mask(None)
    assert mask.sum(1).tolist()[1] < mask.shape[1]  # the short text is padded
    metric = encoder.pair_metric(p)
    layer = 1

    def to_mean(x, hook):
        m = mask[..., None].to(x.dtype)
        return ((x * m).sum(1, keepdim=True) / m.sum(1, keepdim=True)).expand_as(x).clone()

    with torch.no_grad():
        base = float(metric(encoder.model.run_prepared(p, return_type="embeddings")))
        for comp, hook in (("attn", "hook_attn_out"), ("mlp", "hook_mlp_out")):
            ablated = encoder.model.run_prepared(
                p, return_type="embeddings", fwd_hooks=[(f"blocks.{layer}.{hook}", to_mean)]
            )
            want = float(metric(ablated)) - base
            got = res.layers.values[res.layers.labels["component"].index(comp), layer].item()
            assert got == pytest.approx(want, abs=1e-5), comp
