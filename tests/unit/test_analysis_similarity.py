"""Sentence embeddings as the checkpoint declares them, and attribution of a cosine similarity."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from encoderlens import HookedEncoder
from encoderlens.analysis import (
    Pooling,
    SentenceEncoder,
    attribute_similarity,
    pooling_from_checkpoint,
    similarity_by_layer,
)
from encoderlens.io.checkpoint import default_model_path
from tests.conftest import raises_input_error
from tests.unit.analysis_helpers import default_model, tiny_mlm_folder

A = "A man is playing a guitar on stage."
B = "Someone performs music with a guitar."
C = "The stock market fell sharply today."


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder.from_model(default_model(), default_model_path())


@pytest.fixture(scope="module")
def exact(encoder):
    return attribute_similarity(encoder, A, B)


def test_default_checkpoint_declares_normalised_mean_pooling(encoder):
    pool = pooling_from_checkpoint("default")
    assert pool.modes == ("mean",) and pool.normalize and pool.dense == ()
    assert encoder.pooling == pool and encoder.max_seq_length == 256


def test_embeddings_match_hf_with_the_declared_pooling(encoder):
    from transformers import AutoModel, AutoTokenizer

    path = str(default_model_path())
    tok = AutoTokenizer.from_pretrained(path)
    hf = AutoModel.from_pretrained(path).eval()
    texts = [A, B, "Short."]
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = hf(**enc).last_hidden_state
    m = enc["attention_mask"][..., None].float()
    expected = F.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)
    ours = encoder.embed(texts)
    assert (ours - expected).abs().max().item() < 1e-5
    assert encoder.similarity(A, B) > encoder.similarity(A, C) + 0.3
    # the same vectors as the model's own sentence-embedding head
    with torch.no_grad():
        own = default_model()(texts, return_type="sentence_embedding")
    assert (ours - own).abs().max().item() < 1e-6


def test_sentence_transformers_folder_with_dense_and_concatenated_modes(tmp_path):
    folder = tiny_mlm_folder(tmp_path / "st")
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 36, "pooling_mode_cls_token": True, "pooling_mode_max_tokens": True})
    )
    (folder / "2_Dense").mkdir()
    (folder / "2_Dense" / "config.json").write_text(
        json.dumps(
            {
                "in_features": 72,
                "out_features": 5,
                "bias": True,
                "activation_function": "torch.nn.modules.activation.Tanh",
            }
        )
    )
    g = torch.Generator().manual_seed(0)
    W, b = torch.randn(5, 72, generator=g), torch.randn(5, generator=g)
    save_file({"linear.weight": W, "linear.bias": b}, str(folder / "2_Dense" / "model.safetensors"))
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
        {"idx": 3, "name": "3", "path": "3_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    enc = SentenceEncoder.from_pretrained(str(folder))
    assert enc.pooling.modes == ("cls", "max") and enc.pooling.normalize and len(enc.pooling.dense) == 1
    texts = ["the cat sat on the mat .", "a dog ran"]
    p = enc.prepare(texts)
    with torch.no_grad():
        resid = enc.model(*p.args, return_type="embeddings", **p.kwargs)
    mask = p.mask(None)[..., None].bool()
    cls = resid[:, 0]
    mx = torch.where(mask, resid, torch.full_like(resid, -1e9)).amax(1)
    expected = F.normalize(torch.tanh(torch.cat([cls, mx], -1) @ W.T + b), dim=-1)
    torch.testing.assert_close(enc.embed(texts), expected, atol=1e-5, rtol=0)
    # no token-pair decomposition for non-mean pooling
    assert attribute_similarity(enc, texts[0], texts[1], heads=False).token_pairs is None


def test_unsupported_checkpoints_are_explained(tmp_path):
    folder = tiny_mlm_folder(tmp_path / "plain")
    with pytest.raises(ValueError, match="no modules.json"):
        pooling_from_checkpoint(folder)
    (folder / "modules.json").write_text(
        json.dumps([{"idx": 0, "path": "x", "type": "sentence_transformers.models.LSTM"}])
    )
    with pytest.raises(NotImplementedError, match="LSTM"):
        pooling_from_checkpoint(folder)
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": False}))
    (folder / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            ]
        )
    )
    assert pooling_from_checkpoint(folder).modes == ("mean",)  # sentence-transformers' fallback
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "cls", "include_prompt": False}))
    with pytest.raises(NotImplementedError, match="include_prompt"):
        pooling_from_checkpoint(folder)
    with pytest.raises(ValueError, match="unknown pooling mode"):
        Pooling(("median",))
    model = HookedEncoder.from_pretrained(folder)
    with pytest.raises(TypeError, match="Pooling"):
        SentenceEncoder(model, "mean")


def test_similarity_attribution_on_the_default_model(encoder, exact):
    res = exact
    assert res.similarity == pytest.approx(encoder.similarity(A, B), abs=1e-5)
    # exact output-side decomposition
    assert res.token_pairs.values.sum().item() == pytest.approx(res.similarity, abs=1e-4)
    assert res.token_pairs.axes == ("pos_a", "pos_b")
    assert res.by_layer.values[-1].item() == pytest.approx(res.similarity, abs=1e-5)
    assert res.layers.axes == ("component", "layer") and res.layers.shape == (2, 6)
    assert res.heads.shape == (6, 12)
    model = encoder.model
    p = encoder.prepare([A, B])
    metric = encoder.pair_metric(p)

    def zero_head(z, hook):
        z = z.clone()
        z[:, :, 5] = 0
        return z

    with torch.no_grad():
        ablated = model.run_with_hooks(
            *p.args, return_type="embeddings", fwd_hooks=[("blocks.5.attn.hook_z", zero_head)], **p.kwargs
        )
    assert res.heads.sel(layer="L5", head="H5") == pytest.approx(float(metric(ablated)) - res.similarity, abs=1e-5)
    # occlusion of 'guitar' in text A: exact removal effect
    pos = res.tokens_a.labels["pos"].index("6:guitar")
    a_tok = model.tokenize(A)
    mask = a_tok.attention_mask.clone()
    mask[0, 6] = 0
    with torch.no_grad():
        resid = model(a_tok.tokens, one_zero_attention_mask=mask, return_type="embeddings")
    emb_a = encoder.pooling(resid, mask)
    manual = float(F.cosine_similarity(emb_a[0], encoder.embed(B)[0], dim=-0)) - res.similarity
    assert res.tokens_a.values[pos].item() == pytest.approx(manual, abs=1e-5)
    assert res.tokens_a.values[pos].item() < -0.1  # the shared word carries much of the similarity
    assert "cosine similarity" in res.to_text()


def test_first_order_methods_track_the_exact_ones(encoder, exact):
    approx = attribute_similarity(encoder, A, B, method="grad_x_act", token_method="grad_x_input")
    corr = torch.corrcoef(torch.stack([exact.heads.values.flatten(), approx.heads.values.flatten()]))[0, 1]
    assert corr > 0.8
    assert approx.methods["tokens"].startswith("grad x input")
    mean = attribute_similarity(encoder, A, B, ablation="mean", heads=False, token_method="grad_x_input")
    assert mean.heads is None and torch.isfinite(mean.layers.values).all()


def test_similarity_by_layer_and_bad_arguments(encoder):
    by = similarity_by_layer(encoder, A, C)
    assert by.labels["layer"][0] == "embed" and by.shape == (7,)
    with raises_input_error(ValueError, "method must be", param="method"):
        attribute_similarity(encoder, A, B, method="shapley")
    with raises_input_error(TypeError, "two strings", param="b"):
        attribute_similarity(encoder, A, [B])
    with pytest.raises(TypeError, match="strings"):
        encoder.prepare([])
