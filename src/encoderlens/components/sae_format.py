"""SAELens's folder format for SAEs: ``cfg.json`` + ``sae_weights.safetensors``, read and written.

Two ``cfg.json`` layouts are read:

- SAELens 6: ``architecture``, ``d_in``, ``d_sae``, ``dtype``, ``apply_b_dec_to_input``,
  ``normalize_activations``, ``reshape_activations``, ``k`` and ``rescale_acts_by_decoder_norm`` (top-k),
  and a ``metadata`` object holding ``hook_name``, ``model_name``, ``prepend_bos``, ``context_size``...;
- SAELens 5 and earlier (no ``metadata`` object): the same keys at the top level, with SAELens's own
  defaulting: ``hook_point`` / ``hook_point_head_index`` are the old names of ``hook_name`` /
  ``hook_head_index``; top-k SAEs are ``activation_fn_str="topk"`` + ``activation_fn_kwargs={"k": ...}``;
  no ``architecture`` means ``"standard"``; a boolean ``normalize_activations`` means
  ``"expected_average_only_in"`` (True) or ``"none"``; no ``reshape_activations`` means ``"hook_z"`` for a
  ``hook_z`` hook point.

Every key is accounted for (:mod:`encoderlens.components.sae_keys`): keys that define the computation are applied or the
load is refused (per-head SAEs, other activation functions, transcoders); keys about how the SAE was
trained (model, dataset, context size, ``prepend_bos``...) are kept in ``cfg.metadata``; a
``model_from_pretrained_kwargs`` that processed the model's weights, and keys no SAELens version writes,
raise a ``UserWarning``. ``normalize_activations="expected_average_only_in"`` needs the release's
``norm_scaling_factor`` (folded into the weights, as SAELens does) or is refused.

Weights use SAELens's names (``W_enc (d_in, d_sae)``, ``W_dec (d_sae, d_in)``, ``b_enc``, ``b_dec``,
``threshold``, ``b_gate``, ``b_mag``, ``r_mag``); a missing, extra or misshapen tensor is an error. An
SAELens 5 ``scaling_factor`` (fine-tuned feature scales) is folded into ``W_dec``. :func:`save_sae` writes
the SAELens 6 layout, which SAELens's ``SAE.load_from_disk`` reads. Loading from the hub is
:func:`load_sae_from_hub`.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from encoderlens.components.sae import SAEConfig, SparseAutoencoder
from encoderlens.components.sae_keys import INFORMATIONAL_KEYS, KEY_HANDLING, METADATA_KEYS, WEIGHT_PROCESSING
from encoderlens.io.sae_hub import (
    CFG_FILENAME,
    SPARSITY_FILENAME,
    UNSUPPORTED_SUFFIXES,
    WEIGHTS_FILENAME,
    download_sae_folder,
    locate_sae,
)

__all__ = ["CFG_FILENAME", "WEIGHTS_FILENAME", "load_sae", "load_sae_from_hub", "save_sae", "sae_config_from_dict"]


def sae_config_from_dict(raw: dict[str, Any], norm_scaling_factor: float | None = None) -> SAEConfig:
    """An :class:`SAEConfig` from a SAELens ``cfg.json`` dict (either layout; see the module doc).

    Args:
        raw: The parsed ``cfg.json``.
        norm_scaling_factor: Accepted for ``normalize_activations="expected_average_only_in"`` (the loaders
            fold it into the weights; the config then says ``"none"``).

    Raises:
        ValueError: A key with a meaning this SAE cannot apply (see :data:`KEY_HANDLING`).
    """
    if not isinstance(raw, dict):
        raise TypeError(f"an SAE config must be a JSON object, got {type(raw).__name__}")
    legacy = "metadata" not in raw and "meta" not in raw
    meta = dict(raw.get("metadata", raw.get("meta")) or {}) if not legacy else {}
    if not isinstance(raw.get("metadata", raw.get("meta", {})) or {}, dict):
        raise ValueError(f"cfg.json 'metadata' must be an object, got {type(raw.get('metadata')).__name__}")
    for key in ("d_in", "d_sae"):
        if key not in raw:
            raise ValueError(f"cfg.json has no {key!r}; an SAELens cfg.json holds d_in, d_sae and architecture")
    unknown = sorted(k for k in raw if k not in KEY_HANDLING and k not in INFORMATIONAL_KEYS)
    if unknown:
        warnings.warn(
            f"cfg.json keys {unknown} are not SAELens keys encoderlens knows; they are kept in cfg.metadata and "
            "ignored. If one of them changes how this SAE computes, its outputs will differ from SAELens's",
            UserWarning,
            stacklevel=3,
        )
    hook_name = meta.get("hook_name", raw.get("hook_name", raw.get("hook_point")))
    head = meta.get("hook_head_index", raw.get("hook_head_index", raw.get("hook_point_head_index")))
    if head is not None:
        raise ValueError(
            f"this SAE reads one head (hook_head_index={head}) of {hook_name!r}; per-head SAEs are not supported "
            "(an SAE on the whole hook_z reads all heads: reshape_activations='hook_z')"
        )
    arch, k = _architecture(raw)
    norm = raw.get("normalize_activations")
    norm = ("expected_average_only_in" if norm else "none") if isinstance(norm, bool) else str(norm or "none")
    if norm == "expected_average_only_in":
        if norm_scaling_factor is None:
            raise ValueError(
                "this SAE expects inputs scaled by a constant norm_scaling_factor estimated in training "
                "(normalize_activations='expected_average_only_in'), and its release gives none. Pass "
                "norm_scaling_factor=<float> (SAELens's pretrained_saes.yaml lists it per SAE) to fold it in, or "
                "norm_scaling_factor=1.0 to use the SAE unscaled, as SAELens does when it has none"
            )
        norm = "none"
    reshape = raw.get("reshape_activations")
    if reshape is None:
        reshape = "hook_z" if legacy and "hook_z" in str(hook_name or "") else "none"
    processing = raw.get("model_from_pretrained_kwargs", meta.get("model_from_pretrained_kwargs")) or {}
    changed = sorted(k for k in WEIGHT_PROCESSING if isinstance(processing, Mapping) and processing.get(k))
    if changed:
        warnings.warn(
            f"this SAE was trained on a TransformerLens model loaded with {changed} set "
            f"(model_from_pretrained_kwargs={dict(processing)}); encoderlens keeps the HF weights unprocessed, so "
            f"the activations at {hook_name!r} may differ from those the SAE was trained on",
            UserWarning,
            stacklevel=3,
        )
    skip = {"metadata", "meta", "hook_name", "hook_point", "hook_head_index", "hook_point_head_index"}
    extra = {k2: v for k2, v in raw.items() if k2 not in KEY_HANDLING or k2 == "model_from_pretrained_kwargs"}
    extra = {k2: v for k2, v in extra.items() if k2 not in skip}
    return SAEConfig(
        architecture=arch,
        d_in=raw["d_in"],
        d_sae=raw["d_sae"],
        hook_name=hook_name,
        k=k,
        rescale_acts_by_decoder_norm=arch == "topk" and bool(raw.get("rescale_acts_by_decoder_norm", False)),
        apply_b_dec_to_input=bool(raw.get("apply_b_dec_to_input", True)),
        normalize_activations=norm,
        reshape_activations=str(reshape),
        dtype=str(raw.get("dtype") or "float32"),
        metadata={**extra, **{k2: v for k2, v in meta.items() if k2 != "hook_name"}},
    )


def _architecture(raw: dict[str, Any]) -> tuple[str, int | None]:
    arch = raw.get("architecture")
    fn = raw.get("activation_fn_str", raw.get("activation_fn"))
    if fn not in (None, "relu", "topk"):
        raise ValueError(
            f"cfg.json activation_fn={fn!r} is not supported: standard SAEs use relu, top-k ones topk "
            "(other activation functions would change the features)"
        )
    if arch is None:
        arch = "topk" if fn == "topk" else "standard"
    k = raw.get("k")
    if arch == "topk" and k is None:
        k = (raw.get("activation_fn_kwargs") or {}).get("k")
    return str(arch), k if arch == "topk" else None


def sae_config_to_dict(cfg: SAEConfig) -> dict[str, Any]:
    """The SAELens 6 ``cfg.json`` dict of ``cfg`` (``metadata.sae_lens_version`` says the layout is 6's)."""
    meta = {k: v for k, v in cfg.metadata.items() if k != "hook_name"}
    version = str(meta.get("sae_lens_version") or "0")
    if not version.split(".")[0].isdigit() or int(version.split(".")[0]) < 6:
        meta["sae_lens_version"] = "6.0.0"  # SAELens reads configs without a >= 6 version as the old layout
    out: dict[str, Any] = {
        "architecture": cfg.architecture,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": cfg.dtype,
        "device": "cpu",
        "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
        "normalize_activations": cfg.normalize_activations,
        "reshape_activations": cfg.reshape_activations,
        "metadata": {"hook_name": cfg.hook_name, **meta},
    }
    if cfg.k is not None:
        out["k"] = cfg.k
        out["rescale_acts_by_decoder_norm"] = cfg.rescale_acts_by_decoder_norm
    return out


def load_sae(
    path: str | os.PathLike[str],
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    use_error_term: bool = False,
    *,
    norm_scaling_factor: float | None = None,
    config_overrides: Mapping[str, Any] | None = None,
) -> SparseAutoencoder:
    """Load an SAE from a SAELens folder (``cfg.json`` + ``sae_weights.safetensors``).

    Args:
        path: The folder.
        device: Where to put it.
        dtype: Parameter dtype (default: the config's ``dtype``).
        use_error_term: Add the reconstruction error back (see :class:`SparseAutoencoder`).
        norm_scaling_factor: For ``normalize_activations="expected_average_only_in"``: the input scale,
            folded into the weights as SAELens does (``W_enc * s``, ``W_dec / s``, ``b_dec / s``).
        config_overrides: ``cfg.json`` keys to replace before reading it (SAELens's ``cfg_overrides``).

    Example:
        >>> sae = load_sae("saes/blocks.3.hook_resid_post")
        >>> logits = model.run_with_saes("The cat sat.", saes=[sae])
    """
    from safetensors.torch import load_file

    folder = Path(path)
    cfg_path, w_path = folder / CFG_FILENAME, folder / WEIGHTS_FILENAME
    for p in (cfg_path, w_path):
        if not p.is_file():
            pickled = sorted(f.name for f in folder.glob("*") if f.suffix.lower() in UNSUPPORTED_SUFFIXES)
            hint = f"; {pickled} are never unpickled (convert them with SAELens first)" if pickled else ""
            raise FileNotFoundError(
                f"{p} not found; an SAELens SAE folder holds {CFG_FILENAME} and {WEIGHTS_FILENAME}{hint}"
            )
    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{cfg_path} is not valid JSON: {err}") from err
    if isinstance(raw, dict) and config_overrides:
        raw = _override(raw, dict(config_overrides))
    if norm_scaling_factor is not None and not _expects_scale(raw):
        raise ValueError(
            f"norm_scaling_factor={norm_scaling_factor} applies to SAEs with normalize_activations="
            f"'expected_average_only_in'; {cfg_path} has {raw.get('normalize_activations')!r}: drop the argument"
        )
    cfg = sae_config_from_dict(raw, norm_scaling_factor)
    state = _fold_finetuning_scale(load_file(str(w_path)), raw, w_path)
    with torch.device("meta"):
        sae = SparseAutoencoder(cfg, use_error_term=use_error_term)
    own = dict(sae.named_parameters())
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        raise ValueError(
            f"{w_path} does not match a {cfg.architecture} SAE: missing {missing}, unexpected {extra} "
            f"(a {cfg.architecture} SAE has {sorted(own)})"
        )
    for name, param in own.items():
        if tuple(state[name].shape) != tuple(param.shape):
            raise ValueError(
                f"{w_path}: {name} has shape {tuple(state[name].shape)}, expected {tuple(param.shape)} "
                f"for d_in={cfg.d_in}, d_sae={cfg.d_sae}"
            )
    if norm_scaling_factor is not None:
        s = float(norm_scaling_factor)
        state = {**state, "W_enc": state["W_enc"] * s, "W_dec": state["W_dec"] / s, "b_dec": state["b_dec"] / s}
    target = dtype or cfg.torch_dtype
    sae.load_state_dict({k: v.to(target) for k, v in state.items()}, assign=True)
    sparsity = folder / SPARSITY_FILENAME
    if sparsity.is_file():
        sae.log_feature_sparsity = load_file(str(sparsity)).get("sparsity")
    return sae.to(device=device)


def _override(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with SAELens's ``cfg_overrides`` applied; in the SAELens 6 layout, metadata keys go to ``metadata``."""
    meta = raw.get("metadata")
    if not isinstance(meta, dict):
        return {**raw, **overrides}
    to_meta = {k: v for k, v in overrides.items() if k in METADATA_KEYS}
    top = {k: v for k, v in overrides.items() if k not in METADATA_KEYS}
    return {**raw, **top, "metadata": {**meta, **to_meta}}


def _expects_scale(raw: Any) -> bool:
    return isinstance(raw, dict) and raw.get("normalize_activations") in ("expected_average_only_in", True)


def _fold_finetuning_scale(state: dict[str, Tensor], raw: dict[str, Any], w_path: Path) -> dict[str, Tensor]:
    """Fold SAELens 5's ``scaling_factor`` (features scaled before decoding) into ``W_dec``, as SAELens reads it."""
    scale = state.get("scaling_factor")
    if scale is None:
        return state
    rest = {k: v for k, v in state.items() if k != "scaling_factor"}
    if torch.allclose(scale, torch.ones_like(scale)):
        return rest
    if not raw.get("finetuning_scaling_factor"):
        raise ValueError(
            f"{w_path} has a scaling_factor that is not all ones but cfg.json's finetuning_scaling_factor is "
            f"{raw.get('finetuning_scaling_factor')!r}; the SAE folder is inconsistent (SAELens refuses it too)"
        )
    if "W_dec" in rest and rest["W_dec"].shape[:1] == scale.shape:
        rest["W_dec"] = rest["W_dec"] * scale[:, None]
    return rest


def load_sae_from_hub(
    release_or_repo: str,
    sae_id: str | None = None,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    releases: Mapping[str, Any] | None = None,
    force_download: bool = False,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    use_error_term: bool = False,
    norm_scaling_factor: float | None = None,
) -> SparseAutoencoder:
    """Load an SAE published in SAELens's layout on the Hugging Face hub.

    ``release_or_repo`` is SAELens's release name (resolved through ``releases`` or the installed
    ``sae-lens`` package's table, never a copy) or a hub repo id; ``sae_id`` is then the SAE's id in the
    release, or its folder in the repo (see :mod:`encoderlens.io.sae_hub`). Only ``cfg.json``,
    ``sae_weights.safetensors`` and ``sparsity.safetensors`` are downloaded; nothing is unpickled or run.

    Args:
        release_or_repo: Release name or ``"org/name"``.
        sae_id: The SAE's id (release) or folder (repo; None: the repo root).
        revision: Hub branch, tag or commit.
        cache_dir: Hub cache folder (default: huggingface_hub's).
        releases: ``{release: {"repo_id": ..., "saes": [{"id": ..., "path": ...}], ...}}`` in the layout of
            SAELens's ``pretrained_saes.yaml``.
        force_download: Download again even if cached.
        device: Where to put the SAE.
        dtype: Parameter dtype (default: the config's ``dtype``).
        use_error_term: Add the reconstruction error back.
        norm_scaling_factor: Overrides the release's (``normalize_activations="expected_average_only_in"``).

    Example:
        >>> sae = load_sae_from_hub("my-org/bert-saes", "blocks.3.hook_resid_post", revision="v1")
        >>> sae = load_sae_from_hub("my-release", "blocks.3.hook_resid_post", releases=my_table)
        >>> logits = model.run_with_saes("The cat sat.", saes=[sae])

    Raises:
        ValueError: Unknown release or id, a layout other than SAELens's, a failed download, or a config
            this SAE cannot follow (see :func:`load_sae`).
    """
    location = locate_sae(release_or_repo, sae_id, releases)
    folder = download_sae_folder(location, revision=revision, cache_dir=cache_dir, force_download=force_download)
    scale = norm_scaling_factor
    if scale is None and location.norm_scaling_factor is not None:
        try:
            raw = json.loads((folder / CFG_FILENAME).read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            raw = {}  # load_sae reports it
        merged = _override(raw, location.config_overrides) if isinstance(raw, dict) else {}
        scale = location.norm_scaling_factor if _expects_scale(merged) else None
    return load_sae(
        folder,
        device=device,
        dtype=dtype,
        use_error_term=use_error_term,
        norm_scaling_factor=scale,
        config_overrides=location.config_overrides,
    )


def save_sae(sae: SparseAutoencoder, path: str | os.PathLike[str]) -> Path:
    """Write ``sae`` as a SAELens 6 folder (``cfg.json`` + ``sae_weights.safetensors``); returns the folder."""
    from safetensors.torch import save_file

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in sae.named_parameters()}
    save_file(tensors, str(folder / WEIGHTS_FILENAME))
    if sae.log_feature_sparsity is not None:
        save_file({"sparsity": sae.log_feature_sparsity.detach().cpu().contiguous()}, str(folder / SPARSITY_FILENAME))
    (folder / CFG_FILENAME).write_text(json.dumps(sae_config_to_dict(sae.cfg), indent=2), encoding="utf-8")
    return folder
