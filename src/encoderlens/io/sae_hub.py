"""Finding and fetching SAEs published in SAELens's layout on the Hugging Face hub.

An SAE in SAELens's layout is a folder inside a hub repository holding ``cfg.json`` and
``sae_weights.safetensors`` (and optionally ``sparsity.safetensors``, the features' log firing rates).
SAELens's ``sae_id`` names that folder, directly (``repo_id`` + folder) or through a *release*: an entry
of SAELens's ``pretrained_saes.yaml``::

    gpt2-small-res-jb:                      # release
      repo_id: jbloom/GPT2-Small-SAEs-Reformatted
      conversion_func: null                 # null: the folder is in SAELens's layout
      config_overrides: {...}               # optional: cfg.json keys to replace
      saes:
      - id: blocks.0.hook_resid_pre         # sae_id
        path: blocks.0.hook_resid_pre       # folder inside the repo
        norm_scaling_factor: 0.21           # optional (normalize_activations="expected_average_only_in")

No copy of that table ships here: a release name resolves through a mapping the caller passes (same
layout) or through the installed ``sae-lens`` package's own ``pretrained_saes.yaml`` (read as data; the
package is not imported). Only the SAE's files are downloaded; nothing is executed or unpickled.
"""

from __future__ import annotations

import glob
import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from encoderlens.io.checkpoint import leaves_folder

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
SPARSITY_FILENAME = "sparsity.safetensors"
#: Weight formats that would need unpickling or a converter; never read.
UNSUPPORTED_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle", ".npz", ".npy")


@dataclass(frozen=True)
class SAELocation:
    """Where an SAE lives on the hub, and what its release entry adds to its ``cfg.json``.

    Attributes:
        repo_id: Hub repository (``"org/name"``).
        folder: Folder of the SAE inside the repository (``""``: the repository root).
        release: The release name it was found under, or None for a plain repository id.
        config_overrides: ``cfg.json`` keys the release replaces (SAELens's ``config_overrides``).
        norm_scaling_factor: The release's ``norm_scaling_factor`` for this SAE, if any.
    """

    repo_id: str
    folder: str
    release: str | None = None
    config_overrides: dict[str, Any] = field(default_factory=dict)
    norm_scaling_factor: float | None = None


def installed_saelens_releases() -> dict[str, Any] | None:
    """The installed ``sae-lens`` package's ``pretrained_saes.yaml`` (parsed), or None without the package.

    The file is located without importing ``sae_lens`` and parsed with ``yaml.safe_load``.
    """
    spec = importlib.util.find_spec("sae_lens")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / "pretrained_saes.yaml"
        if path.is_file():
            import yaml

            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else None
    return None


def locate_sae(
    release_or_repo: str, sae_id: str | None = None, releases: Mapping[str, Any] | None = None
) -> SAELocation:
    """Resolve SAELens's ``(release, sae_id)`` or ``(repo_id, folder)`` to an :class:`SAELocation`.

    ``release_or_repo`` is looked up in ``releases`` (a mapping in ``pretrained_saes.yaml``'s layout), then
    in the installed ``sae-lens`` package's table; a name with a ``/`` that is in neither is a hub
    repository id, and ``sae_id`` is then the SAE's folder inside it (None: the repository root).

    Raises:
        ValueError: An unknown release, an ``sae_id`` the release does not list, a release or path whose
            SAEs are not in SAELens's layout (``conversion_func``, ``.pt`` / ``.npz`` files), or a folder
            that leaves the repository.
    """
    if not isinstance(release_or_repo, str) or not release_or_repo:
        raise TypeError(f"expected a release name or hub repo id (str), got {release_or_repo!r}")
    if sae_id is not None and not isinstance(sae_id, str):
        raise TypeError(f"sae_id must be a str (the SAE's id in the release, or its folder), got {sae_id!r}")
    if releases is not None and not isinstance(releases, Mapping):
        raise TypeError(f"releases must be a mapping in pretrained_saes.yaml's layout, got {type(releases).__name__}")
    table, source = (releases, "the releases you passed") if releases and release_or_repo in releases else (None, "")
    if table is None:
        installed = installed_saelens_releases()
        if installed is not None and release_or_repo in installed:
            table, source = installed, "sae-lens's pretrained_saes.yaml"
    if table is not None:
        return _from_release(release_or_repo, table[release_or_repo], sae_id, source)
    if "/" not in release_or_repo:
        raise ValueError(
            f"unknown SAE release {release_or_repo!r}: pass a hub repo id ('org/name') with sae_id= the SAE's folder, "
            "a releases={name: {'repo_id': ..., 'saes': [{'id': ..., 'path': ...}]}} mapping, "
            "or install sae-lens (`pip install sae-lens`) so its release table can be read"
        )
    return SAELocation(release_or_repo, _clean_folder(sae_id or "", release_or_repo))


