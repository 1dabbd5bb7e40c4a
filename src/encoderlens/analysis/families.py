"""How the analysis toolkit talks to each model family: inputs frozen to tensors, position masks, labels.

Everything in :mod:`encoderlens.analysis` is written against a few generic things: hook names
(``{prefix}blocks.{i}.attn.hook_z``...), ``run_with_hooks`` / ``run_with_cache``, the model's
``stream_spec(stream)`` (:class:`~encoderlens.cache.StreamSpec`) and, from this module, a
:class:`Prepared` input: the exact arguments a forward takes, a 0/1 mask of real positions for every
residual stream, and a label for every position. This module is the one place that knows how a family
turns user input (text, waveforms, text pairs for encoder-decoders) into those.

Families and what this module uses of them:

- ``"encoder"`` (:class:`~encoderlens.HookedEncoder`): ``model.tokenize(input, one_zero_attention_mask,
  token_type_ids) -> TextBatch``; ``model(tokens, one_zero_attention_mask=..., token_type_ids=...,
  return_type=...)``.
- ``"audio_encoder"`` (``HookedAudioEncoder``): ``model.prepare(input, **audio_options) -> AudioBatch``
  (waveforms, files, lists of unequal lengths), ``model(batch, return_type=...)``; frames are positions,
  real frames from ``model.frame_mask(batch.lengths, n_frames)``, labelled with their start time
  (``model.frame_times(n, span="hop")``).
- ``"encoder_decoder"`` (``HookedEncoderDecoder``): ``model.tokenize(input, mask)`` for the encoder;
  ``decoder_input`` as target text (``model.decoder_input_from_targets``: start token + shift right), a
  ``TextBatch`` or token ids used as given; ``model(tokens, decoder_input=TextBatch,
  one_zero_attention_mask=..., return_type=...)``. Streams ``("encoder", "decoder")``.

Where a model lacks what is expected, the error names the missing method and this module. A family can
also take over completely by defining ``model.prepare_analysis_input(input, **kw) -> Prepared``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from encoderlens.io.audio import AudioBatch
from encoderlens.io.text import TextBatch, as_token_tensor, check_mask

StreamName = str | None

ENCODER = "encoder"
AUDIO = "audio_encoder"
SEQ2SEQ = "encoder_decoder"
_SUPPORTED = (ENCODER, AUDIO, SEQ2SEQ)


def family_of(model: Any) -> str:
    """The model's family (``"encoder"``, ``"audio_encoder"``, ``"encoder_decoder"``), checked."""
    fam = getattr(model, "family", None)
    if fam not in _SUPPORTED:
        raise TypeError(
            f"the analysis toolkit works on encoderlens models (families {_SUPPORTED}); got "
            f"{type(model).__name__} with family {fam!r}. Load one with encoderlens.from_pretrained(...)"
        )
    return fam


def streams_of(model: Any) -> tuple[StreamName, ...]:
    """Residual streams of a model: ``(None,)`` for single-stream models, ``("encoder", "decoder")``..."""
    return tuple(getattr(model, "streams", (None,)))


def check_stream(model: Any, stream: StreamName) -> StreamName:
    """Validate a stream name; ``None`` means the only stream (or the decoder of an encoder-decoder)."""
    streams = streams_of(model)
    if stream is None:
        if streams == (None,):
            return None
        return "decoder" if "decoder" in streams else streams[-1]
    if stream not in streams:
        raise ValueError(f"unknown stream {stream!r}; this model's streams are {streams} (None: the default)")
    return stream


def prefix_of(stream: StreamName) -> str:
    return "" if stream is None else f"{stream}."


def spec_of(model: Any, stream: StreamName) -> Any:
    if not hasattr(model, "stream_spec"):
        raise TypeError(f"{type(model).__name__} has no stream_spec(); it cannot be analysed by layer")
    return model.stream_spec(stream)


def _require(model: Any, name: str, why: str) -> Callable[..., Any]:
    fn = getattr(model, name, None)
    if not callable(fn):
        raise NotImplementedError(
            f"{type(model).__name__} has no {name}() method, which the analysis toolkit needs {why}. "
            "See encoderlens/analysis/families.py for what each family must provide"
        )
    return fn


