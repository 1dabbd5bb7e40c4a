"""``token_score`` reads real positions only: a position on an item's padding or outside the logits raises."""

from __future__ import annotations

import pytest
import torch
from transformers import BertForMaskedLM

from encoderlens import HookedEncoder
from encoderlens.analysis import token_score
from tests.unit.analysis_helpers import padded_tokens, tiny_config


def test_token_score_refuses_padding_and_positions_outside_the_input():
    """Item 1 has 6 real tokens of 9. Before the fix position 7 silently read a padding position's logit
    (an MLM's logits are computed there too), and 9 raised torch's IndexError."""
    torch.manual_seed(0)
    model = HookedEncoder.from_pretrained(hf_model=BertForMaskedLM(tiny_config()).eval())
    tokens, mask = padded_tokens()
    batch = model.prepare_input(tokens, one_zero_attention_mask=mask)
    with torch.no_grad():
        out = model.run_prepared(batch, "logits")
    with pytest.raises(ValueError, match=r"token_score position 7 is padding in batch item 1, which has 6 real"):
        token_score(7, 5)(out, batch)
    with pytest.raises(ValueError, match=r"position 9 is outside the 9 positions"):
        token_score(9, 5, kind="logprob")(out, batch)
    got = token_score([7, 4], [5, 6])(out, batch)
    assert torch.equal(got, torch.stack([out[0, 7, 5], out[1, 4, 6]]))
    repeated = token_score([7, 4], [5, 6])(out.repeat(2, 1, 1), batch.repeat(2))  # as attribution runs it
    assert torch.equal(repeated, got.repeat(2))
