"""Converter registry: HF ``config.architectures`` / ``model_type`` -> converter function.

Adding an architecture is one converter file plus one ``@register(...)`` line, and one import line
in ``encoderlens/convert/__init__.py``: that list of imports is the table of converter modules
(importing this module imports the package first, so every converter is registered before a lookup).
Nothing here imports the package or lists model names. A converter takes the HF config and state dict (a mapping: in loading, a lazy one that reads each
tensor when it is looked up) and returns our config and state dict.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from torch import Tensor

Converter = Callable[[Any, Mapping[str, Tensor]], tuple[Any, dict[str, Tensor]]]

_BY_ARCHITECTURE: dict[str, Converter] = {}
_BY_MODEL_TYPE: dict[str, Converter] = {}


def register(*architectures: str, model_types: Iterable[str] = ()) -> Callable[[Converter], Converter]:
    """Register a converter for HF architecture names (and, as a fallback, model types).

    Example:
        >>> @register("BertModel", "BertForMaskedLM", model_types=["bert"])
        ... def convert(hf_config, state_dict): ...
    """

    def deco(fn: Converter) -> Converter:
        for a in architectures:
            _BY_ARCHITECTURE[a] = fn
        for t in model_types:
            _BY_MODEL_TYPE[t] = fn
        return fn

    return deco


def supported_architectures() -> list[str]:
    """Every registered HF architecture name, sorted."""
    return sorted(_BY_ARCHITECTURE)


def find_converter(hf_config: Any) -> Converter:
    """Pick the converter from ``hf_config.architectures`` (first match), else ``hf_config.model_type``."""
    archs = list(getattr(hf_config, "architectures", None) or [])
    for a in archs:
        if a in _BY_ARCHITECTURE:
            return _BY_ARCHITECTURE[a]
    model_type = getattr(hf_config, "model_type", None)
    if model_type in _BY_MODEL_TYPE:
        return _BY_MODEL_TYPE[model_type]
    raise ValueError(
        f"no encoderlens converter for architectures={archs} model_type={model_type!r}; "
        f"supported architectures: {', '.join(sorted(_BY_ARCHITECTURE))}"
    )


class WeightReader:
    """Takes HF tensors by name, each read from the state dict only when taken, so that leftovers can be
    reported as an error at the end.

    The reader holds names, not tensors: with a lazy state dict (:class:`~encoderlens.io.weight_files.LazyWeights`)
    a tensor is read when a converter takes it and, once taken, is referenced by nothing but the converter,
    so it is freed as soon as its converted form exists (or lives on as the converted tensor itself).

    Args:
        state_dict: The HF state dict (not modified; a lazy mapping is read one key at a time).
        arch: Architecture name for messages.
        ignore: Key suffixes that are buffers, not weights (e.g. ``position_ids``); dropped silently, never read.

    Attributes:
        remaining: Names not taken yet (after :meth:`strip_prefix`) -> their names in ``state_dict``.
    """

    def __init__(self, state_dict: Mapping[str, Tensor], arch: str, ignore: Iterable[str] = ()) -> None:
        self.arch = arch
        ignore = tuple(ignore)
        self._source = state_dict
        self.remaining: dict[str, str] = {k: k for k in state_dict if not (ignore and k.endswith(ignore))}
        self._taken: set[str] = set()

    def has(self, key: str) -> bool:
        return key in self.remaining

    def take(self, key: str) -> Tensor:
        try:
            name = self.remaining.pop(key)
        except KeyError:
            if key in self._taken:
                raise ValueError(
                    f"{self.arch} converter took weight {key!r} twice (a converter bug: each HF weight maps to one "
                    "place); please report it"
                ) from None
            raise ValueError(
                f"{self.arch} checkpoint is missing weight {key!r}; is the checkpoint complete and of this architecture?"
            ) from None
        self._taken.add(key)
        return self._source[name]

    def take_optional(self, key: str) -> Tensor | None:
        name = self.remaining.pop(key, None)
        if name is None:
            return None
        self._taken.add(key)
        return self._source[name]

    def strip_prefix(self, prefix: str) -> None:
        """Remove ``prefix`` from every key that has it (``bert.``, ``hubert.``...).

        Raises:
            ValueError: A key present both with and without the prefix (one of them would be dropped unseen).
        """
        stripped: dict[str, str] = {}
        for k, v in self.remaining.items():
            short = k[len(prefix) :] if k.startswith(prefix) else k
            if short in stripped:
                raise ValueError(
                    f"{self.arch} checkpoint holds {short!r} twice: as {stripped[short]!r} and {v!r}; "
                    "remove the stale copy"
                )
            stripped[short] = v
        self.remaining = stripped

    def finish(self) -> None:
        """Raise if any HF tensor was not consumed."""
        if self.remaining:
            names = sorted(self.remaining)
            shown = ", ".join(names[:12]) + (f" ... (+{len(names) - 12} more)" if len(names) > 12 else "")
            raise ValueError(
                f"{self.arch} converter left {len(names)} HF weight(s) unused: {shown}. "
                "The checkpoint has parts this converter does not handle; refusing to load it silently."
            )


def require(condition: bool, arch: str, setting: str, value: Any, supported: str) -> None:
    """Raise ``ValueError`` for an HF config setting the converter does not handle."""
    if not condition:
        raise ValueError(f"{arch} converter does not support {setting}={value!r} (supported: {supported})")


#: ``PretrainedConfig`` keys that never change a forward pass: bookkeeping, label names (read by the
#: heads through ``id2label``), output switches, HF generation defaults (our ``generate`` takes its own
#: arguments) and training-time switches, plus legacy keys of old releases. Every converter accepts them.
GENERIC_IGNORED_KEYS = frozenset(
    {
        "architectures",
        "model_type",
        "transformers_version",
        "dtype",
        "torch_dtype",
        "id2label",
        "label2id",
        "num_labels",
        "problem_type",
        "finetuning_task",
        "tokenizer_class",
        "prefix",
        "task_specific_params",
        "return_dict",
        "output_attentions",
        "output_hidden_states",
        "output_past",
        "use_cache",
        "torchscript",
        "use_bfloat16",
        "gradient_checkpointing",
        "chunk_size_feed_forward",  # chunked MLP: same result
        "is_encoder_decoder",  # the weights decide whether a decoder exists
        "bos_token_id",
        "eos_token_id",
        "sep_token_id",
        "cls_token_id",
        "initializer_range",
        "initializer_factor",
        # generation defaults
        "max_length",
        "min_length",
        "do_sample",
        "early_stopping",
        "num_beams",
        "num_beam_groups",
        "diversity_penalty",
        "temperature",
        "top_k",
        "top_p",
        "typical_p",
        "repetition_penalty",
        "length_penalty",
        "no_repeat_ngram_size",
        "encoder_no_repeat_ngram_size",
        "bad_words_ids",
        "num_return_sequences",
        "output_scores",
        "return_dict_in_generate",
        "forced_bos_token_id",
        "forced_eos_token_id",
        "remove_invalid_values",
        "exponential_decay_length_penalty",
        "suppress_tokens",
        "begin_suppress_tokens",
        "max_new_tokens",
    }
)


def check_config_keys(hf: Any, arch: str, handled: Iterable[str], ignored: Iterable[str] = ()) -> None:
    """Refuse an HF config key this converter does not know, unless it holds its class default.

    A converter lists the keys it reads (``handled``: it maps or ``require``-checks them) and the keys
    that change nothing for the forward pass (``ignored``: dropout rates, loss settings, legacy keys).
    Any other key of ``hf.to_dict()`` must equal the value a default-constructed config of the same
    class holds: the converter handles the architecture's defaults, so a default is safe, and a new
    HF flag set to something else may change the computation without adding weights. Private keys
    (``_name_or_path``, ``_attn_implementation``...) only choose HF kernels and are skipped.

    Raises:
        ValueError: Naming the key, its value and ``arch``; e.g. ``roberta converter does not support
            position_embedding_type='relative_key'``.
    """
    allowed = GENERIC_IGNORED_KEYS.union(handled, ignored)
    defaults = _class_defaults(type(hf))
    items = hf.to_dict() if hasattr(hf, "to_dict") else dict(vars(hf))
    for key, value in sorted(items.items()):
        if key.startswith("_") or key in allowed:
            continue
        if key in defaults and defaults[key] == value:
            continue
        cls = type(hf).__name__
        expected = f"{defaults[key]!r}, the {cls} default" if key in defaults else f"absent ({cls} has no such key)"
        raise ValueError(
            f"{arch} converter does not support {key}={value!r} (expected: {expected}). The converter neither "
            "handles this HF config key nor knows it to change nothing, so loading could give a wrong result. "
            "If it changes nothing for this checkpoint, remove it from config.json; otherwise the converter "
            "has to implement it"
        )


_DEFAULTS: dict[type, dict[str, Any]] = {}


def _class_defaults(cls: type) -> dict[str, Any]:
    """``cls().to_dict()``, cached; empty when the class cannot be built without arguments."""
    if cls not in _DEFAULTS:
        try:
            made = cls()
            _DEFAULTS[cls] = made.to_dict() if hasattr(made, "to_dict") else dict(vars(made))
        except Exception:  # a config class that needs arguments: every unknown key must then be listed
            _DEFAULTS[cls] = {}
    return _DEFAULTS[cls]
