"""Harvest adapters: the model-specific part of a harvest (batching items, running the model, alignment).

Text encoders use :class:`TextAdapter`, speech encoders :class:`AudioAdapter`, encoder-decoders
:class:`Seq2SeqAdapter`; other families register theirs with :func:`register_adapter`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool
from torch import Tensor

from encoderlens.names import is_pairwise


@dataclass
class PreparedBatch:
    """One batch, ready for the model.

    Attributes:
        inputs: Whatever the adapter's :meth:`HarvestAdapter.forward` needs.
        masks: Alignment name -> ``(batch, pos)`` bool mask, True at real (non-padding) positions.
            Text: ``{"token": attention_mask}``. An audio adapter would give ``{"frame": ...}``, an
            encoder-decoder ``{"token": ..., "target_token": ...}``.
    """

    inputs: Any
    masks: dict[str, Bool[Tensor, "batch pos"]]


class HarvestAdapter:
    """The model-specific part of a harvest. Subclass it for a new family and :func:`register_adapter` it.

    An adapter turns items into a :class:`PreparedBatch`, runs the model (hooks are attached by
    :func:`harvest`), and says for each hooked activation which alignment (mask) and which axis its
    positions follow. Activations with no position axis (one vector per item) use alignment
    ``"item"``.
    """

    #: Short name written to the manifest.
    name: str = "base"
    #: Whether the forward may be stopped once every requested hook has fired (True when each hook
    #: fires once per forward and nothing after it is needed).
    early_stop: bool = True
    #: Added to the error raised when a requested hook did not fire.
    missing_hint: str = "is the adapter calling the model?"

    def prepare(self, model: Any, items: list[Any]) -> PreparedBatch:
        raise NotImplementedError

    def forward(self, model: Any, batch: PreparedBatch) -> None:
        raise NotImplementedError

    #: Name prefixes of head hooks that hold one vector per item when 2-D ``(batch, features)``, e.g.
    #: ``("pooler.",)``; a ``(batch, pos, ...)`` activation under them (a token classifier) is per position.
    item_hooks: tuple[str, ...] = ()

    def alignment(self, hook_name: str, act: Tensor, batch: PreparedBatch) -> tuple[str, int | None]:
        """``(alignment name, position axis)`` of one activation; ``("item", None)`` for per-item ones.

        The default: 2-D hooks named by :attr:`item_hooks` are per item; any other activation must be
        ``(batch, pos, ...)`` for one of the batch's masks (the first that fits; an adapter with
        several masks of possibly equal shape should decide by hook name instead).
        """
        if is_pairwise(hook_name) and act.ndim == 4:
            raise ValueError(
                f"{hook_name!r} has two position axes (query, key) whose key length changes with padding, so it "
                "cannot be stored as one row per position; pass transforms={name: fn} that reduces it to "
                "(batch, pos, ...), e.g. lambda p, batch: p.amax(-1).transpose(1, 2) (each head's max attention)"
            )
        per_item = hook_name.startswith(self.item_hooks)
        if per_item and act.ndim == 2:
            return "item", None
        for name, mask in batch.masks.items():
            if act.ndim >= 2 and tuple(act.shape[:2]) == tuple(mask.shape):
                return name, 1
        if per_item:
            return "item", None
        raise ValueError(
            f"cannot align {hook_name!r} of shape {tuple(act.shape)} to the batch: expected (batch, pos, ...) "
            f"matching one of the masks { {k: tuple(v.shape) for k, v in batch.masks.items()} }; "
            "pass transforms={name: fn} that returns such a tensor"
        )

    def item_id(self, item: Any, index: int) -> Any:
        """The source id recorded for an item: ``item["id"]`` for dicts that have one, else its index."""
        if isinstance(item, dict) and "id" in item:
            return item["id"]
        return index

    def describe(self) -> dict[str, Any]:
        """Settings recorded in the manifest (a resumed harvest must use the same)."""
        return {"name": self.name}

    def alignment_info(self, model: Any) -> dict[str, dict[str, Any]]:
        """Per alignment, what a position means (written to the manifest's ``alignments``)."""
        return {}


class TextAdapter(HarvestAdapter):
    """Text encoders: items are strings, ``(text_a, text_b)`` pairs, token id sequences, or dicts.

    Dict items give the text as ``item[text_key]`` (or token ids as ``item[tokens_key]``) and the
    source id as ``item["id"]``. Strings are tokenised by the model's tokenizer (padded right,
    truncated to the position table with a warning); token sequences are padded with the tokenizer's
    pad id (0 without a tokenizer). Alignment ``"token"``: position ``p`` of item ``i`` is token ``p``.
    """

    name = "text"
    item_hooks = ("pooler.", "nsp_head.", "classifier.")

    def __init__(self, text_key: str = "text", tokens_key: str = "tokens") -> None:
        self.text_key = text_key
        self.tokens_key = tokens_key

    def _input_of(self, item: Any) -> Any:
        if isinstance(item, dict):
            if self.text_key in item:
                return item[self.text_key]
            if self.tokens_key in item:
                return item[self.tokens_key]
            raise ValueError(
                f"dict item has neither {self.text_key!r} nor {self.tokens_key!r} (keys: {sorted(item)}); "
                "pass TextAdapter(text_key=...) naming the field that holds the text"
            )
        return item

    def prepare(self, model: Any, items: list[Any]) -> PreparedBatch:
        from encoderlens.io.text import TextBatch

        inputs = [self._input_of(it) for it in items]
        is_text = [
            isinstance(x, str) or (isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str)) for x in inputs
        ]
        if all(is_text):
            batch = model.tokenize(inputs)
        elif not any(is_text):
            seqs = []
            for x in inputs:
                t = torch.as_tensor(x)
                if t.ndim != 1 or t.dtype.is_floating_point:
                    raise TypeError(
                        f"token items must be 1-D integer sequences, got {t.dtype} of shape {tuple(t.shape)}; "
                        "pass one item per sequence"
                    )
                seqs.append(t.long())
            if not seqs or min(len(s) for s in seqs) == 0:
                raise ValueError("got an empty token sequence; every item needs at least one token")
            tok = getattr(model, "tokenizer", None)
            pad_id = getattr(tok, "pad_token_id", None) or 0
            tokens = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=pad_id)
            mask = torch.zeros_like(tokens)
            for i, s in enumerate(seqs):
                mask[i, : len(s)] = 1
            batch = model.tokenize(tokens, one_zero_attention_mask=mask)
        else:
            raise ValueError("a batch mixes texts and token sequences; pass one kind of item per harvest")
        assert isinstance(batch, TextBatch)
        return PreparedBatch(inputs=batch, masks={"token": batch.attention_mask.bool()})

    def forward(self, model: Any, batch: PreparedBatch) -> None:
        b = batch.inputs
        # "all" runs the heads too, so their hooks fire; harvest stops the forward after the last
        # requested hook (early_stop), so heads that no hook needs cost nothing
        return_type = "all" if (model.mlm_head is not None or model.pooler is not None) else "embeddings"
        model(
            b.tokens, return_type=return_type, one_zero_attention_mask=b.attention_mask, token_type_ids=b.token_type_ids
        )

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "text_key": self.text_key, "tokens_key": self.tokens_key}

    def alignment_info(self, model: Any) -> dict[str, dict[str, Any]]:
        return {"token": {"position": "token index in the tokenised item (model.to_str_tokens(item)[pos])"}}


