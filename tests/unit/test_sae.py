"""Sparse autoencoders: SAELens format, the maths per architecture, splicing into every family, feature patching.

References are written out by hand: the formula of each architecture, and manual hooks doing what a spliced
SAE should do.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file

from encoderlens import HookedAudioEncoder, HookedEncoderDecoder, SAEConfig, SparseAutoencoder, load_sae, save_sae
from encoderlens.analysis import attribute_sae_features, logit_diff, patch_sae_features
from tests.seq2seq_helpers import make_hf, padded_seq2seq_batch
from tests.unit.analysis_helpers import padded_tokens, tiny_mlm

D = 36  # tiny_mlm's d_model
HOOK = "blocks.1.hook_resid_post"


def random_sae(arch: str, d_in: int = D, d_sae: int = 50, hook: str = HOOK, seed: int = 0, **kw) -> SparseAutoencoder:
    torch.manual_seed(seed)
    k = 7 if arch == "topk" else None
    sae = SparseAutoencoder(SAEConfig(arch, d_in, d_sae, hook_name=hook, k=k, **kw))
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0, 0.3)
        if arch == "jumprelu":
            sae.threshold.uniform_(0.0, 0.4)
    return sae


def manual_encode(sae: SparseAutoencoder, x: torch.Tensor) -> torch.Tensor:
    """Each architecture's formula, written out independently of the module."""
    p = dict(sae.named_parameters())
    x = x - p["b_dec"]
    arch = sae.cfg.architecture
    if arch == "gated":
        gate = (x @ p["W_enc"] + p["b_gate"]) > 0
        mag = torch.relu(x @ (p["W_enc"] * p["r_mag"].exp()) + p["b_mag"])
        return gate.float() * mag
    pre = x @ p["W_enc"] + p["b_enc"]
    if arch == "standard":
        return torch.relu(pre)
    if arch == "jumprelu":
        return torch.where(pre > p["threshold"], torch.relu(pre), torch.zeros_like(pre))
    flat, out = pre.reshape(-1, pre.shape[-1]), torch.zeros(pre.reshape(-1, pre.shape[-1]).shape)
    for r in range(flat.shape[0]):
        for i in sorted(range(flat.shape[1]), key=lambda i: -float(flat[r, i]))[: sae.cfg.k]:
            out[r, i] = max(float(flat[r, i]), 0.0)
    return out.reshape(pre.shape)


def manual_recons(sae: SparseAutoencoder, x: torch.Tensor) -> torch.Tensor:
    return manual_encode(sae, x) @ sae.W_dec + sae.b_dec


ARCHS = ["standard", "gated", "topk", "jumprelu"]


# ---------------------------------------------------------------------- format and maths
@pytest.mark.parametrize("arch", ARCHS)
def test_reconstruction_matches_the_formula_and_round_trips(tmp_path, arch):
    sae = random_sae(arch)
    x = torch.randn(2, 5, D)
    with torch.no_grad():
        assert torch.allclose(sae.encode(x), manual_encode(sae, x), atol=1e-5)
        assert torch.allclose(sae(x), manual_recons(sae, x), atol=1e-5)
        save_sae(sae, tmp_path / arch)
        cfg = json.loads((tmp_path / arch / "cfg.json").read_text())
        assert cfg["architecture"] == arch and cfg["metadata"]["hook_name"] == HOOK
        back = load_sae(tmp_path / arch)
        assert cfg["metadata"]["sae_lens_version"] == "6.0.0"  # SAELens reads it as its 6.x layout
        assert back.cfg == replace(sae.cfg, metadata={**sae.cfg.metadata, "sae_lens_version": "6.0.0"})
        assert torch.equal(back(x), sae(x))
    if arch == "topk":
        assert int((sae.encode(x) > 0).sum(-1).max()) <= 7


