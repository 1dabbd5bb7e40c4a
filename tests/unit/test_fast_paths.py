"""Overheads removed from the forward and the cache (issue 15), each pinned by a test that failed before."""

from __future__ import annotations

import pytest
import torch

from encoderlens import HookedEncoderDecoder
from tests.seq2seq_helpers import make_hf, padded_seq2seq_batch


def test_run_with_cache_does_not_fold_the_unembedding(monkeypatch):
    """The folded unembedding (a pass over the vocabulary matrix) is built only when read, not per forward."""
    model = HookedEncoderDecoder.from_pretrained(hf_model=make_hf("t5"))
    src, src_mask, tgt, tgt_mask = padded_seq2seq_batch(first_token=model.cfg.decoder_start_token_id)
    expected = model.folded_unembed()

    def refuse() -> None:
        raise AssertionError("folded_unembed was computed")

    monkeypatch.setattr(model, "folded_unembed", refuse)
    with torch.inference_mode():
        _, cache = model.run_with_cache(src, tgt, one_zero_attention_mask=src_mask, decoder_attention_mask=tgt_mask)
    assert len(cache) > 0
    spec = model.stream_spec("decoder")
    with pytest.raises(AssertionError, match="folded_unembed was computed"):
        spec.unembed  # noqa: B018  (read: now it is built)
    monkeypatch.undo()
    W_U, b_U = model.stream_spec("decoder").unembed
    torch.testing.assert_close(W_U, expected[0], rtol=0, atol=0)
    torch.testing.assert_close(b_U, expected[1], rtol=0, atol=0)