class AudioAdapter(HarvestAdapter):
    """Speech encoders: items are waveforms (1-D arrays at the model's rate), file paths, or dicts.

    Dict items give the audio as ``item[audio_key]``: an array, a path, or a ``datasets``-style
    ``{"array": ..., "sampling_rate": ...}``; the source id as ``item["id"]``. Alignments:
    ``"frame"`` (transformer frames: rows of ``(batch, frames, ...)`` activations; frame ``p`` covers
    samples ``[p * hop, p * hop + receptive_field)``) and ``"sample"`` (``hook_waveform``).
    Conv-layer hooks before the last have their own lengths: reduce them with a transform.

    For checkpoints that take no attention mask (group-norm front ends such as HuBERT-base), padding
    changes shorter items' activations slightly, as in HF: use ``batch_size=1`` for exact per-item values.
    """

    name = "audio"
    item_hooks = ("classifier.",)

    def __init__(self, audio_key: str = "audio", sampling_rate: int | None = None, resample: bool = False) -> None:
        self.audio_key = audio_key
        self.sampling_rate = sampling_rate
        self.resample = resample

    def _input_of(self, item: Any) -> tuple[Any, int | None]:
        if isinstance(item, dict):
            if self.audio_key not in item:
                raise ValueError(
                    f"dict item has no {self.audio_key!r} (keys: {sorted(item)}); "
                    "pass AudioAdapter(audio_key=...) naming the field that holds the audio"
                )
            item = item[self.audio_key]
            if isinstance(item, dict) and "array" in item:
                return item["array"], item.get("sampling_rate")
        return item, None

    def prepare(self, model: Any, items: list[Any]) -> PreparedBatch:
        pairs = [self._input_of(it) for it in items]
        rates = {r for _, r in pairs if r is not None}
        if len(rates) > 1:
            raise ValueError(f"a batch mixes sampling rates {sorted(rates)}; resample the items to one rate first")
        rate = rates.pop() if rates else self.sampling_rate
        waves = [torch.as_tensor(w) if not isinstance(w, (str, os.PathLike)) else w for w, _ in pairs]
        batch = model.prepare(waves, sampling_rate=rate, resample=self.resample)
        n_frames = int(model.num_frames(batch.input_values.shape[1]))
        frames = model.frame_mask(batch.lengths.cpu(), n_frames).to(batch.input_values.device)
        return PreparedBatch(inputs=batch, masks={"frame": frames.bool(), "sample": batch.sample_mask.bool()})

    def forward(self, model: Any, batch: PreparedBatch) -> None:
        model(batch.inputs, return_type="all")

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "audio_key": self.audio_key, "sampling_rate": self.sampling_rate}

    def alignment_info(self, model: Any) -> dict[str, dict[str, Any]]:
        return {
            "frame": {
                "position": "transformer frame index",
                "sampling_rate": int(model.sampling_rate),
                "hop_length": int(model.hop_length),
                "receptive_field": int(model.receptive_field),
                "span": "frame p covers samples [p * hop_length, p * hop_length + receptive_field)",
            },
            "sample": {
                "position": "sample index of the normalised, padded waveform",
                "sampling_rate": int(model.sampling_rate),
            },
        }


