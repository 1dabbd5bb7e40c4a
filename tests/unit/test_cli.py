"""The analysis subcommands of the ``encoderlens`` command: inspect, predict, cache, attention, patch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import BertModel

import encoderlens
from encoderlens.cli import main
from tests.conftest import save_tiny
from tests.unit.analysis_helpers import default_model, tiny_config, tiny_mlm_folder

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def cached_loads(monkeypatch):
    """Load each checkpoint once per test process (the CLI loads on every call)."""
    real = encoderlens.from_pretrained
    loaded: dict[str, object] = {}

    def load(name=None, **kw):
        if name == "default":
            return default_model()
        if name not in loaded:
            loaded[name] = real(name, **kw)
        return loaded[name]

    monkeypatch.setattr(encoderlens, "from_pretrained", load)


@pytest.fixture(scope="module")
def mlm_folder(tmp_path_factory):
    return tiny_mlm_folder(tmp_path_factory.mktemp("cli") / "mlm", initializer_range=0.2)


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_inspect_prints_architecture_and_hook_shapes(capsys):
    code, out, _ = run(capsys, "inspect", "default")
    assert code == 0
    assert "BertModel" in out and "post-LN" in out and "sentence pooling  mean, normalized" in out
    assert "blocks.5.attn.hook_pattern" in out and "(1, 12, 4, 4)" in out  # [CLS] hello world [SEP]
    code, out, _ = run(capsys, "inspect", "default", "--json", "--hooks", "blocks.0.attn.*")
    data = json.loads(out)
    shapes = {h["name"]: h["shape"] for h in data["hooks"]}
    assert shapes["blocks.0.attn.hook_z"] == [1, 4, 12, 32] and len(shapes) == 7
    assert data["info"]["n_layers"] == 6 and isinstance(data["info"]["parameters"], int)  # numbers as numbers
    code, _, err = run(capsys, "inspect", "default", "--hooks", "blocks.9.*")
    assert code == 2 and "matches no hook point" in err


def test_predict_sentence_embeddings(capsys):
    code, out, _ = run(capsys, "predict", "default", "A man plays guitar.", "Someone performs music.", "Stocks fell.")
    assert code == 0
    assert "dim 384" in out and "|e|=1.000" in out and "cosine similarity" in out
    rows = [line for line in out.splitlines() if line.strip().startswith(("0:", "1:", "2:"))]
    sims = [[float(v) for v in r.split(":")[1].split()] for r in rows]
    assert sims[0][1] > sims[0][2] + 0.3


def test_predict_fill_mask(capsys, mlm_folder):
    code, out, _ = run(capsys, "predict", str(mlm_folder), "paris is the capital of [MASK] .", "--top-k", "3")
    assert code == 0 and "position 6:" in out and out.count("(") >= 3 and "->" in out
    code, _, err = run(capsys, "predict", str(mlm_folder), "no mask here")
    assert code == 2 and "needs [MASK]" in err


def test_predict_refuses_a_bare_encoder(capsys, tmp_path):
    folder = save_tiny(BertModel(tiny_config()).eval(), tmp_path)
    code, _, err = run(capsys, "predict", str(folder), "hello")
    assert code == 2 and "nothing to predict" in err


def test_cache_writes_safetensors(capsys, tmp_path):
    out_file = tmp_path / "acts.safetensors"
    texts = ["Hello there.", "A somewhat longer second sentence."]
    code, out, _ = run(
        capsys,
        "cache",
        "default",
        *texts,
        "--hooks",
        "blocks.*.attn.hook_pattern",
        "--hooks",
        "blocks.0.hook_resid_post,embed.hook_embed",
        "--dtype",
        "float16",
        "--out",
        str(out_file),
    )
    assert code == 0 and "wrote 8 activations" in out
    model = default_model()
    with torch.no_grad():
        _, cache = model.run_with_cache(texts, return_type="embeddings")
    with safe_open(str(out_file), "pt") as f:
        keys = set(f.keys())
        assert {
            "blocks.3.attn.hook_pattern",
            "blocks.0.hook_resid_post",
            "embed.hook_embed",
            "input.tokens",
            "input.attention_mask",
        } <= keys
        saved = f.get_tensor("blocks.0.hook_resid_post")
        assert saved.dtype == torch.float16
        torch.testing.assert_close(saved.float(), cache["blocks.0.hook_resid_post"], atol=2e-2, rtol=1e-2)
        assert torch.equal(f.get_tensor("input.attention_mask"), model.tokenize(texts).attention_mask)
        meta = f.metadata()
    assert json.loads(meta["inputs"]) == texts and meta["model"] == "default"
    assert json.loads(meta["tokens"])[0][:2] == ["[CLS]", "hello"]


def test_cache_bad_arguments(capsys, tmp_path):
    code, _, err = run(capsys, "cache", "default", "x", "--hooks", "embed.hook_embed", "--out", str(tmp_path / "a.pt"))
    assert code == 2 and ".safetensors" in err
    code, _, err = run(
        capsys,
        "cache",
        "default",
        "x",
        "--hooks",
        "blocks.*.attn.hook_patern",
        "--out",
        str(tmp_path / "a.safetensors"),
    )
    assert code == 2 and "did you mean" in err and "hook_pattern" in err
    code, _, err = run(
        capsys, "cache", "default", "x", "--hooks", "embed.hook_embed", "--out", str(tmp_path / "no" / "a.safetensors")
    )
    assert code == 2 and "does not exist" in err


def test_attention_writes_html(capsys, tmp_path):
    page = tmp_path / "att.html"
    code, out, _ = run(
        capsys, "attention", "default", "The cat sat.", "Dogs bark loudly.", "--html", str(page), "--layers", "0,5"
    )
    assert code == 0 and page.exists() and "works offline" in out
    doc = page.read_text()
    assert '"n_layers":2' in doc and "dogs" in doc
    code, _, err = run(capsys, "attention", "default", "x", "--html", str(tmp_path / "a.png"))
    assert code == 2 and ".html" in err
    code, _, err = run(capsys, "attention", "default", "x", "--html", str(page), "--layers", "one")
    assert code == 2 and "--layers" in err


def test_patch_on_the_embedding_model(capsys, tmp_path):
    js = tmp_path / "res.json"
    html = tmp_path / "res.html"
    code, out, _ = run(
        capsys,
        "patch",
        "default",
        "--clean",
        "The cat sat on the mat.",
        "--corrupt",
        "The dog sat on the mat.",
        "--no-progress",
        "--json",
        str(js),
        "--html",
        str(html),
    )
    assert code == 0
    assert "2:cat/dog" in out and "clean +1.0000" in out
    data = json.loads(js.read_text())
    assert data["axes"] == ["layer", "pos"] and data["values"][0][2] == pytest.approx(1.0, abs=1e-5)
    assert html.read_text().startswith("<!DOCTYPE html>")
    code, out, _ = run(
        capsys, "patch", "default", "--clean", "The cat sat.", "--corrupt", "The dog sat.", "--target", "mlp",
        "--reference", "A kitten rested.", "--no-progress",
    )  # fmt: skip
    assert code == 0 and "mlp_out by layer and position" in out and "L5" in out and "to the reference" in out


def test_patch_on_an_mlm(capsys, mlm_folder):
    code, out, _ = run(
        capsys, "patch", str(mlm_folder), "--clean", "paris is the capital of [MASK] .",
        "--corrupt", "rome is the capital of [MASK] .", "--answer", "france", "--wrong", "italy", "--target", "mlp", "--no-progress",
    )  # fmt: skip
    assert code == 0 and "logit(france) - logit(italy) at position 6" in out and "L2" in out
    code, out, _ = run(
        capsys, "patch", str(mlm_folder), "--clean", "paris is the capital of [MASK] .",
        "--corrupt", "rome is the capital of [MASK] .", "--answer", "france", "--wrong", "italy", "--target", "heads",
        "--no-progress", "--no-normalize",
    )  # fmt: skip
    assert code == 0 and "attn heads (z)" in out and "H2" in out
    code, _, err = run(capsys, "patch", str(mlm_folder), "--clean", "paris is big .", "--corrupt", "rome is big .")
    assert code == 2 and "needs a [MASK]" in err


def test_patch_bad_pairs(capsys):
    code, _, err = run(capsys, "patch", "default", "--clean", "The cat sat.", "--corrupt", "The big dog sat down.")
    assert code == 2 and "different shapes" in err and "tokens" in err


def test_unknown_model_and_missing_arguments(capsys):
    code, _, err = run(capsys, "inspect", "/no/such/checkpoint")
    assert code == 2 and "no such folder" in err
    with pytest.raises(SystemExit) as exc:
        main(["patch", "default", "--clean", "x"])
    assert exc.value.code == 2


def test_python_dash_m_subprocess(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "encoderlens", "inspect", "default", "--hooks", "blocks.0.hook_*"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "blocks.0.hook_resid_pre" in proc.stdout and "(1, 4, 384)" in proc.stdout
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "encoderlens",
            "cache",
            "default",
            "x",
            "--hooks",
            "nope",
            "--out",
            str(tmp_path / "a.safetensors"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert bad.returncode == 2 and "unknown hook name" in bad.stderr