@dataclass
class Prepared:
    """A model input frozen to tensors, with its position masks and labels.

    Attributes:
        family: The model family.
        args: Positional arguments of the forward (tensors).
        kwargs: Keyword arguments of the forward (tensors or plain values; never ``return_type``).
        masks: Per stream, a ``(batch, pos)`` long tensor, 1 = real position; None = every position is real
            (resolved from the first run's activations by :func:`resolve_masks`).
        labels: Per stream, per batch item, one label per position (padding included, marked ``"<pad>"``).
        token_ids: Per stream, the ``(batch, pos)`` token ids where the stream is made of tokens.
        batch_size: Number of items.
    """

    family: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    masks: dict[StreamName, Tensor | None]
    labels: dict[StreamName, list[list[str]] | None]
    token_ids: dict[StreamName, Tensor] = field(default_factory=dict)
    batch_size: int = 1

    def repeat(self, k: int) -> Prepared:
        """The same input repeated ``k`` times along the batch (item order: copy 0 items, copy 1 items...)."""
        if k == 1:
            return self
        b = self.batch_size

        def rep(v: Any) -> Any:
            if isinstance(v, Tensor) and v.ndim >= 1 and v.shape[0] == b:
                return v.repeat(k, *([1] * (v.ndim - 1)))
            if is_dataclass(v) and not isinstance(v, type):
                # e.g. AudioBatch / TextBatch: repeat every per-item tensor field
                return replace(v, **{f.name: rep(getattr(v, f.name)) for f in fields(v)})
            return v

        return replace(
            self,
            args=tuple(rep(a) for a in self.args),
            kwargs={n: rep(v) for n, v in self.kwargs.items()},
            batch_size=b * k,
            masks={s: (None if m is None else rep(m)) for s, m in self.masks.items()},
        )

    def mask(self, stream: StreamName) -> Int[Tensor, "batch pos"]:
        """The ``(batch, pos)`` mask of real positions of ``stream`` (after :func:`resolve_masks`)."""
        if stream not in self.masks:
            raise ValueError(f"no stream {stream!r} in this input; streams: {list(self.masks)}")
        m = self.masks[stream]
        if m is None:
            raise RuntimeError("position mask not resolved yet; run resolve_masks(prepared, cache) first")
        return m

    def position_labels(self, stream: StreamName, item: int = 0, n: int | None = None) -> list[str]:
        """Labels ``"{pos}:{token}"`` of one item's positions (``"{pos}"`` where no token labels exist)."""
        labs = self.labels.get(stream)
        if labs is None:
            size = n if n is not None else int(self.mask(stream).shape[1])
            return [str(p) for p in range(size)]
        return [f"{p}:{t}" for p, t in enumerate(labs[item])]


def _text_labels(tokenizer: Any, tokens: Tensor, mask: Tensor) -> list[list[str]] | None:
    if tokenizer is None:
        return None
    out = []
    for row, m in zip(tokens.tolist(), mask.tolist()):
        toks = tokenizer.convert_ids_to_tokens(row)
        out.append([t if keep else "<pad>" for t, keep in zip(toks, m)])
    return out


def prepare(model: Any, input: Any, **kw: Any) -> Prepared:
    """Turn user input into a :class:`Prepared` for ``model`` (a Prepared passes through unchanged).

    Keyword arguments are family specific: ``one_zero_attention_mask``, ``token_type_ids`` (text
    encoders, with token ids); ``decoder_input``, ``decoder_attention_mask`` (encoder-decoders);
    ``sampling_rate`` and other audio options (audio).
    """
    if isinstance(input, Prepared):
        if kw:
            raise ValueError(f"got an already prepared input and extra options {sorted(kw)}; pass one or the other")
        return input
    custom = getattr(model, "prepare_analysis_input", None)
    if callable(custom):
        return custom(input, **kw)
    fam = family_of(model)
    if fam == ENCODER:
        return _prepare_encoder(model, input, **kw)
    if fam == AUDIO:
        return _prepare_audio(model, input, **kw)
    return _prepare_encoder_decoder(model, input, **kw)