class Seq2SeqAdapter(HarvestAdapter):
    """Encoder-decoders (T5, BART): items are sources, ``(source, target)`` tuples, or dicts.

    Dict items give ``item[source_key]``, optionally ``item[target_key]`` and ``item["id"]``. Sources
    and targets are text or token ids. Without targets only the encoder runs (harvest ``encoder.*``
    hooks); with them the decoder runs by teacher forcing on
    :meth:`~encoderlens.models.encoder_decoder.HookedEncoderDecoder.decoder_input_from_targets`
    (the targets shifted right after the start token), so decoder position ``p`` is the decoder input
    whose output predicts target token ``p``: an item has one row per target token.

    Alignments: ``"token"`` (source tokens: ``encoder.*`` hooks and the decoder's cross-attention
    keys and values) and ``"target_token"`` (every other ``decoder.*`` hook).
    """

    name = "seq2seq"
    missing_hint = "decoder.* hooks need items with a target (a (source, target) tuple or a dict with a target)"

    def __init__(self, source_key: str = "source", target_key: str = "target") -> None:
        self.source_key = source_key
        self.target_key = target_key

    def _input_of(self, item: Any) -> tuple[Any, Any]:
        if isinstance(item, dict):
            if self.source_key not in item:
                raise ValueError(
                    f"dict item has no {self.source_key!r} (keys: {sorted(item)}); "
                    "pass Seq2SeqAdapter(source_key=..., target_key=...) naming the fields"
                )
            return item[self.source_key], item.get(self.target_key)
        if isinstance(item, tuple) and len(item) == 2:
            return item
        return item, None

    def prepare(self, model: Any, items: list[Any]) -> PreparedBatch:
        from encoderlens.io.text import TextBatch

        pairs = [self._input_of(it) for it in items]
        sources = [s for s, _ in pairs]
        targets = [t for _, t in pairs]
        if all(isinstance(x, str) for x in sources):
            enc = model.tokenize(sources)
        else:
            seqs = [torch.as_tensor(x).long() for x in sources]
            pad = model.cfg.pad_token_id if model.cfg.pad_token_id is not None else 0
            tokens = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=pad)
            mask = torch.zeros_like(tokens)
            for i, t in enumerate(seqs):
                mask[i, : len(t)] = 1
            enc = model.tokenize(tokens, one_zero_attention_mask=mask)
        masks = {"token": enc.attention_mask.bool()}
        dec: TextBatch | None = None
        if any(t is not None for t in targets):
            if any(t is None for t in targets):
                raise ValueError("some items have a target and some do not; give every item a target, or none")
            if all(isinstance(t, str) for t in targets):
                tgt = model.tokenize(targets)  # the same tokenisation decoder_input_from_targets applies
                tokens, tmask = tgt.tokens, tgt.attention_mask
            else:
                seqs = [torch.as_tensor(t).long() for t in targets]
                tokens = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=0)
                tmask = torch.zeros_like(tokens)
                for i, t in enumerate(seqs):
                    tmask[i, : len(t)] = 1
            dec = model.decoder_input_from_targets(tokens.cpu(), attention_mask=tmask.cpu())
            # rows: the decoder positions whose output predicts a real target token (one per target
            # token, however the batch was padded)
            masks["target_token"] = tmask.bool().to(enc.attention_mask.device)
        return PreparedBatch(inputs=(enc, dec), masks=masks)

    def forward(self, model: Any, batch: PreparedBatch) -> None:
        enc, dec = batch.inputs
        if dec is None:
            model(enc, return_type="encoder_output")
        else:
            model(enc, decoder_input=dec, return_type="all")

    def alignment(self, hook_name: str, act: Tensor, batch: PreparedBatch) -> tuple[str, int | None]:
        super().alignment(hook_name, act, batch)  # refuses pairwise and unalignable activations
        # source and target lengths may coincide: decide by name
        source_side = not hook_name.startswith("decoder.") or hook_name.endswith(
            (".cross_attn.hook_k", ".cross_attn.hook_v")
        )
        align = "token" if source_side else "target_token"
        mask = batch.masks.get(align)
        if mask is None or tuple(act.shape[:2]) != tuple(mask.shape):
            raise ValueError(
                f"{hook_name!r} of shape {tuple(act.shape)} does not follow the {align} positions "
                f"({None if mask is None else tuple(mask.shape)}); pass a transform for it"
            )
        return align, 1

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "source_key": self.source_key, "target_key": self.target_key}

    def alignment_info(self, model: Any) -> dict[str, dict[str, Any]]:
        return {
            "token": {"position": "source token index (encoder input)"},
            "target_token": {
                "position": "decoder input index: the start token, then the targets shifted right; "
                "its output predicts target token pos"
            },
        }


_ADAPTERS: dict[str, Callable[..., HarvestAdapter]] = {
    "encoder": TextAdapter,
    "audio_encoder": AudioAdapter,
    "encoder_decoder": Seq2SeqAdapter,
}


def register_adapter(family: str) -> Callable[[Callable[..., HarvestAdapter]], Callable[..., HarvestAdapter]]:
    """Decorator: the default adapter (class or factory) for models of ``family`` (``model.family``).

    The factory takes an optional first argument: the dict field that holds an item's input (the CLI's
    ``--field``).
    """

    def deco(factory: Callable[..., HarvestAdapter]) -> Callable[..., HarvestAdapter]:
        _ADAPTERS[family] = factory
        return factory

    return deco


def default_adapter(model: Any, *args: Any) -> HarvestAdapter:
    """The registered adapter for ``model.family``, built with ``args`` (e.g. the item field name)."""
    family = getattr(model, "family", "")
    if family not in _ADAPTERS:
        raise ValueError(
            f"no harvest adapter for model family {family!r} (known: {sorted(_ADAPTERS)}); "
            "pass adapter=... (a HarvestAdapter subclass instance)"
        )
    return _ADAPTERS[family](*args)