def test_hand_built_saelens_folders_load(tmp_path):
    """A cfg.json in SAELens 6's layout (jump-ReLU) and a legacy one (top-k via activation_fn_str) load."""
    torch.manual_seed(3)
    w = {
        "W_enc": torch.randn(D, 20),
        "W_dec": torch.randn(20, D),
        "b_enc": torch.randn(20) * 0.1,
        "b_dec": torch.randn(D) * 0.1,
        "threshold": torch.rand(20) * 0.5,
    }
    v6 = tmp_path / "v6"
    v6.mkdir()
    save_file(w, str(v6 / "sae_weights.safetensors"))
    cfg6 = {
        "architecture": "jumprelu", "d_in": D, "d_sae": 20, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": False, "normalize_activations": "none", "reshape_activations": "none",
        "metadata": {"model_name": "tiny", "hook_name": HOOK, "prepend_bos": True, "context_size": 128},
    }  # fmt: skip
    (v6 / "cfg.json").write_text(json.dumps(cfg6))
    sae = load_sae(v6)
    x = torch.randn(3, D)
    pre = x @ w["W_enc"] + w["b_enc"]  # apply_b_dec_to_input=False
    expect = torch.where(pre > w["threshold"], pre.relu(), torch.zeros_like(pre)) @ w["W_dec"] + w["b_dec"]
    with torch.no_grad():
        assert torch.allclose(sae(x), expect, atol=1e-5)
    assert sae.cfg.metadata["prepend_bos"] is True and sae.cfg.hook_name == HOOK

    legacy = tmp_path / "legacy"
    legacy.mkdir()
    save_file({k: v for k, v in w.items() if k != "threshold"}, str(legacy / "sae_weights.safetensors"))
    cfg5 = {
        "d_in": D, "d_sae": 20, "hook_name": HOOK, "hook_layer": 1, "model_name": "tiny", "dtype": "float32",
        "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 4}, "apply_b_dec_to_input": True,
        "normalize_activations": "none", "context_size": 128, "prepend_bos": True,
    }  # fmt: skip
    (legacy / "cfg.json").write_text(json.dumps(cfg5))
    top = load_sae(legacy)
    assert top.cfg.architecture == "topk" and top.cfg.k == 4
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    v, i = pre.topk(4, dim=-1)
    expect = torch.zeros_like(pre).scatter(-1, i, v.relu()) @ w["W_dec"] + w["b_dec"]
    with torch.no_grad():
        assert torch.allclose(top(x), expect, atol=1e-5)


def test_normalisations_and_hook_z_layout():
    x = torch.randn(2, 4, D) * 5 + 1
    for mode in ("constant_norm_rescale", "layer_norm"):
        sae = random_sae("standard", normalize_activations=mode)
        with torch.no_grad():
            if mode == "constant_norm_rescale":
                c = D**0.5 / x.norm(dim=-1, keepdim=True)
                expect = manual_recons(sae, x * c) / c
            else:
                mu, sd = x.mean(-1, keepdim=True), (x - x.mean(-1, keepdim=True)).std(-1, keepdim=True)
                expect = manual_recons(sae, (x - mu) / (sd + 1e-5)) * sd + mu
            assert torch.allclose(sae(x), expect, atol=1e-4)
    z = torch.randn(2, 4, 3, 12)
    sae = random_sae("standard", reshape_activations="hook_z", hook="blocks.0.attn.hook_z")
    with torch.no_grad():
        assert sae(z).shape == z.shape
        assert torch.allclose(sae(z), manual_recons(sae, z.flatten(-2)).unflatten(-1, (3, 12)), atol=1e-5)


def test_bad_configs_and_weights_are_refused(tmp_path):
    with pytest.raises(ValueError, match="architecture must be one of"):
        SAEConfig("transcoder", D, 10)
    with pytest.raises(ValueError, match="needs an int k"):
        SAEConfig("topk", D, 10)
    with pytest.raises(ValueError, match="d_in=36"):
        random_sae("standard")(torch.randn(2, 35))
    folder = save_sae(random_sae("gated"), tmp_path / "g")
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**cfg, "architecture": "standard"}))
    with pytest.raises(ValueError, match="missing \\['b_enc'\\]"):
        load_sae(folder)
    with pytest.raises(FileNotFoundError, match="cfg.json"):
        load_sae(tmp_path / "nowhere")


