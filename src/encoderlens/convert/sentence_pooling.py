"""Sentence-embedding pooling declared by a sentence-transformers checkpoint folder.

A sentence-transformers folder holds the HF model at its root plus ``modules.json`` listing the
pipeline (``Transformer -> Pooling [-> Normalize]``), ``1_Pooling/config.json`` (the pooling modes)
and ``sentence_bert_config.json`` (``max_seq_length``, ``do_lower_case``). We reproduce exactly that
pipeline; any other module (``Dense``, ``LayerNorm``, ...) is reported as unsupported so that
``return_type="sentence_embedding"`` refuses instead of returning a different vector.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from encoderlens.config import POOLING_MODES, SentencePoolingConfig

# legacy boolean keys of 1_Pooling/config.json, in sentence-transformers' concatenation order
_LEGACY_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


@dataclass(frozen=True)
class SentenceTransformerSpec:
    """What a checkpoint folder declares.

    Attributes:
        pooling: The pooling we reproduce, or None (no sentence-transformers files, or unsupported).
        note: Why ``pooling`` is None although the folder is a sentence-transformers checkpoint ("" otherwise).
    """

    pooling: SentencePoolingConfig | None
    note: str = ""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"could not read {path}: {e}") from None


def _pooling_modes(cfg: dict[str, Any]) -> tuple[str, ...]:
    mode = cfg.get("pooling_mode")
    if mode is not None:
        modes = (mode,) if isinstance(mode, str) else tuple(mode)
    else:
        modes = tuple(m for key, m in _LEGACY_KEYS.items() if cfg.get(key, False))
    # sentence-transformers falls back to mean pooling when nothing is set
    return modes or ("mean",)


def read_sentence_transformer_spec(path: Path | None) -> SentenceTransformerSpec:
    """Parse ``modules.json`` and friends in ``path``; no ``modules.json`` gives ``pooling=None, note=""``."""
    if path is None or not (path / "modules.json").exists():
        return SentenceTransformerSpec(None)
    modules = sorted(_read_json(path / "modules.json"), key=lambda m: m.get("idx", 0))
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    unsupported = [k for k in kinds if k not in ("Transformer", "Pooling", "Normalize")]
    if unsupported or kinds[:2] != ["Transformer", "Pooling"] or kinds.count("Normalize") > 1:
        return SentenceTransformerSpec(
            None,
            f"modules.json declares the pipeline {kinds}; encoderlens reproduces Transformer -> Pooling "
            f"[-> Normalize] only{f' (unsupported: {unsupported})' if unsupported else ''}",
        )
    if kinds[2:] not in ([], ["Normalize"]):
        return SentenceTransformerSpec(None, f"modules.json declares {kinds}; Normalize must come last")
    if modules[0].get("path", "") not in ("", "."):
        return SentenceTransformerSpec(
            None, f"the Transformer module lives in {modules[0]['path']!r}, not at the folder root"
        )
    pool_dir = path / modules[1].get("path", "1_Pooling")
    pool_cfg = _read_json(pool_dir / "config.json") if (pool_dir / "config.json").exists() else {}
    modes = _pooling_modes(pool_cfg)
    bad = [m for m in modes if m not in POOLING_MODES]
    if bad:
        return SentenceTransformerSpec(None, f"unknown pooling mode(s) {bad} in {pool_dir / 'config.json'}")
    if not pool_cfg.get("include_prompt", True):
        return SentenceTransformerSpec(
            None, "the Pooling module has include_prompt=false (prompt tokens excluded), which encoderlens does not do"
        )
    st_cfg = path / "sentence_bert_config.json"
    st = _read_json(st_cfg) if st_cfg.exists() else {}
    max_len = st.get("max_seq_length")
    return SentenceTransformerSpec(
        SentencePoolingConfig(
            modes=modes,
            normalize=kinds[-1] == "Normalize",
            max_seq_length=int(max_len) if max_len else None,
            do_lower_case=bool(st.get("do_lower_case", False)),
        )
    )
