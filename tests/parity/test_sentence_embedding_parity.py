"""Sentence embeddings equal sentence-transformers' encode(): the embedded default model and every pooling mode."""

from __future__ import annotations

import json

import pytest
import torch
from sentence_transformers import SentenceTransformer
from transformers import BertConfig, BertModel, BertTokenizerFast

from encoderlens import HookedEncoder
from encoderlens.config import SentencePoolingConfig
from encoderlens.io.checkpoint import default_model_path
from tests.conftest import randomize_norms

WORDS = [
    "the",
    "cat",
    "dog",
    "sat",
    "on",
    "a",
    "mat",
    "and",
    "ran",
    "far",
    "away",
    "from",
    "big",
    "small",
    "red",
    "blue",
    "house",
    "tree",
]
TEXTS = [
    "the cat sat on the mat",
    "a dog ran",
    "the big red dog ran far away from the small blue house and the tree",
    "tree",
]


def tiny_st_folder(tmp_path, pooling: dict, normalize: bool, extra_modules=(), st_config=None):
    """A tiny BERT + tokenizer saved as a sentence-transformers folder with the given pooling config."""
    path = tmp_path / "st"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab))
    tok = BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))
    cfg = BertConfig(
        vocab_size=len(vocab),
        hidden_size=36,
        num_hidden_layers=2,
        num_attention_heads=3,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    hf = BertModel(cfg).eval()
    randomize_norms(hf)
    hf.save_pretrained(path)
    tok.save_pretrained(path)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    modules.extend(extra_modules)
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 36, **pooling}))
    (path / "sentence_bert_config.json").write_text(json.dumps(st_config or {"max_seq_length": 64}))
    return path


def st_encode(path, texts) -> torch.Tensor:
    st = SentenceTransformer(str(path), device="cpu")
    return st.encode(texts, convert_to_tensor=True, batch_size=len(texts))


def test_default_model_sentence_embedding_equals_sentence_transformers():
    path = default_model_path()
    long_text = " ".join(["the quick brown fox jumps over the lazy dog"] * 40)  # > max_seq_length=256 tokens
    texts = ["The cat sat on the mat.", "Sentence embeddings from a hooked encoder.", "Hi", long_text]
    model = HookedEncoder.from_pretrained("default")
    assert model.cfg.sentence_pooling == SentencePoolingConfig(("mean",), normalize=True, max_seq_length=256)
    with pytest.warns(UserWarning, match="truncating to 256"), torch.no_grad():
        ours, cache = model.run_with_cache(texts, return_type="sentence_embedding")
    theirs = st_encode(path, texts)
    assert ours.shape == theirs.shape == (4, 384)
    assert (ours - theirs).abs().max() < 1e-5
    assert torch.allclose(ours.norm(dim=1), torch.ones(4), atol=1e-5)
    assert "sentence_pooler.hook_pooled" in cache and "sentence_pooler.hook_normalized" in cache


@pytest.mark.parametrize(
    "pooling,normalize,modes",
    [
        ({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}, False, ("cls",)),
        ({"pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": True}, True, ("max",)),
        (
            {"pooling_mode_mean_sqrt_len_tokens": True, "pooling_mode_mean_tokens": False},
            False,
            ("mean_sqrt_len_tokens",),
        ),
        ({"pooling_mode": "weightedmean"}, False, ("weightedmean",)),
        ({"pooling_mode": "lasttoken"}, True, ("lasttoken",)),
        # several modes are concatenated in sentence-transformers' order
        (
            {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True},
            True,
            ("cls", "max", "mean"),
        ),
        ({"pooling_mode": ["mean", "cls"]}, False, ("mean", "cls")),
        ({}, False, ("mean",)),  # nothing set: sentence-transformers' default
    ],
)
def test_pooling_modes_equal_sentence_transformers(tmp_path, pooling, normalize, modes):
    path = tiny_st_folder(tmp_path, pooling, normalize)
    model = HookedEncoder.from_pretrained(path)
    assert model.cfg.sentence_pooling.modes == modes and model.cfg.sentence_pooling.normalize == normalize
    with torch.no_grad():
        ours = model(TEXTS, return_type="sentence_embedding")
        everything = model(TEXTS, return_type="all")
    theirs = st_encode(path, TEXTS)
    assert ours.shape == theirs.shape == (4, 36 * len(modes))
    assert (ours - theirs).abs().max() < 1e-5
    assert torch.equal(everything.sentence_embedding, ours)