def _from_release(release: str, entry: Any, sae_id: str | None, source: str) -> SAELocation:
    if not isinstance(entry, Mapping) or not isinstance(entry.get("repo_id"), str):
        raise ValueError(f"release {release!r} in {source} needs a 'repo_id' string, got {entry!r}")
    conversion = entry.get("conversion_func")
    if conversion is not None:
        raise ValueError(
            f"release {release!r} stores its SAEs in another layout (conversion_func={conversion!r}), which only "
            "SAELens's converter reads; encoderlens reads SAELens's own layout (cfg.json + sae_weights.safetensors). "
            "Load it with SAELens, save it with sae.save_model(folder), then load_sae(folder)"
        )
    saes = entry.get("saes") or []
    ids = [s.get("id") for s in saes if isinstance(s, Mapping)]
    if sae_id is None:
        raise ValueError(f"release {release!r} holds several SAEs; pass sae_id= one of {_few(ids)}")
    hit = next((s for s in saes if isinstance(s, Mapping) and s.get("id") == sae_id), None)
    if hit is None:
        raise ValueError(f"release {release!r} ({source}) has no SAE with id {sae_id!r}; its ids are {_few(ids)}")
    overrides = entry.get("config_overrides") or {}
    if not isinstance(overrides, Mapping):
        raise ValueError(f"release {release!r}: config_overrides must be a mapping, got {overrides!r}")
    extra = {"neuronpedia_id": hit["neuronpedia"]} if hit.get("neuronpedia") is not None else {}
    scale = hit.get("norm_scaling_factor")
    return SAELocation(
        repo_id=entry["repo_id"],
        folder=_clean_folder(str(hit.get("path", sae_id)), entry["repo_id"]),
        release=release,
        config_overrides={**overrides, **extra},
        norm_scaling_factor=None if scale is None else float(scale),
    )


def _few(ids: list[Any]) -> str:
    shown = ", ".join(repr(i) for i in ids[:8])
    return f"[{shown}{', ...' if len(ids) > 8 else ''}] ({len(ids)} in all)"


def _clean_folder(folder: str, repo_id: str) -> str:
    if leaves_folder(folder):
        raise ValueError(f"SAE folder {folder!r} leaves the repository {repo_id!r}; pass a folder inside it")
    path = PurePosixPath(folder.replace("\\", "/").strip("/"))
    text = "" if str(path) == "." else str(path)
    refuse_unsupported_file(text, f"{repo_id}/{text}")
    return text


def refuse_unsupported_file(name: str, where: str) -> None:
    """Refuse a path naming a pickled or converter-only weight file (``.pt``, ``.bin``, ``.npz``...).

    Raises:
        ValueError: ``name`` ends with one of :data:`UNSUPPORTED_SUFFIXES`.
    """
    if name.lower().endswith(UNSUPPORTED_SUFFIXES):
        raise ValueError(
            f"{where} is a {Path(name).suffix} file: encoderlens never unpickles weights and reads SAEs only in "
            f"SAELens's layout ({CFG_FILENAME} + {WEIGHTS_FILENAME}). Convert it with SAELens "
            "(SAE.from_pretrained(...).save_model(folder)) and pass that folder to load_sae"
        )


def download_sae_folder(
    location: SAELocation,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    force_download: bool = False,
) -> Path:
    """Download only the SAE's files (``cfg.json``, ``sae_weights.safetensors``, ``sparsity.safetensors``).

    Returns:
        The local folder holding them (inside the hub cache).

    Raises:
        ValueError: The download failed (network, unknown repository or revision), or the folder has no
            ``cfg.json`` / ``sae_weights.safetensors`` (not an SAE in SAELens's layout).
    """
    from huggingface_hub import snapshot_download

    prefix = f"{glob.escape(location.folder)}/" if location.folder else ""
    patterns = [prefix + name for name in (CFG_FILENAME, WEIGHTS_FILENAME, SPARSITY_FILENAME)]
    where = f"{location.repo_id!r} (revision {revision or 'main'!r})"
    try:
        root = Path(
            snapshot_download(
                location.repo_id,
                revision=revision,
                cache_dir=None if cache_dir is None else str(cache_dir),
                allow_patterns=patterns,
                force_download=force_download,
            )
        )
    except Exception as e:  # network and hub errors come in many types
        raise ValueError(
            f"could not fetch the SAE {location.folder or '(repo root)'!r} from {where} on the Hugging Face hub "
            f"({type(e).__name__}: {e}). Check the repo id, revision and your network, or pass a local folder "
            "to load_sae"
        ) from e
    folder = root / location.folder if location.folder else root
    missing = [name for name in (CFG_FILENAME, WEIGHTS_FILENAME) if not (folder / name).is_file()]
    if missing:
        via = f" (release {location.release!r} maps it there)" if location.release else ""
        raise ValueError(
            f"{where} has no {', '.join(f'{location.folder}/{m}'.lstrip('/') for m in missing)}{via}: expected an "
            f"SAE folder in SAELens's layout ({CFG_FILENAME} + {WEIGHTS_FILENAME}). Check sae_id (the SAE's folder "
            "inside the repo); SAEs stored as .pt / .bin / .npz are not read (no unpickling, no converters)"
        )
    return folder
