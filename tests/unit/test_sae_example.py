"""The documented SAE example (examples/train_sae.py) runs: harvest without special tokens -> train -> SAELens
folder -> splice back into the embedded model. Small sizes keep it fast."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

import encoderlens
from encoderlens.harvest import load_harvest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_sae.py"


def test_train_sae_example(tmp_path):
    spec = importlib.util.spec_from_file_location("train_sae_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    stats = mod.main(tmp_path, n_sentences=16, d_sae=256, steps=150, batch=128)
    # rows: every real token but [CLS] and [SEP]
    model = encoderlens.from_pretrained("default")
    batch = model.prepare_input(mod.sentences(16))
    assert stats["rows"] == int(batch.mask(None).sum()) - 2 * 16
    ids = batch.token_ids[None][batch.mask(None).bool()]
    special = torch.tensor(model.tokenizer.all_special_ids)
    assert stats["rows"] == int((~torch.isin(ids, special)).sum())
    assert load_harvest(tmp_path / "acts").manifest["settings"]["exclude_special_tokens"] == sorted(special.tolist())
    assert stats["variance_explained"] > 0.7, stats
    assert stats["spliced_cosine"] > 0.5, stats
    assert 0 < stats["l0"] <= 16
    assert (tmp_path / "sae" / "cfg.json").is_file() and (tmp_path / "sae" / "sae_weights.safetensors").is_file()


def test_exclude_special_tokens_options(tmp_path):
    import pytest

    from encoderlens.harvest import harvest
    from tests.unit.analysis_helpers import tiny_mlm

    model = tiny_mlm()  # no tokenizer
    items = [[2, 7, 9, 3], [2, 8, 3]]
    with pytest.raises(ValueError, match="no tokenizer"):
        harvest(model, items, "blocks.0.hook_resid_post", tmp_path / "a", exclude_special_tokens=True, progress=False)
    with pytest.raises(ValueError, match="pass one of them"):
        harvest(
            model, items, "blocks.0.hook_resid_post", tmp_path / "b", exclude_special_tokens=[2], include_padding=True
        )
    harvest(model, items, "blocks.0.hook_resid_post", tmp_path / "c", exclude_special_tokens=[2, 3], progress=False)
    rows = load_harvest(tmp_path / "c").rows("token")
    assert rows["pos"].tolist() == [1, 2, 1] and rows["item"].tolist() == [0, 0, 1]