def test_max_seq_length_and_lower_case_follow_the_folder(tmp_path):
    path = tiny_st_folder(
        tmp_path, {"pooling_mode": "mean"}, True, st_config={"max_seq_length": 6, "do_lower_case": True}
    )
    texts = ["The BIG red dog ran far away from the house", "A Cat"]
    model = HookedEncoder.from_pretrained(path)
    with pytest.warns(UserWarning, match="truncating to 6"), torch.no_grad():
        ours = model(texts, return_type="sentence_embedding")
    assert (ours - st_encode(path, texts)).abs().max() < 1e-5


def test_unsupported_pipeline_loads_encoder_but_refuses_sentence_embedding(tmp_path):
    dense = {"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"}
    path = tiny_st_folder(tmp_path, {"pooling_mode": "mean"}, True, extra_modules=[dense])
    model = HookedEncoder.from_pretrained(path)
    assert model.sentence_pooler is None
    assert model(TEXTS, return_type="embeddings").shape[-1] == 36
    with pytest.raises(ValueError, match="Dense"):
        model(TEXTS, return_type="sentence_embedding")


def test_pooling_can_be_attached_to_any_checkpoint(tmp_path):
    path = tiny_st_folder(tmp_path, {"pooling_mode": "cls"}, False)
    (path / "modules.json").unlink()
    plain = HookedEncoder.from_pretrained(path)
    with pytest.raises(ValueError, match="no sentence-transformers modules.json"):
        plain(TEXTS, return_type="sentence_embedding")
    pooled = HookedEncoder.from_pretrained(path, sentence_pooling=SentencePoolingConfig(("cls",)))
    with torch.no_grad():
        emb = pooled(TEXTS, return_type="sentence_embedding")
        resid = pooled(TEXTS, return_type="embeddings")
    assert torch.equal(emb, resid[:, 0])


def add_dense_modules(path, layers, normalize: bool) -> list[torch.nn.Module]:
    """Append sentence-transformers ``Dense`` modules (saved by sentence-transformers itself) after the pooling."""
    from sentence_transformers.models import Dense

    modules = json.loads((path / "modules.json").read_text())
    modules = [m for m in modules if not m["type"].endswith("Normalize")]
    saved = []
    g = torch.Generator().manual_seed(1)
    for i, (n_in, n_out, bias, act) in enumerate(layers):
        dense = Dense(n_in, n_out, bias=bias, activation_function=act)
        with torch.no_grad():
            dense.linear.weight.copy_(torch.randn(n_out, n_in, generator=g) / n_in**0.5)
            if bias:
                dense.linear.bias.copy_(torch.randn(n_out, generator=g))
        folder = f"{2 + i}_Dense"
        (path / folder).mkdir()
        dense.save(str(path / folder))
        modules.append({"idx": 2 + i, "name": str(2 + i), "path": folder, "type": "sentence_transformers.models.Dense"})
        saved.append(dense)
    if normalize:
        n = 2 + len(layers)
        modules.append(
            {"idx": n, "name": str(n), "path": f"{n}_Normalize", "type": "sentence_transformers.models.Normalize"}
        )
    (path / "modules.json").write_text(json.dumps(modules))
    return saved