# ---------------------------------------------------------------------- splicing
@pytest.fixture(scope="module")
def model():
    return tiny_mlm()


def test_splicing_equals_a_manual_hook_and_features_are_cached(model):
    tokens, mask = padded_tokens()
    sae = random_sae("topk")

    def manual(x, hook):
        return manual_recons(sae, x)

    with torch.no_grad():
        ref = model.run_with_hooks(tokens, one_zero_attention_mask=mask, fwd_hooks=[(HOOK, manual)])
        out = model.run_with_saes(tokens, one_zero_attention_mask=mask, saes=[sae])
        assert torch.allclose(out, ref, atol=1e-4)
        plain = model(tokens, one_zero_attention_mask=mask)
        assert not torch.allclose(out, plain, atol=1e-2)
        with model.saes([sae]):
            _, cache = model.run_with_cache(tokens, one_zero_attention_mask=mask)
        feats = cache[f"{HOOK}.hook_sae_acts_post"]
        assert torch.allclose(feats, manual_encode(sae, cache[HOOK]), atol=1e-5)  # the hook point: the input
        assert torch.allclose(cache[f"{HOOK}.hook_sae_recons"], manual_recons(sae, cache[HOOK]), atol=1e-5)
    assert model.acts_to_saes == {} and f"{HOOK}.hook_sae_acts_post" not in model.hook_dict


def test_error_term_and_feature_hooks_change_outputs_as_manual_hooks_do(model):
    tokens, mask = padded_tokens()
    sae = random_sae("jumprelu")
    with torch.no_grad():
        plain = model(tokens, one_zero_attention_mask=mask)
        same = model.run_with_saes(tokens, one_zero_attention_mask=mask, saes=[sae], use_error_term=True)
        assert torch.allclose(same, plain, atol=1e-4)
        assert sae.use_error_term is False  # restored

        def kill(acts, hook):
            acts = acts.clone()
            acts[..., 3] = 0
            return acts

        with model.saes([sae], use_error_term=True):
            ablated = model.run_with_hooks(
                tokens, one_zero_attention_mask=mask, fwd_hooks=[(f"{HOOK}.hook_sae_acts_post", kill)]
            )

        def manual(x, hook):
            f = manual_encode(sae, x)
            return x - f[..., 3:4] * sae.W_dec[3]

        ref = model.run_with_hooks(tokens, one_zero_attention_mask=mask, fwd_hooks=[(HOOK, manual)])
        assert torch.allclose(ablated, ref, atol=1e-4)
        assert not torch.allclose(ablated, plain, atol=1e-3)