def _prepare_encoder(
    model: Any, input: Any, one_zero_attention_mask: Any = None, token_type_ids: Any = None, **kw: Any
) -> Prepared:
    if kw:
        raise TypeError(f"unexpected options for a text encoder: {sorted(kw)}")
    batch = model.tokenize(input, one_zero_attention_mask, token_type_ids)
    kwargs: dict[str, Any] = {"one_zero_attention_mask": batch.attention_mask}
    if batch.token_type_ids is not None:
        kwargs["token_type_ids"] = batch.token_type_ids
    return Prepared(
        family="encoder",
        args=(batch.tokens,),
        kwargs=kwargs,
        masks={None: batch.attention_mask},
        labels={None: _text_labels(getattr(model, "tokenizer", None), batch.tokens, batch.attention_mask)},
        token_ids={None: batch.tokens},
        batch_size=int(batch.tokens.shape[0]),
    )


def _prepare_audio(model: Any, input: Any, **kw: Any) -> Prepared:
    prep = _require(model, "prepare", "to turn audio into a padded batch")
    batch = input if isinstance(input, AudioBatch) and not kw else prep(input, **kw)
    for attr in ("input_values", "lengths"):
        if not hasattr(batch, attr):
            raise NotImplementedError(
                f"{type(model).__name__}.prepare returned {type(batch).__name__} without {attr!r}; "
                "see encoderlens/analysis/families.py"
            )
    n_frames = int(_require(model, "num_frames", "to size the frame mask")(int(batch.input_values.shape[1])))
    frame_mask = _require(model, "frame_mask", "to tell real frames from padding")(batch.lengths, n_frames).long()
    labels = None
    times = getattr(model, "frame_times", None)
    if callable(times):
        starts = times(n_frames, span="hop")[:, 0].tolist()
        labels = [[f"{t:.3f}s" if m else "<pad>" for t, m in zip(starts, row)] for row in frame_mask.tolist()]
    return Prepared(
        AUDIO, (batch,), {}, {None: frame_mask}, {None: labels}, batch_size=int(batch.input_values.shape[0])
    )


def _prepare_encoder_decoder(
    model: Any,
    input: Any,
    decoder_input: Any = None,
    one_zero_attention_mask: Any = None,
    decoder_attention_mask: Any = None,
    **kw: Any,
) -> Prepared:
    if kw:
        raise TypeError(f"unexpected options for an encoder-decoder: {sorted(kw)}")
    tokenize = _require(model, "tokenize", "to tokenize the encoder input")
    enc = tokenize(input, one_zero_attention_mask)
    tok = getattr(model, "tokenizer", None)
    streams = streams_of(model)
    masks: dict[StreamName, Tensor | None] = {"encoder": enc.attention_mask}
    labels: dict[StreamName, list[list[str]] | None] = {"encoder": _text_labels(tok, enc.tokens, enc.attention_mask)}
    ids: dict[StreamName, Tensor] = {"encoder": enc.tokens}
    kwargs: dict[str, Any] = {"one_zero_attention_mask": enc.attention_mask}
    if "decoder" in streams:
        if decoder_input is None:
            raise ValueError(
                "an encoder-decoder needs decoder_input= (target text, or decoder token ids starting with the start "
                "token) to run the decoder; e.g. prepare(model, 'translate English to German: Hello', "
                "decoder_input='Hallo')"
            )
        if isinstance(decoder_input, TextBatch):
            dec = decoder_input
        elif isinstance(decoder_input, str) or (
            isinstance(decoder_input, (list, tuple)) and decoder_input and isinstance(decoder_input[0], str)
        ):
            dec = _require(model, "decoder_input_from_targets", "to build decoder inputs from target text")(
                decoder_input
            )
        else:
            t = as_token_tensor(decoder_input)
            m = torch.ones_like(t) if decoder_attention_mask is None else check_mask(decoder_attention_mask, t.shape)
            dec = TextBatch(t, m, None)
        dec_tokens = dec.tokens.to(enc.tokens.device)
        dec_mask = dec.attention_mask.to(enc.tokens.device).long()
        if dec_tokens.shape[0] != enc.tokens.shape[0]:
            raise ValueError(
                f"encoder batch has {enc.tokens.shape[0]} items but decoder_input has {dec_tokens.shape[0]}; "
                "pass one decoder input per encoder input"
            )
        kwargs["decoder_input"] = TextBatch(dec_tokens, dec_mask, None)
        masks["decoder"] = dec_mask
        labels["decoder"] = _text_labels(tok, dec_tokens, dec_mask)
        ids["decoder"] = dec_tokens
    elif decoder_input is not None:
        raise ValueError("this checkpoint is encoder-only; do not pass decoder_input")
    return Prepared(
        family=SEQ2SEQ,
        args=(enc.tokens,),
        kwargs=kwargs,
        masks=masks,
        labels=labels,
        token_ids=ids,
        batch_size=int(enc.tokens.shape[0]),
    )