@pytest.mark.parametrize(
    "pooling,layers,normalize",
    [
        # concatenated modes -> tanh with bias -> identity without bias -> Normalize
        (
            {"pooling_mode_cls_token": True, "pooling_mode_max_tokens": True, "pooling_mode_mean_tokens": False},
            [(72, 20, True, torch.nn.Tanh()), (20, 7, False, torch.nn.Identity())],
            True,
        ),
        ({"pooling_mode": "mean"}, [(36, 5, True, torch.nn.GELU())], False),
        ({"pooling_mode": "weightedmean"}, [(36, 9, True, torch.nn.ReLU())], True),
    ],
)
def test_dense_modules_equal_sentence_transformers(tmp_path, pooling, layers, normalize):
    from encoderlens.analysis import SentenceEncoder

    path = tiny_st_folder(tmp_path, pooling, False)
    add_dense_modules(path, layers, normalize)
    model = HookedEncoder.from_pretrained(path)
    assert len(model.cfg.sentence_pooling.dense) == len(layers) and model.cfg.sentence_pooling.normalize == normalize
    with torch.no_grad():
        ours, cache = model.run_with_cache(TEXTS, return_type="sentence_embedding")
    theirs = st_encode(path, TEXTS)
    assert ours.shape == theirs.shape == (4, layers[-1][1])
    assert (ours - theirs).abs().max() < 1e-5
    for i in range(len(layers)):
        assert f"sentence_pooler.dense.{i}.hook_pre" in cache and f"sentence_pooler.dense.{i}.hook_post" in cache
    torch.testing.assert_close(cache[f"sentence_pooler.dense.{len(layers) - 1}.hook_post"].shape[-1], layers[-1][1])
    # the similarity tools read the folder with the same reader: the same vectors
    enc = SentenceEncoder.from_pretrained(str(path))
    assert len(enc.pooling.dense) == len(layers)
    torch.testing.assert_close(enc.embed(TEXTS), ours, atol=1e-6, rtol=0)


def test_dense_hooks_change_the_sentence_embedding(tmp_path):
    path = tiny_st_folder(tmp_path, {"pooling_mode": "mean"}, False)
    add_dense_modules(path, [(36, 6, True, torch.nn.Tanh())], False)
    model = HookedEncoder.from_pretrained(path)

    def zero_first(x, hook):
        x = x.clone()
        x[:, 0] = 0.0
        return x

    with torch.no_grad():
        clean = model(TEXTS, return_type="sentence_embedding")
        patched = model.run_with_hooks(
            TEXTS, return_type="sentence_embedding", fwd_hooks=[("sentence_pooler.dense.0.hook_post", zero_first)]
        )
    assert torch.equal(patched[:, 0], torch.zeros(4)) and torch.equal(patched[:, 1:], clean[:, 1:])


def test_dense_options_that_change_the_computation_are_refused(tmp_path):
    path = tiny_st_folder(tmp_path, {"pooling_mode": "mean"}, True)
    add_dense_modules(path, [(36, 6, True, torch.nn.Tanh())], True)
    cfg_file = path / "2_Dense" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg_file.write_text(json.dumps({**cfg, "use_residual": True}))
    model = HookedEncoder.from_pretrained(path)
    assert model.sentence_pooler is None
    with pytest.raises(ValueError, match="use_residual"):
        model(TEXTS, return_type="sentence_embedding")
    cfg_file.write_text(json.dumps({**cfg, "activation_function": "torch.nn.modules.activation.Sigmoid"}))
    with pytest.raises(ValueError, match="Sigmoid"):
        HookedEncoder.from_pretrained(path)(TEXTS, return_type="sentence_embedding")


def test_dense_layers_must_come_from_the_folder(tmp_path):
    from encoderlens.config import SentenceDenseConfig

    path = tiny_st_folder(tmp_path, {"pooling_mode": "mean"}, False)
    foreign = SentencePoolingConfig(("mean",), dense=(SentenceDenseConfig(36, 4),))
    with pytest.raises(ValueError, match="Dense weights are read from the folder"):
        HookedEncoder.from_pretrained(path, sentence_pooling=foreign)
    with pytest.raises(ValueError, match="Dense layer expects 40 features"):
        HookedEncoder.from_pretrained(
            path, sentence_pooling=SentencePoolingConfig(("mean",), dense=(SentenceDenseConfig(40, 4),))
        )