def test_saes_and_their_hooks_are_removed_after_errors(model):
    tokens, mask = padded_tokens()
    sae = random_sae("standard")

    def boom(x, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        model.run_with_hooks_with_saes(
            tokens, one_zero_attention_mask=mask, saes=[sae], fwd_hooks=[(f"{HOOK}.hook_sae_acts_post", boom)]
        )
    with pytest.raises(RuntimeError, match="boom"), model.saes(sae):
        raise RuntimeError("boom")
    assert model.hook_dict[HOOK].splice is None and model.acts_to_saes == {}
    assert all(not hp.has_hooks() for hp in sae.hook_points().values())
    assert not any(".hook_sae_" in n for n in model.hook_dict)
    with pytest.raises(ValueError, match="unknown hook name"):
        model.add_sae(random_sae("standard", hook="blocks.1.hook_resid_pots"))
    with pytest.raises(
        ValueError, match="reads d_in=35 features, but this model's activation there has shape \\(2, 9, 36\\)"
    ):
        model.run_with_saes(tokens, saes=[random_sae("standard", d_in=35)])
    assert model.acts_to_saes == {}
    model.add_sae(sae)
    with pytest.raises(ValueError, match="already attached"):
        model.add_sae(sae)
    model.reset_saes()
    assert model.hook_dict[HOOK].splice is None


def test_saelens_run_with_cache_keywords(model):
    tokens, mask = padded_tokens()
    with torch.no_grad():
        out, cache = model.run_with_cache(tokens, one_zero_attention_mask=mask, prepend_bos=True, padding_side="right")
        assert torch.allclose(
            out, model(tokens, one_zero_attention_mask=mask), atol=1e-5
        )  # fused paths round differently
        stopped, c2 = model.run_with_cache(tokens, one_zero_attention_mask=mask, stop_at_layer=1)
        assert torch.allclose(stopped, cache["blocks.1.hook_resid_pre"])
        assert "blocks.0.hook_resid_post" in c2 and "blocks.1.attn.hook_pattern" not in c2
    with pytest.raises(ValueError, match="prepend_bos=False"):
        model.run_with_cache("the cat", prepend_bos=False)
    with pytest.raises(ValueError, match="pad on the right"):
        model.run_with_cache(tokens, padding_side="left")
    with pytest.raises(ValueError, match="stop_at_layer"):
        model.run_with_cache(tokens, stop_at_layer=9)


# ---------------------------------------------------------------------- other families
def test_splicing_on_audio_and_encoder_decoder_models(tmp_path):
    from tests.unit.test_analysis_audio import build, waves

    audio, _ = build(tmp_path, pre_ln=True)
    seq = HookedEncoderDecoder.from_pretrained(hf_model=make_hf("t5"))
    src, src_mask, tgt, tgt_mask = padded_seq2seq_batch(first_token=0)
    opts = {"one_zero_attention_mask": src_mask, "decoder_input": tgt, "decoder_attention_mask": tgt_mask}
    cases = [
        (audio, "blocks.1.hook_resid_post", waves(), {}),
        (seq, "encoder.blocks.0.hook_resid_post", src, opts),
        (seq, "decoder.blocks.1.hook_mlp_out", src, opts),
    ]
    for m, hook, inp, opts in cases:
        batch = m.prepare_input(inp, **opts)
        _, cache = m.run_prepared_with_cache(batch, names_filter=hook)
        d = cache[hook].shape[-1]
        sae = random_sae("gated", d_in=d, hook=hook)
        with torch.no_grad():
            ref = m.run_prepared(batch, fwd_hooks=[(hook, lambda x, hook, sae=sae: manual_recons(sae, x))])
            with m.saes([sae]):
                out, c = m.run_prepared_with_cache(batch, names_filter=lambda n: n.endswith("hook_sae_acts_post"))
        assert torch.allclose(out, ref, atol=1e-4), (type(m).__name__, hook)
        assert c[f"{hook}.hook_sae_acts_post"].shape[-1] == 50
    assert isinstance(audio, HookedAudioEncoder)


# ---------------------------------------------------------------------- feature patching and attribution
def test_feature_patching_matches_brute_force_and_attribution_tracks_it(model):
    torch.manual_seed(5)
    clean = torch.randint(5, 99, (2, 7))
    corrupt = clean.clone()
    corrupt[:, 2] = torch.randint(5, 99, (2,))
    sae = random_sae("standard", d_sae=24)

    def metric(logits):
        return logits[:, 4, 11].mean() - logits[:, 4, 12].mean()

    res = patch_sae_features(model, sae, clean, corrupt, metric, normalize=False, max_features=6, positions=[1, 2, 4])
    assert res.axes == ("feature", "pos") and res.values.shape == (6, 3)
    feats = res.meta["features"]
    # brute force: the corrupted run with the SAE (error term on), one feature at one position from the clean run
    with torch.no_grad(), model.saes([sae], use_error_term=True):
        _, cc = model.run_with_cache(clean, names_filter=f"{HOOK}.hook_sae_acts_post")
        src = cc[f"{HOOK}.hook_sae_acts_post"]
        for i, f in enumerate(feats):
            for j, p in enumerate([1, 2, 4]):

                def put(acts, hook, f=f, p=p):
                    acts = acts.clone()
                    acts[:, p, f] = src[:, p, f]
                    return acts

                out = model.run_with_hooks(corrupt, fwd_hooks=[(f"{HOOK}.hook_sae_acts_post", put)])
                assert abs(float(metric(out)) - float(res.values[i, j])) < 1e-4
    est = attribute_sae_features(
        model, sae, clean, corrupt, metric, features=feats, positions=[1, 2, 4], normalize=False
    )
    assert est.values.shape == res.values.shape
    base = res.meta["metric_corrupt"]
    a, b = (res.values - base).flatten(), (est.values - base).flatten()
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.9
    whole = patch_sae_features(model, sae, clean, corrupt, metric, features=feats[:2], by_pos=False)
    assert whole.axes == ("feature",)
    assert model.acts_to_saes == {}


def test_one_sae_is_spliced_in_once(model):
    tokens, mask = padded_tokens()
    sae, other = random_sae("standard"), tiny_mlm(seed=1)
    h0 = "blocks.0.hook_resid_post"
    _, clean = model.run_with_cache(tokens, one_zero_attention_mask=mask)
    model.add_sae(sae)
    try:
        # its hook points carry one name: block 1's features were cached under block 0's name
        with pytest.raises(ValueError, match="already attached at 'blocks.1.hook_resid_post' of this model"):
            model.add_sae(sae, hook_name=h0)
        with pytest.raises(ValueError, match="of another model"):
            other.add_sae(sae)
        _, cache = model.run_with_cache(tokens, one_zero_attention_mask=mask)
        assert torch.equal(cache[f"{HOOK}.hook_sae_input"], clean[HOOK])
        # a copy is another SAE
        copy_ = copy.deepcopy(sae)
        model.add_sae(copy_, hook_name=h0)
        _, cache = model.run_with_cache(tokens, one_zero_attention_mask=mask)
        assert torch.equal(cache[f"{h0}.hook_sae_input"], clean[h0])
    finally:
        model.reset_saes()
    other.add_sae(sae)  # detached: free to go elsewhere
    assert other.acts_to_saes == {HOOK: sae}
    other.reset_saes()


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_low_precision_sae_with_its_error_term_gives_back_the_activation(model, dtype):
    tokens, mask = padded_tokens()
    z = "blocks.0.attn.hook_z"
    plain = model(tokens, one_zero_attention_mask=mask)
    for sae in (
        random_sae("standard", dtype=dtype),
        random_sae("topk", d_in=D, hook=z, dtype=dtype, reshape_activations="hook_z"),
    ):
        # the error term summed in the SAE's dtype rounded the activation to bfloat16 (logits off by 2e-3)
        same = model.run_with_saes(tokens, one_zero_attention_mask=mask, saes=[sae], use_error_term=True)
        torch.testing.assert_close(same, plain, atol=1e-5, rtol=1e-5)


def test_features_that_differ_only_on_padding_are_not_picked(model):
    tokens, mask = padded_tokens()  # item 1 is padding from position 6
    sae = random_sae("standard", d_sae=24)
    kw = {"input_kwargs": {"one_zero_attention_mask": mask}, "normalize": False}

    def noise_on_padding(x, hook):
        x = x.clone()
        x[1, 6:] += 3.0  # changes item 1's padding positions only: no output of either run changes
        return x

    # before: features were ranked by changes on padding, and patched with a zero effect
    for fn in (patch_sae_features, attribute_sae_features):
        with pytest.raises(ValueError, match="no SAE feature differs"):
            fn(model, sae, tokens, None, logit_diff(0, 11, 12), corrupt_hooks=[(HOOK, noise_on_padding)], **kw)
