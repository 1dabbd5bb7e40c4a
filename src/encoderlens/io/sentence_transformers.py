"""The one reader of sentence-transformers checkpoint folders (``modules.json`` and its module folders).

A sentence-transformers folder holds the HF model at its root plus ``modules.json`` listing the
pipeline ``Transformer -> Pooling [-> Dense ...] [-> Normalize]``: ``1_Pooling/config.json`` (the
pooling modes), one folder per ``Dense`` layer (``config.json`` and ``linear.weight`` / ``linear.bias``)
and ``sentence_bert_config.json`` (``max_seq_length``, ``do_lower_case``). The model
(:class:`~encoderlens.models.encoder.HookedEncoder`, ``return_type="sentence_embedding"``) and
:mod:`encoderlens.analysis.similarity` both read folders through :func:`read_sentence_transformer`,
so they run the same pipeline. Any other module (``LSTM``, ``LayerNorm``, a ``Dense`` with a residual,
``Normalize`` before ``Dense``...) is reported in :attr:`SentenceTransformerSpec.note` with
``pooling=None``, so that callers refuse instead of returning a different vector. An incomplete
folder (a missing or unreadable file) raises ``ValueError``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from encoderlens.config import POOLING_MODES, SentenceDenseConfig, SentencePoolingConfig
from encoderlens.io.checkpoint import inside_folder, open_weights

# legacy boolean keys of 1_Pooling/config.json, in sentence-transformers' concatenation order
_LEGACY_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
#: ``Dense`` activation classes (``activation_function`` in its ``config.json``) -> our names.
DENSE_ACTIVATION_CLASSES = {
    "torch.nn.modules.activation.Tanh": "tanh",
    "torch.nn.modules.linear.Identity": "identity",
    "torch.nn.modules.activation.ReLU": "relu",
    "torch.nn.modules.activation.GELU": "gelu",
}
_DENSE_KEYS = {"in_features", "out_features", "bias", "activation_function"}
# Dense config keys accepted only at their default (anything else changes the computation)
_DENSE_DEFAULTS: dict[str, Any] = {
    "use_residual": False,
    "module_input_name": "sentence_embedding",
    "module_output_name": "sentence_embedding",
}


@dataclass(frozen=True)
class SentenceTransformerSpec:
    """What a checkpoint folder declares.

    Attributes:
        pooling: The pipeline we reproduce, or None (no sentence-transformers files, or unsupported).
        note: Why ``pooling`` is None although the folder is a sentence-transformers checkpoint ("" otherwise).
        dense_weights: ``(W, b)`` of each ``Dense`` layer in ``pooling.dense`` order, ``W`` of shape
            ``(in_features, out_features)`` (``y = act(x @ W + b)``), ``b`` None without bias.
        folder: The folder read, or None.
    """

    pooling: SentencePoolingConfig | None
    note: str = ""
    dense_weights: tuple[tuple[Tensor, Tensor | None], ...] = field(default=(), compare=False, repr=False)
    folder: Path | None = None

    @property
    def is_sentence_transformer(self) -> bool:
        """Whether the folder has a ``modules.json`` (whether or not its pipeline is reproduced)."""
        return self.pooling is not None or bool(self.note)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"could not read {path} ({e}); the sentence-transformers checkpoint is incomplete") from None


def _pooling_modes(cfg: dict[str, Any]) -> tuple[str, ...]:
    mode = cfg.get("pooling_mode")
    if mode is not None:
        modes = (mode,) if isinstance(mode, str) else tuple(mode)
    else:
        modes = tuple(m for key, m in _LEGACY_KEYS.items() if cfg.get(key, False))
    # sentence-transformers falls back to mean pooling when nothing is set
    return modes or ("mean",)


class _Unsupported(Exception):
    """A module or option this reader does not reproduce (becomes the spec's note)."""


def _read_dense(folder: Path) -> tuple[SentenceDenseConfig, Tensor, Tensor | None]:
    cfg = _read_json(folder / "config.json")
    for key, default in _DENSE_DEFAULTS.items():
        if cfg.get(key, default) != default:
            raise _Unsupported(f"the Dense module in {folder} has {key}={cfg[key]!r}, which encoderlens does not run")
    unknown = sorted(set(cfg) - _DENSE_KEYS - set(_DENSE_DEFAULTS))
    if unknown:
        raise _Unsupported(f"the Dense module in {folder} has config keys {unknown} that encoderlens does not handle")
    act_class = cfg.get("activation_function", "torch.nn.modules.activation.Tanh")
    if act_class not in DENSE_ACTIVATION_CLASSES:
        raise _Unsupported(
            f"Dense activation {act_class!r} in {folder} is not supported (supported: {sorted(DENSE_ACTIVATION_CLASSES)})"
        )
    sd = open_weights(folder)
    W = sd.get("linear.weight")
    if W is None:
        raise ValueError(f"Dense module {folder} has no 'linear.weight' (keys: {sorted(sd)})")
    n_in, n_out = int(cfg["in_features"]), int(cfg["out_features"])
    if tuple(W.shape) != (n_out, n_in):
        raise ValueError(f"Dense weight in {folder} has shape {tuple(W.shape)}, its config says {(n_out, n_in)}")
    b = sd.get("linear.bias")
    has_bias = bool(cfg.get("bias", True))
    if has_bias != (b is not None):
        raise ValueError(
            f"Dense module {folder}: config bias={has_bias} but the weights {'lack' if has_bias else 'have'} one"
        )
    dense = SentenceDenseConfig(n_in, n_out, has_bias, DENSE_ACTIVATION_CLASSES[act_class])
    return dense, W.float().T.contiguous(), None if b is None else b.float()


def read_sentence_transformer(path: Path | None) -> SentenceTransformerSpec:
    """Parse ``modules.json`` and its modules in ``path``.

    Returns:
        ``pooling=None, note=""`` without ``modules.json``; ``pooling=None`` and a ``note`` naming what is
        not reproduced for an unsupported pipeline; else the pooling, Dense layers (with their weights)
        and Normalize the folder declares.

    Raises:
        ValueError: A file the pipeline needs is missing or inconsistent.
    """
    if path is None or not (path / "modules.json").exists():
        return SentenceTransformerSpec(None, folder=path)
    try:
        return _read_pipeline(path)
    except _Unsupported as e:
        return SentenceTransformerSpec(None, str(e), folder=path)


def _read_pipeline(path: Path) -> SentenceTransformerSpec:
    modules = sorted(_read_json(path / "modules.json"), key=lambda m: m.get("idx", 0))
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    unsupported = [k for k in kinds if k not in ("Transformer", "Pooling", "Dense", "Normalize")]
    tail = kinds[2:]
    n_dense = tail.count("Dense")
    if (
        unsupported
        or kinds[:2] != ["Transformer", "Pooling"]
        or tail not in (["Dense"] * n_dense, [*["Dense"] * n_dense, "Normalize"])
    ):
        raise _Unsupported(
            f"modules.json declares the pipeline {kinds}; encoderlens reproduces Transformer -> Pooling "
            f"[-> Dense ...] [-> Normalize] only{f' (unsupported: {unsupported})' if unsupported else ''}"
        )
    if modules[0].get("path", "") not in ("", "."):
        raise _Unsupported(f"the Transformer module lives in {modules[0]['path']!r}, not at the folder root")
    pool_dir = inside_folder(path, modules[1].get("path", "1_Pooling"), f"{path / 'modules.json'}")
    pool_cfg = _read_json(pool_dir / "config.json") if (pool_dir / "config.json").exists() else {}
    modes = _pooling_modes(pool_cfg)
    bad = [m for m in modes if m not in POOLING_MODES]
    if bad:
        raise _Unsupported(f"unknown pooling mode(s) {bad} in {pool_dir / 'config.json'}")
    if not pool_cfg.get("include_prompt", True):
        raise _Unsupported(
            "the Pooling module has include_prompt=false (prompt tokens excluded), which encoderlens does not do"
        )
    dense_cfgs: list[SentenceDenseConfig] = []
    weights: list[tuple[Tensor, Tensor | None]] = []
    for m in modules[2 : 2 + n_dense]:
        cfg, W, b = _read_dense(inside_folder(path, m.get("path") or ".", f"{path / 'modules.json'}"))
        dense_cfgs.append(cfg)
        weights.append((W, b))
    st_cfg = path / "sentence_bert_config.json"
    st = _read_json(st_cfg) if st_cfg.exists() else {}
    max_len = st.get("max_seq_length")
    pooling = SentencePoolingConfig(
        modes=modes,
        normalize=kinds[-1] == "Normalize",
        max_seq_length=int(max_len) if max_len else None,
        do_lower_case=bool(st.get("do_lower_case", False)),
        dense=tuple(dense_cfgs),
    )
    return SentenceTransformerSpec(pooling, dense_weights=tuple(weights), folder=path)
