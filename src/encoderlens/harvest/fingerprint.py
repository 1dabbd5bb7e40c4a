"""A model's fingerprint: what a resumed harvest must match (architecture, config, weights, tokenizer).

The weight hash is cheap: for every parameter and buffer, its name, shape, dtype, the float64 sum of
its values and up to 1,024 values sampled at a fixed stride go into one SHA-256. Two checkpoints that
differ anywhere in a tensor's sum or sampled values (a fine-tune, another seed, another layer count)
get different hashes; the cost is one pass of ``sum`` over the weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import torch

from encoderlens.models.base import HookedModel

#: Values sampled per tensor for the weight hash.
SAMPLES_PER_TENSOR = 1024


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def weights_hash(model: HookedModel) -> str:
    """A cheap hash of every parameter and buffer (name, shape, dtype, sum, strided samples)."""
    h = hashlib.sha256()
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    with torch.no_grad():
        for name, t in sorted(tensors, key=lambda kv: kv[0]):
            flat = t.detach().reshape(-1)
            h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
            if flat.numel() == 0:
                continue
            if flat.is_floating_point() or flat.is_complex():
                h.update(repr(float(flat.double().sum())).encode())
            else:
                h.update(repr(int(flat.long().sum())).encode())
            step = max(1, flat.numel() // SAMPLES_PER_TENSOR)
            h.update(flat[::step][:SAMPLES_PER_TENSOR].cpu().double().numpy().tobytes())
    return h.hexdigest()[:16]


def config_hash(model: HookedModel) -> str:
    """A hash of the model's converted config (every field)."""
    cfg = model.cfg
    doc = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type) else repr(cfg)
    return _sha(json.dumps(doc, sort_keys=True, default=repr).encode())


def tokenizer_identity(model: HookedModel) -> dict[str, Any] | None:
    """The tokenizer's class, vocabulary size and a hash of its vocabulary and special tokens; None without one."""
    tok = model.tokenizer
    if tok is None:
        return None
    ident: dict[str, Any] = {"class": type(tok).__name__}
    try:
        vocab = tok.get_vocab()
        ident["vocab_size"] = len(vocab)
        ident["vocab"] = _sha(json.dumps(sorted(vocab.items()), default=repr).encode())
    except (AttributeError, NotImplementedError, TypeError):  # a tokenizer without a vocabulary listing
        ident["vocab"] = None
    special = getattr(tok, "special_tokens_map", None)
    ident["special_tokens"] = _sha(json.dumps(special, sort_keys=True, default=repr).encode())
    return ident


def fingerprint(model: HookedModel) -> dict[str, Any]:
    """``{"class", "family", "architecture", "config", "weights", "tokenizer"}`` of ``model``."""
    return {
        "class": type(model).__name__,
        "family": model.family,
        "architecture": model.architecture,
        "config": config_hash(model),
        "weights": weights_hash(model),
        "tokenizer": tokenizer_identity(model),
    }


def differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The fingerprint fields that differ (``"weights"``, ``"tokenizer"``...), in a fixed order."""
    keys = ["class", "family", "architecture", "config", "weights", "tokenizer"]
    return [k for k in keys if stored.get(k) != current.get(k)]