def default_return_type(model: Any) -> str:
    """The forward ``return_type`` that gives the model's main output as a tensor."""
    fam = family_of(model)
    if fam == ENCODER:
        return "logits" if getattr(model, "mlm_head", None) is not None else "embeddings"
    if fam == AUDIO:
        return "logits" if getattr(model, "ctc_head", None) is not None else "hidden"
    if getattr(model, "decoder", None) is None:
        return "encoder_output"
    return "logits" if getattr(model, "lm_head", None) is not None else "decoder_output"


def run(
    model: Any,
    prepared: Prepared,
    return_type: str | None = None,
    fwd_hooks: Sequence[tuple[Any, Any]] = (),
    bwd_hooks: Sequence[tuple[Any, Any]] = (),
) -> Any:
    """Run ``model`` on a prepared input with temporary hooks."""
    rt = default_return_type(model) if return_type is None else return_type
    return model.run_with_hooks(
        *prepared.args, fwd_hooks=fwd_hooks, bwd_hooks=bwd_hooks, return_type=rt, **prepared.kwargs
    )


def run_with_cache(
    model: Any, prepared: Prepared, names_filter: Any = None, return_type: str | None = None, **kw: Any
) -> tuple[Any, Any]:
    """``model.run_with_cache`` on a prepared input; position masks are resolved from the activations."""
    rt = default_return_type(model) if return_type is None else return_type
    out, cache = model.run_with_cache(
        *prepared.args, names_filter=names_filter, return_type=rt, **prepared.kwargs, **kw
    )
    resolve_masks(model, prepared, cache)
    return out, cache


def resolve_masks(model: Any, prepared: Prepared, acts: Any) -> None:
    """Fill masks left as None (every position real) from the shape of a cached residual activation."""
    for stream, m in list(prepared.masks.items()):
        if m is not None:
            continue
        name = f"{prefix_of(stream)}blocks.0.hook_resid_pre"
        if name not in acts:
            raise RuntimeError(f"cannot size the position mask of stream {stream!r}: {name!r} was not cached")
        t = acts[name]
        prepared.masks[stream] = torch.ones(t.shape[:2], dtype=torch.long, device=t.device)


def layout(hook_name: str) -> dict[str, int]:
    """Which dimension of a hook's activation is what (batch is always 0).

    Returns a dict with ``"pos"`` (query position), and where they exist ``"head"`` and ``"key_pos"``.
    """
    leaf = hook_name.rsplit(".", 1)[-1]
    if leaf in ("hook_pattern", "hook_attn_scores"):
        return {"head": 1, "pos": 2, "key_pos": 3}
    if leaf in ("hook_q", "hook_k", "hook_v", "hook_z", "hook_result"):
        return {"pos": 1, "head": 2}
    return {"pos": 1}


def to_device_of(model: Any, t: Tensor) -> Tensor:
    try:
        dev = next(model.parameters()).device
    except StopIteration:
        return t
    return t.to(dev)
