"""HookedEncoderDecoder generation: HF greedy parity, KV cache vs full recompute, hooks on every step, sampling."""

from __future__ import annotations

import pytest
import torch

from encoderlens import HookedEncoderDecoder
from tests.conftest import raises_input_error
from tests.seq2seq_helpers import generating_hf, greedy_config, padded_seq2seq_batch, pick_eos

MAX_NEW = 22  # 22 decoder positions: past max_distance=20, so the far buckets are used while generating


@pytest.fixture(scope="module")
def t5_pair():
    hf = generating_hf("t5")
    return hf, HookedEncoderDecoder.from_pretrained(hf_model=hf)


@pytest.mark.parametrize("kind", ["t5", "t5_gated", "bart", "mbart"])
def test_greedy_equals_hf_on_a_padded_batch(kind):
    hf = generating_hf(kind)
    model = HookedEncoderDecoder.from_pretrained(hf_model=hf)
    src, src_mask, _, _ = padded_seq2seq_batch()
    free = model.generate(src, one_zero_attention_mask=src_mask, max_new_tokens=MAX_NEW, eos_token_id=())
    assert free.shape == (3, MAX_NEW + 1)
    assert max(len(set(row.tolist())) for row in free) >= 3, "degenerate test model: pick another seed"
    eos = pick_eos(free)
    gen_cfg = greedy_config(hf)
    gen_cfg.eos_token_id = eos
    # replace (not merge with) the model's own generation config, which forces EOS at max length for BART
    hf.generation_config = gen_cfg
    with torch.no_grad():
        theirs = hf.generate(input_ids=src, attention_mask=src_mask, max_new_tokens=MAX_NEW)
    ours = model.generate(src, one_zero_attention_mask=src_mask, max_new_tokens=MAX_NEW, eos_token_id=eos)
    assert torch.equal(ours, theirs), (ours.tolist(), theirs.tolist())
    # the batch exercises early stopping: a row ended (then got padding) while another kept going
    hits = ours[:, 1:] == eos
    end_steps = {int(r.nonzero()[0]) if r.any() else None for r in hits}
    assert len(end_steps) >= 2 and end_steps != {None}
    # the cache-free path (whole decoder recomputed each step) agrees token for token
    slow = model.generate(
        src, one_zero_attention_mask=src_mask, max_new_tokens=MAX_NEW, eos_token_id=eos, use_cache=False
    )
    assert torch.equal(slow, ours)


@pytest.mark.parametrize("kind", ["t5", "bart"])
def test_generation_cache_equals_full_forward(kind):
    """return_cache joins the steps into exactly the activations of one forward over the generated tokens."""
    model = HookedEncoderDecoder.from_pretrained(hf_model=generating_hf(kind))
    src, src_mask, _, _ = padded_seq2seq_batch()
    tokens, gen_cache = model.generate(
        src, one_zero_attention_mask=src_mask, max_new_tokens=MAX_NEW, eos_token_id=(), return_cache=True
    )
    with torch.no_grad():
        logits, full = model.run_with_cache(src, tokens[:, :-1], one_zero_attention_mask=src_mask)
    assert set(gen_cache.keys()) == set(full.keys())
    for name in full:
        assert gen_cache[name].shape == full[name].shape, name
        assert torch.allclose(gen_cache[name], full[name], atol=1e-4, rtol=1e-5), name
    # greedy picks are the argmax of the full forward's logits
    assert torch.equal(logits.argmax(-1), tokens[:, 1:])
    # the joined cache supports the residual algebra like any forward's cache
    if kind == "t5":
        parts = gen_cache.decoder.decompose_resid()
        assert torch.allclose(parts.sum(0), gen_cache["decoder.blocks.1.hook_resid_post"], atol=1e-4)


def test_hooks_fire_every_step_and_can_steer(t5_pair):
    _, model = t5_pair
    src, src_mask, _, _ = padded_seq2seq_batch()
    shapes = []
    with model.hooks(fwd_hooks=[("decoder.blocks.1.cross_attn.hook_pattern", lambda p, hook: shapes.append(p.shape))]):
        clean = model.generate(src, one_zero_attention_mask=src_mask, max_new_tokens=MAX_NEW, eos_token_id=())
    assert len(shapes) == MAX_NEW
    assert all(s == (3, 3, 1, 25) for s in shapes)  # one new query per step against all encoder positions

    def ablate_head(z, hook):
        z = z.clone()
        z[:, :, 0] = 0.0
        return z

    with model.hooks(fwd_hooks=[(lambda n: n.endswith("cross_attn.hook_z"), ablate_head)]):
        ablated = model.generate(src, one_zero_attention_mask=src_mask, max_new_tokens=MAX_NEW, eos_token_id=())
    assert not torch.equal(clean, ablated)
    # hooks are gone after the context: generation is back to the clean result
    assert torch.equal(
        model.generate(src, one_zero_attention_mask=src_mask, max_new_tokens=MAX_NEW, eos_token_id=()), clean
    )


