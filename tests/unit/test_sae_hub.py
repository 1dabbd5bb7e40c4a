"""SAELens-layout SAEs from the hub (download mocked), every cfg.json key SAELens writes, and splice validation.

The download is a monkeypatched ``huggingface_hub.snapshot_download`` that serves folders written here,
filtered by ``allow_patterns`` as the hub does, so the tests also check that only the SAE's files are asked for.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from encoderlens import HookedEncoderDecoder, load_sae, load_sae_from_hub, save_sae
from encoderlens.components.sae_keys import INFORMATIONAL_KEYS, KEY_HANDLING
from tests.seq2seq_helpers import make_hf
from tests.unit.analysis_helpers import padded_tokens, tiny_mlm
from tests.unit.test_sae import HOOK, D, manual_encode, manual_recons, random_sae


class FakeHub:
    """Serves ``repos[repo_id]`` folders through ``snapshot_download``, copying only what the patterns allow."""

    def __init__(self, tmp_path: Path) -> None:
        self.root, self.repos, self.calls = tmp_path / "hub", {}, []

    def __call__(self, repo_id, revision=None, cache_dir=None, allow_patterns=None, force_download=False, **kw):
        self.calls.append({"repo_id": repo_id, "revision": revision, "cache_dir": cache_dir, "allow": allow_patterns})
        if repo_id not in self.repos:
            raise OSError(f"404 Client Error: repository {repo_id} not found")
        src = self.repos[repo_id]
        out = self.root / repo_id / (revision or "main")
        for f in src.rglob("*"):
            rel = f.relative_to(src).as_posix()
            if f.is_file() and any(fnmatch.fnmatchcase(rel, p) for p in allow_patterns or ["*"]):
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(f, out / rel)
        out.mkdir(parents=True, exist_ok=True)
        return str(out)


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    import huggingface_hub

    fake = FakeHub(tmp_path)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    return fake


def write_repo(tmp_path: Path, name: str, folders: dict[str, dict]) -> Path:
    """A repo holding SAEs: ``{folder: {"sae": SAE, "cfg": edits, "sparsity": tensor, "pt": bool}}``."""
    repo = tmp_path / "repos" / name
    for folder, spec in folders.items():
        path = save_sae(spec["sae"], repo / folder)
        if "cfg" in spec:
            cfg = json.loads((path / "cfg.json").read_text())
            (path / "cfg.json").write_text(json.dumps({**cfg, **spec["cfg"]}))
        if "sparsity" in spec:
            save_file({"sparsity": spec["sparsity"]}, str(path / "sparsity.safetensors"))
        (path / "other.pt").write_bytes(b"not to be downloaded")
    return repo


# ---------------------------------------------------------------------- by repo id + folder
def test_repo_and_folder_download_only_the_sae_files(tmp_path, hub):
    sae = random_sae("topk", seed=1)
    log_sparsity = torch.linspace(-5, -1, 50)
    hub.repos["org/bert-saes"] = write_repo(
        tmp_path, "r", {"layer_1/res": {"sae": sae, "sparsity": log_sparsity}, "root_too": {"sae": random_sae("gated")}}
    )
    got = load_sae_from_hub("org/bert-saes", "layer_1/res", revision="v2", cache_dir=str(tmp_path / "cache"))
    call = hub.calls[-1]
    assert (
        call["repo_id"] == "org/bert-saes" and call["revision"] == "v2" and call["cache_dir"] == str(tmp_path / "cache")
    )
    assert call["allow"] == [
        "layer_1/res/cfg.json",
        "layer_1/res/sae_weights.safetensors",
        "layer_1/res/sparsity.safetensors",
    ]
    fetched = Path(hub.root / "org/bert-saes/v2")
    assert sorted(p.name for p in fetched.rglob("*") if p.is_file()) == sorted(
        ["cfg.json", "sae_weights.safetensors", "sparsity.safetensors"]
    )  # never other.pt, never the other SAE
    assert got.cfg.hook_name == HOOK and got.cfg.architecture == "topk" and got.cfg.k == 7
    assert torch.equal(got.log_feature_sparsity, log_sparsity)
    x = torch.randn(3, D)
    with torch.no_grad():
        assert torch.equal(got(x), sae(x))
        assert torch.allclose(got(x), manual_recons(sae, x), atol=1e-5)


def test_hub_failures_say_what_and_how_to_fix(tmp_path, hub):
    hub.repos["org/r"] = write_repo(tmp_path, "r", {"a": {"sae": random_sae("standard")}})
    with pytest.raises(ValueError, match="could not fetch the SAE 'a' from 'org/missing'.*404"):
        load_sae_from_hub("org/missing", "a")
    with pytest.raises(ValueError, match="has no b/cfg.json, b/sae_weights.safetensors.*Check sae_id"):
        load_sae_from_hub("org/r", "b")
    with pytest.raises(ValueError, match="is a .pt file: encoderlens never unpickles"):
        load_sae_from_hub("org/r", "a/other.pt")
    with pytest.raises(ValueError, match="leaves the repository"):
        load_sae_from_hub("org/r", "../elsewhere")
    with pytest.raises(ValueError, match="unknown SAE release 'gpt2-small-res-jb'.*install sae-lens"):
        load_sae_from_hub("gpt2-small-res-jb", "blocks.0.hook_resid_pre")
    assert [c["repo_id"] for c in hub.calls] == ["org/missing", "org/r"]  # refusals ask the hub nothing
    local = tmp_path / "pickled"
    local.mkdir()
    (local / "sae.pt").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match=r"\['sae.pt'\] are never unpickled"):
        load_sae(local)


# ---------------------------------------------------------------------- by release name
RELEASES = {
    "tiny-res": {
        "repo_id": "org/tiny-saes",
        "model": "tiny",
        "conversion_func": None,
        "config_overrides": {
            "dataset_path": "my/dataset",
            "model_from_pretrained_kwargs": {"center_writing_weights": True},
        },
        "saes": [
            {"id": HOOK, "path": "l1_res_50", "neuronpedia": "tiny/1-res", "norm_scaling_factor": 0.5},
            {"id": "blocks.0.hook_resid_post", "path": "l0_res_50"},
        ],
    },
    "converted": {"repo_id": "org/npz", "conversion_func": "gemma_2", "saes": [{"id": "x", "path": "x"}]},
}


def test_release_mapping_resolves_folder_overrides_and_folds_the_norm_scaling_factor(tmp_path, hub):
    sae = random_sae("jumprelu", seed=2)
    hub.repos["org/tiny-saes"] = write_repo(
        tmp_path,
        "t",
        {
            "l1_res_50": {"sae": sae, "cfg": {"normalize_activations": "expected_average_only_in"}},
            "l0_res_50": {"sae": random_sae("standard", hook="blocks.0.hook_resid_post")},
        },
    )
    with pytest.warns(UserWarning, match=r"\['center_writing_weights'\] set"):  # as gpt2-small-res-jb's overrides
        got = load_sae_from_hub("tiny-res", HOOK, releases=RELEASES)
    assert hub.calls[-1]["allow"][0] == "l1_res_50/cfg.json"
    assert got.cfg.normalize_activations == "none"  # folded, as SAELens does
    assert got.cfg.metadata["dataset_path"] == "my/dataset" and got.cfg.metadata["neuronpedia_id"] == "tiny/1-res"
    assert got.cfg.metadata["model_from_pretrained_kwargs"] == {"center_writing_weights": True}
    x = torch.randn(4, D) * 3
    with torch.no_grad():  # the SAE was trained on 0.5 * x: recons(x) = recons_trained(0.5 x) / 0.5
        assert torch.allclose(got(x), manual_recons(sae, 0.5 * x) / 0.5, atol=1e-5)
        assert torch.allclose(got.encode(x), manual_encode(sae, 0.5 * x), atol=1e-5)
    with pytest.warns(UserWarning, match="center_writing_weights"):
        other = load_sae_from_hub("tiny-res", "blocks.0.hook_resid_post", releases=RELEASES)
    assert other.cfg.hook_name == "blocks.0.hook_resid_post"  # no factor: cfg says "none"
    with pytest.raises(ValueError, match="has no SAE with id 'blocks.5.hook_resid_post'.*'blocks.1.hook_resid_post'"):
        load_sae_from_hub("tiny-res", "blocks.5.hook_resid_post", releases=RELEASES)
    with pytest.raises(ValueError, match="holds several SAEs; pass sae_id="):
        load_sae_from_hub("tiny-res", releases=RELEASES)
    with pytest.raises(ValueError, match="conversion_func='gemma_2'.*SAELens's own layout"):
        load_sae_from_hub("converted", "x", releases=RELEASES)
    with pytest.raises(ValueError, match="norm_scaling_factor=<float>"):
        load_sae(hub.root / "org/tiny-saes/main/l1_res_50")  # no factor given locally: refused, not guessed
    with pytest.raises(ValueError, match="norm_scaling_factor=2.0 applies to SAEs with"):
        load_sae(hub.root / "org/tiny-saes/main/l0_res_50", norm_scaling_factor=2.0)


def test_installed_sae_lens_table_is_read_without_importing_sae_lens(tmp_path, hub, monkeypatch):
    pkg = tmp_path / "site" / "sae_lens"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('sae_lens must not be imported')\n")
    import yaml

    (pkg / "pretrained_saes.yaml").write_text(yaml.safe_dump({"tiny-res": RELEASES["tiny-res"]}))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    hub.repos["org/tiny-saes"] = write_repo(tmp_path, "t", {"l0_res_50": {"sae": random_sae("standard")}})
    with pytest.warns(UserWarning, match="center_writing_weights"):
        got = load_sae_from_hub("tiny-res", "blocks.0.hook_resid_post")
    assert got.cfg.metadata["dataset_path"] == "my/dataset" and "sae_lens" not in sys.modules


# ---------------------------------------------------------------------- cfg.json keys
# Keys of SAELens's cfg.json files as its code writes them: SAELens 6 (SAEConfig + per-architecture fields +
# SAEMetadata / LLM_METADATA_KEYS) and SAELens 5's flat SAEConfig (sae_lens/sae.py, v5.11).
SAELENS6_KEYS = [
    "architecture", "d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input", "normalize_activations",
    "reshape_activations", "metadata", "k", "rescale_acts_by_decoder_norm",
]  # fmt: skip
SAELENS6_METADATA = [
    "model_name", "hook_name", "model_class_name", "hook_head_index", "model_from_pretrained_kwargs", "prepend_bos",
    "exclude_special_tokens", "neuronpedia_id", "context_size", "seqpos_slice", "dataset_path", "sae_lens_version",
    "sae_lens_training_version", "hook_name_out", "hook_head_index_out",
]  # fmt: skip
SAELENS5_KEYS = [
    "architecture", "d_in", "d_sae", "activation_fn_str", "apply_b_dec_to_input", "finetuning_scaling_factor",
    "context_size", "model_name", "hook_name", "hook_layer", "hook_head_index", "prepend_bos", "dataset_path",
    "dataset_trust_remote_code", "normalize_activations", "dtype", "device", "sae_lens_training_version",
    "activation_fn_kwargs", "neuronpedia_id", "model_from_pretrained_kwargs", "seqpos_slice",
    "hook_point", "hook_point_layer", "hook_point_head_index",
]  # fmt: skip


def test_every_saelens_key_has_a_stated_handling():
    known = set(KEY_HANDLING) | INFORMATIONAL_KEYS
    assert not [k for k in SAELENS6_KEYS + SAELENS6_METADATA + SAELENS5_KEYS if k not in known]


def legacy_cfg(**edits) -> dict:
    cfg = {
        "d_in": D, "d_sae": 50, "hook_point": HOOK, "hook_point_layer": 1, "hook_point_head_index": None,
        "model_name": "tiny", "activation_fn_str": "relu", "apply_b_dec_to_input": True,
        "finetuning_scaling_factor": False, "context_size": 128, "dataset_path": "d", "normalize_activations": False,
        "dtype": "torch.float32", "device": "cuda", "sae_lens_training_version": "3.0.0", "lr": 4e-4,
        "l1_coefficient": 8, "use_ghost_grads": True, "model_from_pretrained_kwargs": {},
    }  # fmt: skip
    return {**cfg, **edits}


def write_folder(path: Path, cfg: dict, weights: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(path / "sae_weights.safetensors"))
    (path / "cfg.json").write_text(json.dumps(cfg))
    return path


def test_legacy_defaults_follow_saelens(tmp_path, recwarn):
    sae = random_sae("standard", seed=4)
    w = {k: v.detach() for k, v in sae.named_parameters()}
    got = load_sae(write_folder(tmp_path / "old", legacy_cfg(), w))
    assert not [str(r.message) for r in recwarn]  # a typical SAELens 3 config: every key known, nothing to warn
    assert (
        got.cfg.hook_name == HOOK and got.cfg.normalize_activations == "none" and got.cfg.reshape_activations == "none"
    )
    assert got.cfg.metadata["lr"] == 4e-4 and got.cfg.metadata["hook_point_layer"] == 1
    x = torch.randn(3, D)
    with torch.no_grad():
        assert torch.allclose(got(x), manual_recons(sae, x), atol=1e-5)
    # a hook_z SAE of SAELens <= 5 has no reshape_activations: hook_z layout from the hook name
    z_sae = random_sae("standard", hook="blocks.0.attn.hook_z")
    wz = {k: v.detach() for k, v in z_sae.named_parameters()}
    zf = write_folder(tmp_path / "z", legacy_cfg(hook_point="blocks.0.attn.hook_z"), wz)
    assert load_sae(zf).cfg.reshape_activations == "hook_z"
    z = torch.randn(2, 5, 3, 12)
    with torch.no_grad():
        assert torch.allclose(load_sae(zf)(z), manual_recons(z_sae, z.flatten(-2)).unflatten(-1, (3, 12)), atol=1e-5)
    # normalize_activations=True is SAELens 5's "expected_average_only_in": needs the factor
    with pytest.raises(ValueError, match="norm_scaling_factor"):
        load_sae(write_folder(tmp_path / "n", legacy_cfg(normalize_activations=True), w))
    scaled = load_sae(tmp_path / "n", norm_scaling_factor=2.0)
    with torch.no_grad():
        assert torch.allclose(scaled(x), manual_recons(sae, 2.0 * x) / 2.0, atol=1e-5)


def test_fine_tuning_scale_is_folded_and_inconsistent_folders_refused(tmp_path):
    sae = random_sae("standard", seed=6)
    w = {k: v.detach() for k, v in sae.named_parameters()}
    scale = torch.rand(50) + 0.5
    got = load_sae(
        write_folder(tmp_path / "ft", legacy_cfg(finetuning_scaling_factor=True), {**w, "scaling_factor": scale})
    )
    x = torch.randn(3, D)
    with torch.no_grad():  # SAELens 5: recons = (acts * scaling_factor) @ W_dec + b_dec
        assert torch.allclose(got(x), (manual_encode(sae, x) * scale) @ w["W_dec"] + w["b_dec"], atol=1e-5)
    ones = load_sae(write_folder(tmp_path / "ones", legacy_cfg(), {**w, "scaling_factor": torch.ones(50)}))
    with torch.no_grad():
        assert torch.allclose(ones(x), manual_recons(sae, x), atol=1e-5)
    with pytest.raises(
        ValueError, match="scaling_factor that is not all ones but .*finetuning_scaling_factor is False"
    ):
        load_sae(write_folder(tmp_path / "bad", legacy_cfg(), {**w, "scaling_factor": scale}))


def test_topk_rescale_by_decoder_norm_matches_saelens_formula(tmp_path):
    sae = random_sae("topk", seed=7)
    w = {k: v.detach() for k, v in sae.named_parameters()}
    path = save_sae(sae, tmp_path / "t")
    cfg = json.loads((path / "cfg.json").read_text())
    assert cfg["rescale_acts_by_decoder_norm"] is False
    write_folder(path, {**cfg, "rescale_acts_by_decoder_norm": True}, w)
    got = load_sae(path)
    x = torch.randn(4, D)
    norms = w["W_dec"].norm(dim=-1)
    pre = ((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]) * norms  # SAELens TopKSAE.encode
    v, i = pre.topk(7, dim=-1)
    acts = torch.zeros_like(pre).scatter(-1, i, v.relu())
    with torch.no_grad():
        assert torch.allclose(got.encode(x), acts, atol=1e-5)
        assert torch.allclose(got(x), (acts / norms) @ w["W_dec"] + w["b_dec"], atol=1e-5)
        assert not torch.allclose(got(x), sae(x), atol=1e-3)  # the option matters for these weights
    assert json.loads((save_sae(got, tmp_path / "again") / "cfg.json").read_text())["rescale_acts_by_decoder_norm"]


def test_keys_that_change_the_result_are_refused_or_warned(tmp_path):
    sae = random_sae("standard")
    w = {k: v.detach() for k, v in sae.named_parameters()}
    with pytest.raises(ValueError, match="hook_head_index=3.*per-head SAEs are not supported"):
        load_sae(write_folder(tmp_path / "h", legacy_cfg(hook_point_head_index=3), w))
    with pytest.raises(ValueError, match="activation_fn='tanh-relu' is not supported"):
        load_sae(write_folder(tmp_path / "a", legacy_cfg(activation_fn_str="tanh-relu"), w))
    with pytest.raises(ValueError, match="architecture must be one of.*transcoders"):
        load_sae(write_folder(tmp_path / "tc", {**legacy_cfg(), "architecture": "transcoder"}, w))
    with pytest.warns(UserWarning, match=r"\['fold_ln'\] set.*unprocessed"):
        load_sae(write_folder(tmp_path / "p", legacy_cfg(model_from_pretrained_kwargs={"fold_ln": True}), w))
    with pytest.warns(UserWarning, match=r"keys \['b_scale', 'use_bias_v2'\] are not SAELens keys"):
        got = load_sae(write_folder(tmp_path / "u", legacy_cfg(b_scale=2.0, use_bias_v2=True), w))
    assert got.cfg.metadata["b_scale"] == 2.0


# ---------------------------------------------------------------------- validation against the model
@pytest.fixture(scope="module")
def model():
    return tiny_mlm()


def test_splice_validation_names_hook_width_and_device(model):
    tokens, mask = padded_tokens()
    wrong = random_sae("standard", d_in=24)
    wrong.cfg.metadata["model_name"] = "gpt2-small"
    with pytest.raises(ValueError, match=r"reads d_in=24 features.*shape \(2, 9, 36\).*of 'gpt2-small'"):
        model.run_with_saes(tokens, one_zero_attention_mask=mask, saes=[wrong])
    assert model.acts_to_saes == {}
    with pytest.raises(ValueError, match=r"is on meta, the model on cpu; move it first: sae.to\('cpu'\)"):
        model.add_sae(random_sae("standard").to("meta"))
    with pytest.raises(ValueError, match="unknown hook name 'blocks.1.hook_resid_pots'"):
        model.add_sae(random_sae("standard", hook="blocks.1.hook_resid_pots"))


def test_transformerlens_alias_hook_names_attach(tmp_path):
    seq = HookedEncoderDecoder.from_pretrained(hf_model=make_hf("t5"))
    alias, own = "encoder.0.hook_resid_post", "encoder.blocks.0.hook_resid_post"
    assert seq.canonical_hook_name(alias) == own
    ex = seq.example_input()
    batch = seq.prepare_input(ex.input, **ex.options)
    _, cache = seq.run_prepared_with_cache(batch, names_filter=own)
    sae = random_sae("standard", d_in=cache[own].shape[-1], hook=alias)
    with torch.no_grad():
        ref = seq.run_prepared(batch, fwd_hooks=[(own, lambda x, hook: manual_recons(sae, x))])
        with seq.saes([sae]):
            assert list(seq.acts_to_saes) == [own]
            out, c = seq.run_prepared_with_cache(batch, names_filter=f"{own}.hook_sae_acts_post")
    assert torch.allclose(out, ref, atol=1e-4)
    assert torch.allclose(c[f"{own}.hook_sae_acts_post"], manual_encode(sae, cache[own]), atol=1e-5)
    assert seq.acts_to_saes == {}


# Verbatim excerpts of SAELens's pretrained_saes.yaml (jbloomAus/SAELens, v6.9): the layout the table is read in.
SAELENS_YAML_EXCERPT = """
deepseek-r1-distill-llama-8b-qresearch:
  conversion_func: deepseek_r1
  model: deepseek-ai/DeepSeek-R1-Distill-Llama-8B
  repo_id: qresearch/DeepSeek-R1-Distill-Llama-8B-SAE-l19
  saes:
  - id: blocks.19.hook_resid_post
    neuronpedia: deepseek-r1-distill-llama-8b/19-qresearch-res-65k
    path: DeepSeek-R1-Distill-Llama-8B-SAE-l19.pt
