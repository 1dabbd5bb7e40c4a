"""Head detectors: exact scores on hand-made patterns (padding excluded), real heads of the default model."""

from __future__ import annotations

import math

import pytest
import torch

from encoderlens.analysis import ALL_DETECTORS, head_scores, score_patterns, summarize
from tests.conftest import raises_input_error
from tests.unit.analysis_helpers import default_model, padded_tokens, tiny_mlm
from tests.unit.brute_force import clean_cache, head_score_reference


def _patterns() -> torch.Tensor:
    """(layer 1, batch 1, head 3, q 4, k 4): previous-token head, uniform head, [first-token] head."""
    prev = torch.zeros(4, 4)
    prev[0, 0] = 1
    for q in range(1, 4):
        prev[q, q - 1] = 1
    uniform = torch.full((4, 4), 0.25)
    first = torch.zeros(4, 4)
    first[:, 0] = 1
    return torch.stack([prev, uniform, first])[None, None]


MASK = torch.ones(1, 4, dtype=torch.long)


def score(detector, patterns=None, mask=MASK, tokens=None, **kw):
    p = _patterns() if patterns is None else patterns
    return score_patterns(p, detector, mask, query_tokens=tokens, key_tokens=tokens, **kw)[0].tolist()


def test_positional_detectors_exact():
    assert score("previous_token") == pytest.approx([1.0, 0.25, 1 / 3])
    assert score("next_token") == pytest.approx([0.0, 0.25, 0.0])
    assert score("self") == pytest.approx([0.25, 0.25, 0.25])
    assert score("first_token") == pytest.approx([1 / 3, 0.25, 1.0])  # query 0 is left out
    assert score("last_token") == pytest.approx([0.0, 0.25, 0.0])
    assert score("local_window", window=1) == pytest.approx([1.0, (2 + 3 + 3 + 2) / 16, 0.5])
    assert score("entropy") == pytest.approx([0.0, 1.0, 0.0], abs=1e-6)
    assert score("mean_distance") == pytest.approx([0.75, (1.5 + 1 + 1 + 1.5) / 4, 1.5])


def test_padding_is_excluded():
    p = _patterns().repeat(1, 2, 1, 1, 1)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    # item 1: its query 3 is padding; key 3 is padding (uniform head's mass there is not a target)
    prev = score_patterns(p, "previous_token", mask)[0].tolist()
    assert prev == pytest.approx([1.0, 0.25, 2 / 5])  # 3 + 2 valid queries, one hit in each item
    nxt = score_patterns(p, "next_token", mask)[0].tolist()
    assert nxt == pytest.approx([0.0, 0.25, 0.0])  # item 1 query 2 has no next real token: 3 + 2 queries
    ent = score_patterns(p, "entropy", mask)[0]
    assert ent[2].item() == pytest.approx(0.0, abs=1e-6)


def test_token_detectors_exact():
    tokens = torch.tensor([[5, 6, 5, 6]])
    dup = torch.zeros(4, 4)
    dup[0, 2] = dup[2, 0] = dup[1, 3] = dup[3, 1] = 1
    ind = torch.zeros(4, 4)
    ind[:, 0] = 1
    ind[2, :] = torch.tensor([0.0, 1, 0, 0])  # query 2 (token 5): earlier 5 at 0 -> key 1
    ind[3, :] = torch.tensor([0.0, 0, 1, 0])  # query 3 (token 6): earlier 6 at 1 -> key 2
    p = torch.stack([dup, ind])[None, None]
    assert score("duplicate_token", p, tokens=tokens) == pytest.approx([1.0, 0.0])
    assert score("induction", p, tokens=tokens) == pytest.approx([0.0, 1.0])  # queries 0, 1 have no earlier copy
    ids = {"sep": 6, "pad": 0, "special": [5]}
    assert score("sep", p, tokens=tokens, special_ids=ids) == pytest.approx([0.0, 0.5])  # queries 0 and 2
    assert score("special", p, tokens=tokens, special_ids=ids) == pytest.approx([0.5, 0.75])
    assert score("padding", p, tokens=tokens, special_ids=ids) != score(
        "padding", p, tokens=tokens, special_ids=ids
    )  # NaN: no pad


