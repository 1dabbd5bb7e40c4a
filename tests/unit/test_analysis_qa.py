"""The analysis toolkit on a question-answering checkpoint: patching, input attribution, DLA and the lens
read the start / end logits of a position through the model contract (``return_type="qa"``, the QA readout)."""

from __future__ import annotations

import pytest
import torch
from transformers import BertForQuestionAnswering

from encoderlens import HookedEncoder
from encoderlens.analysis import attribute_input, span_score
from encoderlens.analysis.direct import direct_logit_attribution
from encoderlens.analysis.lens import logit_lens
from encoderlens.analysis.patching import logit_diff, patch_residual
from encoderlens.models.contract import Prepared
from tests.conftest import raises_input_error, randomize_norms
from tests.unit.analysis_helpers import padded_tokens, tiny_config

P = 4  # the position whose start logit is measured


@pytest.fixture(scope="module")
def model() -> HookedEncoder:
    torch.manual_seed(0)
    hf = BertForQuestionAnswering(tiny_config()).eval()
    randomize_norms(hf)
    hf.config.architectures = ["BertForQuestionAnswering"]
    return HookedEncoder.from_pretrained(hf_model=hf)


def start_logits(model: HookedEncoder, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens, one_zero_attention_mask=mask)[..., 0]


def test_readout_and_default_output(model):
    readout = model.readout()
    assert readout is not None and (readout.kind, readout.name, readout.return_type) == ("qa", "qa_head", "qa")
    assert readout.linear and readout.output_labels == ("start", "end")
    tokens, mask = padded_tokens()
    batch = model.prepare_input(tokens, one_zero_attention_mask=mask)
    with torch.no_grad():
        out = model.run_prepared(batch)
    assert out.shape == (2, 9, 2)


def test_residual_patching_on_a_start_logit(model):
    """A metric on the start logit of position P: the swapped token's layer-0 input restores it exactly."""
    clean, mask = padded_tokens()
    corrupt = clean.clone()
    corrupt[:, 2] = torch.where(clean[:, 2] == 7, 8, 7)
    metric = logit_diff(P, good=0)  # (batch, pos, 2) QA logits: label 0 is the start
    res = patch_residual(model, clean, corrupt, metric, input_kwargs={"one_zero_attention_mask": mask})
    assert res.meta["metric_clean"] == pytest.approx(float(start_logits(model, clean, mask)[:, P].mean()), abs=1e-5)
    assert res.meta["metric_corrupt"] == pytest.approx(float(start_logits(model, corrupt, mask)[:, P].mean()), abs=1e-5)
    assert res.values[0, 2].item() == pytest.approx(1.0, abs=1e-4)
    assert torch.cat([res.values[0, :2], res.values[0, 3:]]).abs().max().item() < 1e-4


def test_integrated_gradients_of_a_start_logit(model):
    tokens, mask = padded_tokens()
    res = attribute_input(model, tokens, span_score(P, "start"), n_steps=32, one_zero_attention_mask=mask)
    assert torch.allclose(res.target, start_logits(model, tokens, mask)[:, P], atol=1e-5)
    assert res.delta is not None and res.delta.abs().max().item() < 1e-3 * (1 + res.target.abs().max().item())
    assert torch.isnan(res.scores["embed.hook_embed"].values[1, 6:]).all()  # padding


def test_span_probabilities_are_over_real_positions(model):
    """``logprob`` normalises over positions, padding left out: a padded item scores as it does alone."""
    tokens, mask = padded_tokens()
    batch = model.prepare_input(tokens, one_zero_attention_mask=mask)
    with torch.no_grad():
        out = model.run_prepared(batch)
        alone = model(tokens[1:, :6])
    target = span_score([P, 3], "end", kind="logprob")
    got = target(out, batch)
    assert got[1].item() == pytest.approx(alone[0, :, 1].log_softmax(-1)[3].item(), abs=1e-5)
    assert got[0].item() == pytest.approx(out[0, :, 1].log_softmax(-1)[P].item(), abs=1e-5)
    probs = torch.stack([span_score(p, "end", kind="prob")(out, batch) for p in range(9)])
    assert torch.allclose(probs.sum(0), torch.ones(2)) and probs[6:, 1].abs().max() == 0
    # a repeated batch (as patching and attribution run it) follows the copies
    assert torch.allclose(target(out.repeat(2, 1, 1), batch.repeat(2)), got.repeat(2))


def test_span_score_refuses_what_it_cannot_read(model):
    with pytest.raises(ValueError, match="boundary"):
        span_score(0, "middle")
    with raises_input_error(ValueError, match="kind", param="kind"):
        span_score(0, kind="odds")  # type: ignore[arg-type]
    batch = Prepared("encoder", (), {}, {None: torch.ones(1, 3, dtype=torch.long)}, {None: None})
    with pytest.raises(TypeError, match="return_type='qa'"):
        span_score(0)(torch.zeros(1, 3, 99), batch)


def test_direct_attribution_and_lens_read_the_qa_head(model):
    tokens, mask = padded_tokens()
    dla = direct_logit_attribution(model, tokens, "start", position=P, one_zero_attention_mask=mask)
    assert dla.meta["actual"] == pytest.approx(float(start_logits(model, tokens, mask)[0, P]), abs=1e-5)
    assert not dla.meta["linearised"]
    assert float(dla.values.sum()) + dla.meta["unembed_bias"] == pytest.approx(dla.meta["actual"], abs=1e-4)
    lens = logit_lens(model, tokens, one_zero_attention_mask=mask)
    assert lens.meta["final_max_abs_diff"] < 1e-4 and lens.output_labels == ("start", "end")


def test_span_score_refuses_a_logit_on_padding_or_a_position_outside_the_input(model):
    """Item 1 of the padded batch has 6 real tokens: position 7 is its padding. Before the fix the logit kind
    silently returned the padding position's logit (and -1 the last padded column's), 9 an IndexError."""
    tokens, mask = padded_tokens()
    batch = model.prepare_input(tokens, one_zero_attention_mask=mask)
    with torch.no_grad():
        out = model.run_prepared(batch)
    with pytest.raises(ValueError, match=r"position 7 is padding in batch item 1, which has 6 real tokens"):
        span_score(7, "start")(out, batch)
    with pytest.raises(ValueError, match=r"position 8 is padding in batch item 1"):
        span_score(-1, "end")(out, batch)
    for kind in ("logit", "logprob"):
        with pytest.raises(ValueError, match=r"position 9 is outside the 9 positions"):
            span_score(9, kind=kind)(out, batch)  # type: ignore[arg-type]
    got = span_score([-1, -4], "end")(out, batch)  # negative counts from the end, as indexing does
    assert torch.equal(got, torch.stack([out[0, 8, 1], out[1, 5, 1]]))
    assert span_score(-1, "end", kind="prob")(out, batch)[1].item() == 0  # a probability on padding is 0