gemma-2b-res-jb:
  conversion_func: null
  model: gemma-2b
  repo_id: jbloom/Gemma-2b-Residual-Stream-SAEs
  saes:
  - id: blocks.12.hook_resid_post
    l0: 62.0
    neuronpedia: gemma-2b/12-res-jb
    norm_scaling_factor: 0.21381938399317255
    path: gemma_2b_blocks.12.hook_resid_post_16384
    variance_explained: -0.65
gemma-scope-2b-pt-res-canonical:
  conversion_func: gemma_2
  model: gemma-2-2b
  repo_id: google/gemma-scope-2b-pt-res
  saes:
  - id: layer_0/width_16k/canonical
    neuronpedia: gemma-2-2b/0-gemmascope-res-16k
gpt2-small-res-jb:
  config_overrides:
    model_from_pretrained_kwargs:
      center_writing_weights: true
  conversion_func: null
  links:
    dashboards: https://www.neuronpedia.org/gpt2sm-res-jb
  model: gpt2-small
  repo_id: jbloom/GPT2-Small-SAEs-Reformatted
  saes:
  - id: blocks.0.hook_resid_pre
    l0: 10.0
    neuronpedia: gpt2-small/0-res-jb
    path: blocks.0.hook_resid_pre
    variance_explained: 0.999