def test_padding_detector_sees_unmasked_pad_tokens():
    tokens = torch.tensor([[5, 6, 0, 0]])
    uniform = torch.full((1, 1, 1, 4, 4), 0.25)
    got = score_patterns(uniform, "padding", torch.ones(1, 4), query_tokens=tokens, special_ids={"pad": 0})
    assert got[0, 0].item() == pytest.approx(0.5)


def test_bad_inputs():
    with pytest.raises(ValueError, match="unknown detector"):
        score("sideways")
    with pytest.raises(ValueError, match="token ids"):
        score("duplicate_token")
    with raises_input_error(ValueError, r"\(layer, batch, head", param="patterns"):
        score_patterns(torch.zeros(2, 4, 4), "self", MASK)
    with raises_input_error(ValueError, "do not match", param="query_mask"):
        score_patterns(_patterns(), "self", torch.ones(1, 5))
    with pytest.raises(ValueError, match="special token ids"):
        score("special", tokens=torch.tensor([[1, 2, 3, 4]]))
    assert math.isnan(score_patterns(_patterns()[..., :1, :1], "previous_token", torch.ones(1, 1))[0, 0].item())


def test_head_scores_on_a_tiny_model_without_tokenizer():
    model = tiny_mlm()
    tokens, mask = padded_tokens()
    scores = head_scores(model, tokens, one_zero_attention_mask=mask)
    assert "special" not in scores and "padding" not in scores  # no tokenizer: left out of the defaults
    assert scores["previous_token"].axes == ("layer", "head") and scores["previous_token"].shape == (3, 3)
    # values against loops over each item's real tokens (lengths from the mask built by the test)
    cache = clean_cache(
        model, (tokens,), {"one_zero_attention_mask": mask}, [f"blocks.{i}.attn.hook_pattern" for i in range(3)]
    )
    patterns = torch.stack([cache[f"blocks.{i}.attn.hook_pattern"] for i in range(3)])
    lens = mask.sum(1).tolist()
    assert min(lens) < tokens.shape[1]  # a padded batch
    for det in ("previous_token", "next_token", "self", "first_token", "entropy"):
        assert torch.allclose(
            scores[det].values.double(), head_score_reference(patterns, det, lens, lens), atol=1e-5
        ), det
    some = head_scores(model, tokens, ["last_token", "local_window", "mean_distance"], one_zero_attention_mask=mask)
    for det in ("last_token", "local_window", "mean_distance"):
        assert torch.allclose(some[det].values.double(), head_score_reference(patterns, det, lens, lens), atol=1e-5), (
            det
        )
    with pytest.raises(ValueError, match="needs the decoder stream"):
        head_scores(model, tokens, ["previous_token"], attn="cross_attn")
    with pytest.raises(ValueError, match="unknown detector"):
        head_scores(model, tokens, ["bogus"])
    assert set(ALL_DETECTORS) >= set(scores)


def test_real_heads_of_the_default_model():
    """all-MiniLM-L6-v2: L0H2 is a previous-token head, late heads sink on [CLS]; masking leaves pad at 0."""
    texts = [
        "The quick brown fox jumps over the lazy dog.",
        "A man is playing a guitar on stage while the crowd sings along.",
        "Short one.",
    ]
    scores = head_scores(default_model(), texts)
    prev = scores["previous_token"]
    assert prev.sel(layer="L0", head="H2") > 0.9
    assert prev.top(1)[0][0] == {"layer": "L0", "head": "H2"}
    assert scores["first_token"].top(1)[0][1] > 0.5
    assert scores["padding"].values.abs().max().item() == 0.0  # padded keys are masked exactly
    assert "previous_token" in summarize(scores)
