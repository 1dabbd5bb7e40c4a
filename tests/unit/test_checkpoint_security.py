"""Hostile checkpoint folders: code is never run, shard paths stay inside the folder, bad files are named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from transformers import BertConfig, BertForMaskedLM

import encoderlens
from encoderlens import HookedEncoder

EVIL_CODE = """
from pathlib import Path
Path({marker!r}).write_text("checkpoint code ran")
from transformers import PretrainedConfig, PreTrainedModel


class EvilConfig(PretrainedConfig):
    model_type = "evilbert"


class EvilModel(PreTrainedModel):
    config_class = EvilConfig
"""


def tiny_bert(path: Path) -> Path:
    cfg = BertConfig(
        vocab_size=40, hidden_size=12, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
        max_position_embeddings=16,
    )  # fmt: skip
    BertForMaskedLM(cfg).save_pretrained(path)
    return path


def evil_folder(tmp_path: Path, model_type: str) -> tuple[Path, Path]:
    """A checkpoint whose ``auto_map`` points at code that would write ``marker`` when imported."""
    folder = tmp_path / f"evil_{model_type}"
    marker = tmp_path / f"marker_{model_type}"
    if model_type == "bert":
        tiny_bert(folder)
        cfg = json.loads((folder / "config.json").read_text())
    else:
        folder.mkdir()
        cfg = {"model_type": model_type, "architectures": ["EvilModel"], "hidden_size": 8}
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "evil.py").write_text(EVIL_CODE.format(marker=str(marker)))
    return folder, marker


@pytest.mark.parametrize("model_type", ["evilbert", "bert"])
def test_auto_map_checkpoint_is_refused_and_its_code_never_runs(tmp_path, model_type):
    folder, marker = evil_folder(tmp_path, model_type)
    with pytest.raises(ValueError, match=r"auto_map.*never runs"):
        encoderlens.from_pretrained(folder)
    with pytest.raises(ValueError, match=r"auto_map"):
        HookedEncoder.from_pretrained(folder)
    assert not marker.exists()


def test_inspect_with_stdin_open_neither_runs_code_nor_waits_on_a_prompt(tmp_path):
    folder, marker = evil_folder(tmp_path, "evilbert")
    env = {**os.environ, "PYTHONPATH": str(Path(encoderlens.__file__).parents[1]), "HF_HUB_OFFLINE": "1"}
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "encoderlens", "inspect", str(folder)],
        stdin=subprocess.PIPE,  # open and never written: transformers' y/N prompt would block on it
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    out, errs = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "auto_map" in out + errs
    assert "Do you wish to run the custom code" not in out + errs
    assert not marker.exists()
    assert time.monotonic() - start < 100


def test_tokenizer_code_is_refused(tmp_path):
    folder = tiny_bert(tmp_path / "tok")
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "EvilTokenizer", "auto_map": {"AutoTokenizer": ["evil.EvilTokenizer", None]}})
    )
    with pytest.raises(ValueError, match=r"tokenizer_config.json has an 'auto_map'"):
        encoderlens.from_pretrained(folder)


def test_shard_index_may_not_leave_the_folder(tmp_path):
    outside = tiny_bert(tmp_path / "outside")
    folder = tmp_path / "sharded"
    folder.mkdir()
    (folder / "config.json").write_text((outside / "config.json").read_text())
    from safetensors.torch import load_file

    names = list(load_file(str(outside / "model.safetensors")))
    for target in ("../outside/model.safetensors", str(outside / "model.safetensors"), "sub/../../x.safetensors"):
        index = {"metadata": {}, "weight_map": {n: target for n in names}}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
        with pytest.raises(ValueError, match=r"not a file inside the checkpoint folder"):
            encoderlens.from_pretrained(folder)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": ["not", "a", "dict"]}))
    with pytest.raises(ValueError, match=r"could not read the shard index.*weight_map"):
        encoderlens.from_pretrained(folder)


def test_sentence_transformers_module_paths_stay_inside(tmp_path):
    folder = tiny_bert(tmp_path / "st")
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "../../etc", "type": "sentence_transformers.models.Pooling"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    from encoderlens.io.sentence_transformers import read_sentence_transformer

    with pytest.raises(ValueError, match=r"'../../etc'.*not a file inside"):
        read_sentence_transformer(folder)


def test_truncated_or_missing_weight_file_is_named(tmp_path):
    folder = tiny_bert(tmp_path / "trunc")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"could not read the weight file .*model\.safetensors.*truncated"):
        encoderlens.from_pretrained(folder)
    weights.write_bytes(data[:5])
    with pytest.raises(ValueError, match=r"model\.safetensors"):
        encoderlens.from_pretrained(folder)
