"""Inconsistent checkpoints: sharded indices, stale copies, names twice; each raises or reads the intended copy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import BertForMaskedLM

import encoderlens
from encoderlens.io.checkpoint import open_weights
from tests.unit.analysis_helpers import tiny_config

SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
WORDS = "bert.embeddings.word_embeddings.weight"


@pytest.fixture(scope="module")
def hf_weights() -> tuple[BertForMaskedLM, dict[str, torch.Tensor], list[str]]:
    torch.manual_seed(0)
    hf = BertForMaskedLM(tiny_config()).eval()
    sd = {k: v.clone().contiguous() for k, v in hf.state_dict().items()}
    sd.pop("cls.predictions.decoder.weight")  # tied to the word embeddings: saved once, as HF does
    keys = sorted(sd)
    assert WORDS in keys[: len(keys) // 2]
    return hf, sd, keys


def _sharded(folder: Path, hf: BertForMaskedLM, shards: list[dict[str, torch.Tensor]], index: dict[str, str]) -> Path:
    folder.mkdir()
    hf.config.save_pretrained(folder)
    for name, tensors in zip(SHARDS, shards, strict=True):
        save_file(tensors, str(folder / name))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    return folder


def _halves(sd: dict[str, torch.Tensor], keys: list[str]) -> tuple[dict, dict, dict[str, str]]:
    first = {k: sd[k] for k in keys[: len(keys) // 2]}
    second = {k: sd[k] for k in keys[len(keys) // 2 :]}
    return first, second, {k: SHARDS[0] if k in first else SHARDS[1] for k in keys}


def test_a_stale_copy_in_another_shard_is_ignored(tmp_path: Path, hf_weights) -> None:
    """The index puts the word embeddings in shard 1; shard 2 also holds a (zeroed) copy. Before the fix the
    later shard's copy silently won and the model loaded zero embeddings."""
    hf, sd, keys = hf_weights
    first, second, index = _halves(sd, keys)
    folder = _sharded(tmp_path / "ck", hf, [first, {**second, WORDS: torch.zeros_like(sd[WORDS])}], index)
    assert torch.equal(open_weights(folder)[WORDS], sd[WORDS])
    model = encoderlens.from_pretrained(folder)
    assert torch.equal(model.embed.W_E, sd[WORDS])


def test_a_shard_lacking_a_name_its_index_places_there_raises_naming_both(tmp_path: Path, hf_weights) -> None:
    hf, sd, keys = hf_weights
    first, second, index = _halves(sd, keys)
    del first[WORDS]
    folder = _sharded(tmp_path / "ck", hf, [first, {**second, WORDS: sd[WORDS]}], index)
    with pytest.raises(ValueError, match=rf"{WORDS}.*{SHARDS[0]}.*incomplete"):
        open_weights(folder)


def test_a_name_in_two_shards_that_the_index_does_not_place_raises(tmp_path: Path, hf_weights) -> None:
    hf, sd, keys = hf_weights
    first, second, index = _halves(sd, keys)
    extra = {"bert.extra": torch.ones(2)}
    folder = _sharded(tmp_path / "ck", hf, [{**first, **extra}, {**second, **extra}], index)
    with pytest.raises(ValueError, match=rf"'bert.extra' is in both {SHARDS[0]} and {SHARDS[1]}"):
        open_weights(folder)


def test_safetensors_is_preferred_over_a_sharded_bin(tmp_path: Path, hf_weights) -> None:
    """A folder with ``model.safetensors`` and a sharded ``.bin`` reads the safetensors file (a bin index
    used to win over a single safetensors file)."""
    hf, sd, keys = hf_weights
    hf.config.save_pretrained(tmp_path)
    torch.save({k: torch.zeros_like(v) for k, v in sd.items()}, tmp_path / "pytorch_model-00001-of-00001.bin")
    bin_index = {"metadata": {}, "weight_map": dict.fromkeys(keys, "pytorch_model-00001-of-00001.bin")}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps(bin_index))
    save_file(sd, str(tmp_path / "model.safetensors"))
    assert torch.equal(open_weights(tmp_path)[WORDS], sd[WORDS])


def test_a_name_with_and_without_the_model_prefix_raises(tmp_path: Path, hf_weights) -> None:
    """``bert.pooler...`` and a stale ``pooler...``: stripping ``bert.`` made them one key and one copy was
    dropped unseen (whichever came last won)."""
    hf, sd, _ = hf_weights
    hf.config.save_pretrained(tmp_path)
    stale = {"embeddings.word_embeddings.weight": torch.zeros_like(sd[WORDS])}
    save_file({**sd, **stale}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"holds 'embeddings.word_embeddings.weight' twice: as '.*' and '.*'"):
        encoderlens.from_pretrained(tmp_path)


def test_a_weight_taken_twice_is_named_a_converter_bug(hf_weights) -> None:
    from encoderlens.convert.registry import WeightReader

    _, sd, _ = hf_weights
    r = WeightReader(sd, "bert")
    r.take(WORDS)
    with pytest.raises(ValueError, match=r"took weight .* twice \(a converter bug"):
        r.take(WORDS)
    with pytest.raises(ValueError, match=r"missing weight 'nope'"):
        r.take("nope")