def test_self_attention_cache_grows_and_position_bias_rows(t5_pair):
    _, model = t5_pair
    src = torch.randint(3, 99, (2, 7))
    seen = []
    with model.hooks(fwd_hooks=[("decoder.hook_position_bias", lambda b, hook: seen.append(b.shape))]):
        model.generate(src, max_new_tokens=5, eos_token_id=())
    assert seen == [(1, 3, 1, k) for k in range(1, 6)]


def test_decoder_prefix_and_eos_handling(t5_pair):
    _, model = t5_pair
    src, src_mask, _, _ = padded_seq2seq_batch()
    full = model.generate(src, one_zero_attention_mask=src_mask, max_new_tokens=8, eos_token_id=())
    # continuing from a prefix of the greedy output reproduces the rest
    cont = model.generate(
        src, one_zero_attention_mask=src_mask, max_new_tokens=5, decoder_input=full[:, :4], eos_token_id=()
    )
    assert torch.equal(cont, full[:, :9])
    # stop_at_eos=False generates max_new_tokens even past EOS, without padding
    eos = int(full[0, 2])
    no_stop = model.generate(
        src, one_zero_attention_mask=src_mask, max_new_tokens=8, eos_token_id=eos, stop_at_eos=False
    )
    assert torch.equal(no_stop, full)


def test_sampling(t5_pair):
    _, model = t5_pair
    src, src_mask, _, _ = padded_seq2seq_batch()
    greedy = model.generate(src, one_zero_attention_mask=src_mask, max_new_tokens=6, eos_token_id=())
    kw = dict(one_zero_attention_mask=src_mask, max_new_tokens=6, eos_token_id=(), do_sample=True)
    a = model.generate(src, seed=7, temperature=2.0, **kw)
    b = model.generate(src, seed=7, temperature=2.0, **kw)
    assert torch.equal(a, b)
    assert not torch.equal(a, model.generate(src, seed=8, temperature=2.0, **kw))
    assert torch.equal(model.generate(src, seed=1, top_k=1, **kw), greedy)
    assert torch.equal(model.generate(src, seed=1, top_p=1e-6, **kw), greedy)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        model.generate(src, do_sample=True, temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        model.generate(src, do_sample=True, top_p=1.5)


def test_generation_bad_inputs(t5_pair):
    _, model = t5_pair
    src = torch.randint(3, 99, (2, 7))
    with pytest.raises(ValueError, match="max_new_tokens must be a positive int"):
        model.generate(src, max_new_tokens=0)
    with pytest.raises(ValueError, match="prefix has 3"):
        model.generate(src, decoder_input=torch.zeros(3, 2, dtype=torch.long))
    with raises_input_error(ValueError, "return_type", param="return_type"):
        model.generate(src, return_type="logits")
    with pytest.raises(ValueError, match="needs a tokenizer"):
        model.generate(src, return_type="str", max_new_tokens=2)


@pytest.mark.parametrize(
    "kind,num_beams,length_penalty,early_stopping",
    [("t5", 2, 2.0, "never"), ("t5_gated", 4, 0.5, True), ("bart", 3, 0.5, "never"), ("mbart", 3, 1.0, False)],
)
def test_beam_search_equals_hf(kind, num_beams, length_penalty, early_stopping):
    hf = generating_hf(kind)
    model = HookedEncoderDecoder.from_pretrained(hf_model=hf)
    src, src_mask, _, _ = padded_seq2seq_batch()
    free = model.generate(src, one_zero_attention_mask=src_mask, max_new_tokens=12, eos_token_id=())
    eos = pick_eos(free)
    gen_cfg = greedy_config(hf)
    gen_cfg.update(eos_token_id=eos, num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping)
    hf.generation_config = gen_cfg
    with torch.no_grad():
        theirs = hf.generate(input_ids=src, attention_mask=src_mask, max_new_tokens=12)
    kw = dict(
        one_zero_attention_mask=src_mask,
        max_new_tokens=12,
        eos_token_id=eos,
        num_beams=num_beams,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
    )
    ours = model.generate(src, **kw)
    assert ours.shape == theirs.shape
    # after a hypothesis' EOS we put the pad token; HF puts `pad_token_id or eos_token_id`, i.e. EOS when pad is 0
    ended = torch.cumsum((ours == eos).long(), dim=1) - (ours == eos).long() > 0
    assert torch.equal(ours[~ended], theirs[~ended]), (ours.tolist(), theirs.tolist())
    assert bool((ours[ended] == model.cfg.pad_token_id).all())
    assert bool((ours == eos).any()), "no hypothesis ended with EOS: the test would not cover finished beams"
    assert torch.equal(model.generate(src, use_cache=False, **kw), ours)


def test_beam_search_rejects_what_it_does_not_do(t5_pair):
    _, model = t5_pair
    src = torch.randint(3, 99, (2, 7))
    with pytest.raises(ValueError, match="beam sampling is not implemented"):
        model.generate(src, num_beams=2, do_sample=True)
    with pytest.raises(ValueError, match="return_cache is not available with beam search"):
        model.generate(src, num_beams=2, return_cache=True)
    with pytest.raises(ValueError, match="num_beams must be a positive int"):
        model.generate(src, num_beams=0)
    with raises_input_error(ValueError, "early_stopping", param="early_stopping"):
        model.generate(src, num_beams=2, early_stopping="sometimes")