"""


def test_real_saelens_release_entries_resolve_or_are_refused():
    import yaml

    from encoderlens.io.sae_hub import locate_sae

    table = yaml.safe_load(SAELENS_YAML_EXCERPT)
    loc = locate_sae("gpt2-small-res-jb", "blocks.0.hook_resid_pre", table)
    assert (loc.repo_id, loc.folder, loc.release) == (
        "jbloom/GPT2-Small-SAEs-Reformatted",
        "blocks.0.hook_resid_pre",
        "gpt2-small-res-jb",
    )
    assert loc.config_overrides == {
        "model_from_pretrained_kwargs": {"center_writing_weights": True},
        "neuronpedia_id": "gpt2-small/0-res-jb",
    }
    gemma = locate_sae("gemma-2b-res-jb", "blocks.12.hook_resid_post", table)
    assert gemma.folder == "gemma_2b_blocks.12.hook_resid_post_16384" and gemma.norm_scaling_factor == pytest.approx(
        0.2138, abs=1e-4
    )
    with pytest.raises(ValueError, match="conversion_func='gemma_2'"):
        locate_sae("gemma-scope-2b-pt-res-canonical", "layer_0/width_16k/canonical", table)
    with pytest.raises(ValueError, match="conversion_func='deepseek_r1'"):
        locate_sae("deepseek-r1-distill-llama-8b-qresearch", "blocks.19.hook_resid_post", table)
    del table["deepseek-r1-distill-llama-8b-qresearch"]["conversion_func"]  # a .pt path alone is refused too
    with pytest.raises(ValueError, match="is a .pt file"):
        locate_sae("deepseek-r1-distill-llama-8b-qresearch", "blocks.19.hook_resid_post", table)
