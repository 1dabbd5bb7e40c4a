"""Model-side reliability: exact decoder masks, bounds that raise, errors that name the culprit, default outputs."""

from __future__ import annotations

import pytest
import torch

from encoderlens import HookedEncoderDecoder
from encoderlens.analysis import head_scores
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
