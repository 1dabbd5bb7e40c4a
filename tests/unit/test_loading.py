"""Checkpoint loading: local folders (single, sharded, .bin), hub names (download mocked), errors."""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

import encoderlens
from encoderlens import HookedEncoder
from encoderlens.convert import supported_architectures
from tests.conftest import raises_input_error


def tiny(tmp_path):
    cfg = BertConfig(
        vocab_size=99, hidden_size=36, num_hidden_layers=2, num_attention_heads=3, intermediate_size=37,
        max_position_embeddings=32,
    )  # fmt: skip
    hf = BertForMaskedLM(cfg).eval()
    path = tmp_path / "single"
    hf.save_pretrained(path)
    return hf, path


def reference_logits(hf):
    tokens = torch.tensor([[2, 10, 11, 12, 3]])
    with torch.no_grad():
        return tokens, hf(input_ids=tokens).logits


def test_sharded_and_bin_checkpoints(tmp_path):
    hf, _ = tiny(tmp_path)
    tokens, ref = reference_logits(hf)
    sharded = tmp_path / "sharded"
    hf.save_pretrained(sharded, max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").exists()
    model = HookedEncoder.from_pretrained(sharded)
    assert (model(tokens) - ref).abs().max() < 1e-4
    binary = tmp_path / "bin"
    binary.mkdir()
    shutil.copy(sharded / "config.json", binary / "config.json")
    torch.save(hf.state_dict(), binary / "pytorch_model.bin")
    model = HookedEncoder.from_pretrained(binary)
    assert (model(tokens) - ref).abs().max() < 1e-4


def test_hub_name_downloads_through_snapshot_download(tmp_path, monkeypatch):
    hf, path = tiny(tmp_path)
    tokens, ref = reference_logits(hf)
    calls = []

    def fake_snapshot_download(repo_id, allow_patterns=None, **kw):
        calls.append((repo_id, tuple(allow_patterns or ())))
        return str(path)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    model = encoderlens.from_pretrained("some-org/tiny-bert")
    assert calls and calls[0][0] == "some-org/tiny-bert" and "*.safetensors" in calls[0][1]
    assert (model(tokens) - ref).abs().max() < 1e-4

    def offline(repo_id, **kw):
        raise OSError("network unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ValueError, match="could not fetch 'some-org/other'"):
        encoderlens.from_pretrained("some-org/other")


def test_loading_errors(tmp_path):
    _, path = tiny(tmp_path)
    with pytest.raises(ValueError, match="is a file"):
        HookedEncoder.from_pretrained(path / "config.json")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        HookedEncoder.from_pretrained(empty)
    shutil.copy(path / "config.json", empty / "config.json")
    with pytest.raises(ValueError, match="no weights"):
        HookedEncoder.from_pretrained(empty)
    with raises_input_error(TypeError, "hub name or folder", param="name_or_path"):
        HookedEncoder.from_pretrained(123)
    with pytest.raises(TypeError, match="PreTrainedModel"):
        HookedEncoder.from_pretrained(hf_model=object())


def test_unknown_architecture_lists_supported(tmp_path):
    from transformers import GPT2Config, GPT2Model

    GPT2Model(GPT2Config(n_embd=12, n_layer=1, n_head=3, vocab_size=20, n_positions=8)).save_pretrained(tmp_path / "g")
    with pytest.raises(ValueError, match="no encoderlens converter.*BertModel"):
        encoderlens.from_pretrained(tmp_path / "g")
    assert "BertForMaskedLM" in supported_architectures()


def test_missing_weight_is_reported(tmp_path):
    hf, _ = tiny(tmp_path)
    sd = hf.state_dict()
    del sd["bert.encoder.layer.1.output.dense.weight"]

    class Fake:
        config = hf.config

        def state_dict(self):
            return sd

    with pytest.raises(ValueError, match="missing weight 'encoder.layer.1.output.dense.weight'"):
        HookedEncoder.from_pretrained(hf_model=Fake())
