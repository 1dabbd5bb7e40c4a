"""SAELens's folder format for SAEs: ``cfg.json`` + ``sae_weights.safetensors``, read and written.

Two ``cfg.json`` layouts are read:

- SAELens 6: ``architecture``, ``d_in``, ``d_sae``, ``dtype``, ``apply_b_dec_to_input``,
  ``normalize_activations``, ``reshape_activations``, ``k`` (top-k), and a ``metadata`` (or ``meta``)
  object holding ``hook_name``, ``model_name``, ``prepend_bos``, ``context_size``...;
- SAELens 5 and earlier: the same keys at the top level, ``hook_name`` among them, with top-k SAEs
  written as ``activation_fn_str="topk"`` + ``activation_fn_kwargs={"k": ...}`` and no ``architecture``
  (meaning ``"standard"``).

Weights use SAELens's names (``W_enc (d_in, d_sae)``, ``W_dec (d_sae, d_in)``, ``b_enc``, ``b_dec``,
``threshold``, ``b_gate``, ``b_mag``, ``r_mag``); a missing, extra or misshapen tensor is an error.
:func:`save_sae` writes the SAELens 6 layout, which SAELens's ``SAE.load_from_disk`` reads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from encoderlens.components.sae import SAEConfig, SparseAutoencoder

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
_CORE_KEYS = (
    "architecture",
    "d_in",
    "d_sae",
    "dtype",
    "device",
    "apply_b_dec_to_input",
    "normalize_activations",
    "reshape_activations",
    "k",
    "metadata",
    "meta",
    "hook_name",
)


def sae_config_from_dict(raw: dict[str, Any]) -> SAEConfig:
    """An :class:`SAEConfig` from a SAELens ``cfg.json`` dict (either layout; see the module doc)."""
    if not isinstance(raw, dict):
        raise TypeError(f"an SAE config must be a JSON object, got {type(raw).__name__}")
    meta = raw.get("metadata", raw.get("meta")) or {}
    if not isinstance(meta, dict):
        raise ValueError(f"cfg.json 'metadata' must be an object, got {type(meta).__name__}")
    for key in ("d_in", "d_sae"):
        if key not in raw:
            raise ValueError(f"cfg.json has no {key!r}; an SAELens cfg.json holds d_in, d_sae and architecture")
    arch = raw.get("architecture")
    fn = raw.get("activation_fn_str", raw.get("activation_fn"))
    k = raw.get("k")
    if arch is None:
        arch = "topk" if fn == "topk" else "standard"
    if arch == "topk" and k is None:
        k = (raw.get("activation_fn_kwargs") or {}).get("k")
    if fn not in (None, "relu", "topk"):
        raise ValueError(f"cfg.json activation_fn_str={fn!r} is not supported (relu or topk)")
    if raw.get("finetuning_scaling_factor") not in (None, False, 1.0):
        raise ValueError("cfg.json finetuning_scaling_factor is set; such SAEs are not supported (fold it first)")
    hook_name = meta.get("hook_name", raw.get("hook_name"))
    head = meta.get("hook_head_index", raw.get("hook_head_index"))
    if head is not None:
        raise ValueError(
            f"this SAE reads one head (hook_head_index={head}) of {hook_name!r}; per-head SAEs are not supported"
        )
    extra = {k2: v for k2, v in raw.items() if k2 not in _CORE_KEYS}
    meta = {k2: v for k2, v in meta.items() if k2 != "hook_name"}
    return SAEConfig(
        architecture=str(arch),
        d_in=raw["d_in"],
        d_sae=raw["d_sae"],
        hook_name=hook_name,
        k=k,
        apply_b_dec_to_input=bool(raw.get("apply_b_dec_to_input", True)),
        normalize_activations=str(raw.get("normalize_activations") or "none"),
        reshape_activations=str(raw.get("reshape_activations") or "none"),
        dtype=str(raw.get("dtype") or "float32"),
        metadata={**extra, **meta},
    )


def sae_config_to_dict(cfg: SAEConfig) -> dict[str, Any]:
    """The SAELens 6 ``cfg.json`` dict of ``cfg``."""
    meta = {k: v for k, v in cfg.metadata.items() if k != "hook_name"}
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
    return out


def load_sae(
    path: str | os.PathLike[str],
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    use_error_term: bool = False,
) -> SparseAutoencoder:
    """Load an SAE from a SAELens folder (``cfg.json`` + ``sae_weights.safetensors``).

    Args:
        path: The folder.
        device: Where to put it.
        dtype: Parameter dtype (default: the config's ``dtype``).
        use_error_term: Add the reconstruction error back (see :class:`SparseAutoencoder`).

    Example:
        >>> sae = load_sae("saes/blocks.3.hook_resid_post")
        >>> logits = model.run_with_saes("The cat sat.", saes=[sae])
    """
    from safetensors.torch import load_file

    folder = Path(path)
    cfg_path, w_path = folder / CFG_FILENAME, folder / WEIGHTS_FILENAME
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found; an SAELens SAE folder holds {CFG_FILENAME} and {WEIGHTS_FILENAME}")
    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{cfg_path} is not valid JSON: {err}") from err
    cfg = sae_config_from_dict(raw)
    state = load_file(str(w_path))
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
    target = dtype or cfg.torch_dtype
    sae.load_state_dict({k: v.to(target) for k, v in state.items()}, assign=True)
    return sae.to(device=device)


def save_sae(sae: SparseAutoencoder, path: str | os.PathLike[str]) -> Path:
    """Write ``sae`` as a SAELens 6 folder (``cfg.json`` + ``sae_weights.safetensors``); returns the folder."""
    from safetensors.torch import save_file

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in sae.named_parameters()}
    save_file(tensors, str(folder / WEIGHTS_FILENAME))
    (folder / CFG_FILENAME).write_text(json.dumps(sae_config_to_dict(sae.cfg), indent=2), encoding="utf-8")
    return folder
