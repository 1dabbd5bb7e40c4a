"""Logit lens: read every layer's residual stream through the model's own output head.

For each layer ``l`` the residual stream after it is sent through what the model applies to its last
layer: the final norm (pre-LN stacks that have one) and then the head the model declares for the stream
(``model.readout(stream)``, part of the model contract). No lens is trained ("tuned-free").

- Text encoders with an MLM head: ``mlm_head(final_norm(resid_l))``, the head's own dense -> act -> LN ->
  unembed. In post-LN encoders (BERT) every layer's output is already normalised, so this reads the
  stream as the head would read a last layer. Without an MLM head, a token-classification head (outputs
  named by its labels).
- Encoder-decoders (T5/BART decoders): the decoder's final norm, then ``lm_head`` (scale and bias included).
- Speech encoders with a CTC head: the final norm (pre-LN) and ``ctc_head`` per frame; :func:`ctc_lens`
  greedy-decodes each layer into a transcript.
- Other streams declaring a linear unembedding in their ``StreamSpec``: read as
  ``ActivationCache.logit_attrs`` reads it (see :func:`head_fn`).

The last entry of the lens equals the model's own logits (checked: ``result.meta["final_max_abs_diff"]``).
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from encoderlens.analysis.results import Labelled
from encoderlens.cache import StreamSpec
from encoderlens.models.base import HookedModel
from encoderlens.models.contract import Prepared, Readout, StreamName


def _final_norm(model: HookedModel, spec: StreamSpec) -> Callable[[Tensor], Tensor] | None:
    if spec.final_norm is None:
        return None
    path = spec.final_norm if spec.final_norm.startswith(spec.prefix) else spec.prefix + spec.final_norm
    return model.get_submodule(path)


def _normalize_only(norm: Any, x: Tensor) -> Tensor:
    """A norm without its affine weight and bias (what a folded unembedding reads)."""
    if getattr(norm.cfg, "kind", "layernorm") == "layernorm":
        x = x - x.mean(-1, keepdim=True)
    return x / (x.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt()


def head_fn(model: HookedModel, stream: StreamName = None) -> Callable[[Tensor], Tensor]:
    """The function from a stream's residual (before any final norm) to the model's output logits.

    The model's readout head (``model.readout(stream)``) after the stream's final norm (exactly the model's
    last step); for streams without one, the stream's declared linear unembedding ``(W_U, b_U)``, which by the
    :class:`~encoderlens.cache.StreamSpec` convention reads the final norm's output *without* its affine
    weight and bias (they are folded into ``W_U`` / ``b_U``, as ``ActivationCache.logit_attrs`` expects).

    Raises:
        ValueError: When the stream has no output head (a sentence-embedding checkpoint, an encoder stream).
    """
    spec = model.stream_spec(stream)
    norm = _final_norm(model, spec)
    readout = model.readout(stream)
    if readout is not None:
        head = readout.head

        def fn(x: Tensor) -> Tensor:
            return head(norm(x) if norm is not None else x)

        return fn
    if spec.unembed is not None:
        W_U, b_U = spec.unembed

        def folded(x: Tensor) -> Tensor:
            y = _normalize_only(norm, x) if norm is not None else x
            out = y @ W_U.to(y.device, y.dtype)
            return out + b_U.to(y.device, y.dtype) if b_U is not None else out

        return folded
    note = spec.unembed_note or "it has no output head"
    where = f"the {stream} stream" if stream else "this model"
    raise ValueError(
        f"the logit lens needs an output head, and {where} has none usable ({note}). Load a checkpoint "
        "with a head (e.g. *ForMaskedLM, *ForCTC, *ForConditionalGeneration), or for sentence-embedding "
        "models compare layers with encoderlens.analysis.similarity.similarity_by_layer"
    )


@dataclass
class LensResult:
    """Logits of every layer read through the output head.

    Attributes:
        logits: ``(layer, batch, pos, vocab)`` (only the requested positions).
        layer_labels: ``"embed"`` then ``"L0"``... (``"L3_mid"`` with ``include_mid``).
        positions: The positions kept.
        prepared: The input (masks, position labels, token ids).
        stream: The stream read.
        tokenizer: For turning ids into strings (may be None).
        meta: ``final_max_abs_diff`` (last layer vs the model's own logits) and more.
    """

    logits: Float[Tensor, "layer batch pos d_vocab"]
    layer_labels: list[str]
    positions: list[int]
    prepared: Prepared
    stream: StreamName
    tokenizer: Any = None
    meta: dict[str, Any] = field(default_factory=dict)
    output_labels: tuple[str, ...] | None = None

    def _pos_labels(self, item: int) -> list[str]:
        labels = self.prepared.position_labels(self.stream, item, n=int(self.prepared.mask(self.stream).shape[1]))
        return [labels[p] for p in self.positions]

    def _tok(self, ids: list[int]) -> list[str]:
        if self.output_labels is not None:
            return [self.output_labels[i] for i in ids]
        if self.tokenizer is None:
            return [str(i) for i in ids]
        return list(self.tokenizer.convert_ids_to_tokens(ids))

    def probs(self) -> Tensor:
        """Softmax over the vocabulary, ``(layer, batch, pos, vocab)``."""
        return self.logits.float().softmax(-1)

    def top_tokens(self, item: int = 0, k: int = 5) -> list[list[list[tuple[str, float]]]]:
        """``[layer][pos] -> [(token, prob), ...]`` for one batch item."""
        p = self.probs()[:, item]
        vals, ids = p.topk(k, dim=-1)
        return [
            [list(zip(self._tok(ids[li, pi].tolist()), vals[li, pi].tolist())) for pi in range(p.shape[1])]
            for li in range(p.shape[0])
        ]

    def _ids(self, token: int | str | Sequence[int] | Tensor) -> Tensor:
        if isinstance(token, str) and self.output_labels is not None:
            if token not in self.output_labels:
                raise ValueError(f"{token!r} is not an output label; labels: {list(self.output_labels)}")
            token = self.output_labels.index(token)
        if isinstance(token, str):
            if self.tokenizer is None:
                raise ValueError("token given as a string but there is no tokenizer; pass the token id")
            tid = self.tokenizer.convert_tokens_to_ids(token)
            if (
                tid is None
                or tid == getattr(self.tokenizer, "unk_token_id", None)
                and token != self.tokenizer.unk_token
            ):
                raise ValueError(
                    f"{token!r} is not one token of this vocabulary; pass a token id or a vocabulary token"
                )
            token = tid
        return torch.as_tensor(token)

    def _per_pos(self, token: Any) -> Tensor:
        ids = self._ids(token)
        n = len(self.positions)
        if ids.ndim == 0:
            return ids.expand(n)
        if ids.shape != (n,):
            raise ValueError(f"give one token or one per kept position ({n}), got shape {tuple(ids.shape)}")
        return ids

    def target_prob(self, token: int | str | Sequence[int], item: int = 0) -> Labelled:
        """Probability of ``token`` (one, or one per kept position) at every layer and position."""
        ids = self._per_pos(token)
        p = self.probs()[:, item]  # layer pos vocab
        vals = p.gather(-1, ids[None, :, None].expand(p.shape[0], -1, 1))[..., 0]
        return Labelled(
            vals,
            ("layer", "pos"),
            {"layer": self.layer_labels, "pos": self._pos_labels(item)},
            "probability of target token by layer",
        )

    def target_rank(self, token: int | str | Sequence[int], item: int = 0) -> Labelled:
        """Rank (0 = top) of ``token`` at every layer and position."""
        ids = self._per_pos(token)
        lg = self.logits[:, item].float()
        tgt = lg.gather(-1, ids[None, :, None].expand(lg.shape[0], -1, 1))
        ranks = (lg > tgt).sum(-1).float()
        return Labelled(
            ranks,
            ("layer", "pos"),
            {"layer": self.layer_labels, "pos": self._pos_labels(item)},
            "rank of target token by layer",
        )

    def kl_to_final(self, item: int = 0) -> Labelled:
        """KL(final layer || layer) in nats at every layer and position: how far each layer is from the answer."""
        lp = self.logits[:, item].float().log_softmax(-1)
        final = lp[-1]
        kl = (final.exp() * (final - lp)).sum(-1)
        return Labelled(
            kl, ("layer", "pos"), {"layer": self.layer_labels, "pos": self._pos_labels(item)}, "KL(final || layer)"
        )

    def _repr_html_(self) -> str:
        """Jupyter: the text report (top tokens per layer and position of item 0)."""
        return f"<pre class='el-text'>{html.escape(self.to_text())}</pre>"

    def to_text(self, item: int = 0, k: int = 3) -> str:
        """A table: one row per layer, one column per kept position, the top-k tokens in each cell."""
        top = self.top_tokens(item, k)
        cols = self._pos_labels(item)
        width = max(12, *(len(c) for c in cols))
        lines = [" " * 8 + " ".join(f"{c[:width]:<{width}}" for c in cols)]
        for lab, row in zip(self.layer_labels, top):
            cells = [",".join(t for t, _ in cell)[:width] for cell in row]
            lines.append(f"{lab:<8}" + " ".join(f"{c:<{width}}" for c in cells))
        return "\n".join(lines)


def _select_positions(prepared: Prepared, stream: StreamName, positions: Any, model: HookedModel) -> list[int]:
    n = int(prepared.mask(stream).shape[1])
    if positions is None:
        return list(range(n))
    if isinstance(positions, str):
        if positions != "mask":
            raise ValueError(f"positions must be None, a list of ints, or 'mask'; got {positions!r}")
        tok = model.tokenizer
        ids = prepared.token_ids.get(stream)
        if tok is None or tok.mask_token_id is None or ids is None:
            raise ValueError("positions='mask' needs a tokenizer with a mask token and token inputs")
        hits = sorted(set(ids.eq(tok.mask_token_id).nonzero()[:, 1].tolist()))
        if not hits:
            raise ValueError(f"positions='mask' but the input has no {tok.mask_token} token")
        return hits
    if isinstance(positions, int):
        positions = [positions]
    out = []
    for p in positions:
        if not isinstance(p, int) or not -n <= p < n:
            raise ValueError(f"position {p!r} out of range for {n} positions")
        out.append(p % n)
    return out


def logit_lens(
    model: HookedModel,
    input: Any,
    *,
    stream: StreamName = None,
    positions: Any = None,
    include_mid: bool = False,
    **input_kwargs: Any,
) -> LensResult:
    """Apply the model's output head to the residual stream after every layer.

    Args:
        model: A model with an output head (MLM, CTC, or an encoder-decoder's LM head).
        input: Text, token ids, a waveform, or a prepared input.
        stream: ``"decoder"`` (default) or ``"encoder"`` on encoder-decoders.
        positions: Positions to keep (all by default), or ``"mask"`` for every ``[MASK]`` position.
        include_mid: Also read ``resid_mid`` (after attention, before the MLP) of every layer.
        **input_kwargs: Options for preparing the input (masks, ``decoder_input``...).

    Returns:
        A :class:`LensResult`; layer ``"embed"`` is the input of block 0.

    Example:
        >>> lens = logit_lens(model, "The capital of France is [MASK].", positions="mask")
        >>> lens.target_rank("paris").to_text()
    """
    stream = model.resolve_stream(stream)
    prepared = model.prepare_input(input, **input_kwargs)
    spec = model.stream_spec(stream)
    head = head_fn(model, stream)
    readout = model.readout(stream)
    p = spec.prefix
    names = [f"{p}blocks.{i}.hook_resid_pre" for i in range(spec.n_layers)]
    if include_mid:
        names += [spec.resid_hook(i, "mid") for i in range(spec.n_layers)]
    names.append(spec.resid_hook(spec.n_layers - 1))
    wanted = set(names)
    # run for the readout's own logits where the forward returns them (to check the last layer against)
    rt = readout.return_type if readout is not None and readout.return_type is not None else None
    with torch.no_grad():
        out, cache = model.run_prepared_with_cache(prepared, names_filter=lambda n: n in wanted, return_type=rt)
        poss = _select_positions(prepared, stream, positions, model)
        stream_acts: list[Tensor] = []
        labels: list[str] = []
        for i in range(spec.n_layers):
            stream_acts.append(cache[f"{p}blocks.{i}.hook_resid_pre"])
            labels.append("embed" if i == 0 else f"L{i - 1}")
            if include_mid:
                stream_acts.append(cache[spec.resid_hook(i, "mid")])
                labels.append(f"L{i}_mid")
        stream_acts.append(cache[spec.resid_hook(spec.n_layers - 1)])
        labels.append(f"L{spec.n_layers - 1}")
        idx = torch.tensor(poss, device=stream_acts[0].device)
        logits = torch.stack([head(a.index_select(1, idx)) for a in stream_acts])
    meta: dict[str, Any] = {}
    if rt is not None and isinstance(out, Tensor) and out.ndim == 3:
        real = prepared.mask(stream).index_select(1, idx.to(prepared.mask(stream).device)).bool()
        diff = (logits[-1] - out.index_select(1, idx.to(out.device)))[real.to(out.device)]
        meta["final_max_abs_diff"] = float(diff.abs().max()) if diff.numel() else 0.0
    out_labels = readout.output_labels if readout is not None else None
    return LensResult(logits.float().cpu(), labels, poss, prepared, stream, model.tokenizer, meta, out_labels)


def ctc_collapse(ids: Sequence[int], blank_id: int) -> list[int]:
    """Greedy CTC decoding of one frame sequence: merge repeats, then drop blanks."""
    out: list[int] = []
    prev = None
    for t in ids:
        if t != prev and t != blank_id:
            out.append(int(t))
        prev = t
    return out


def _ctc_readout(model: HookedModel) -> Readout:
    readout = model.readout(None) if model.streams == (None,) else None
    if readout is None or readout.kind != "ctc":
        raise ValueError(
            f"ctc_lens is for speech encoders with a CTC head; this {model.architecture} model has "
            f"{'no output head' if readout is None else 'a ' + readout.kind + ' head'}"
        )
    return readout


def ctc_lens(
    model: HookedModel, input: Any, *, item: int = 0, blank_id: int | None = None, **input_kwargs: Any
) -> list[tuple[str, str]]:
    """Per-layer greedy CTC transcripts of one audio item: ``[(layer_label, transcript), ...]``.

    Every layer's frames go through the model's CTC head (final norm first where the model has one);
    each frame's argmax is collapsed (repeats merged, blanks dropped) and decoded by the tokenizer.
    Padded frames are left out.
    """
    readout = _ctc_readout(model)
    blank = readout.blank_id if blank_id is None else blank_id
    if blank is None:
        raise ValueError("cannot tell the CTC blank id: the model's CTC head declares none; pass blank_id=")
    lens = logit_lens(model, input, **input_kwargs)
    real = lens.prepared.mask(None)[item].bool().cpu()
    tok = model.tokenizer
    out = []
    for lab, lg in zip(lens.layer_labels, lens.logits[:, item]):
        ids = ctc_collapse(lg[real].argmax(-1).tolist(), blank)
        out.append((lab, _decode_ctc(tok, ids)))
    return out


def _decode_ctc(tokenizer: Any, ids: list[int]) -> str:
    if tokenizer is None:
        return " ".join(map(str, ids))
    try:
        # HF CTC tokenizers would merge repeats again; ours are already collapsed
        return tokenizer.decode(ids, group_tokens=False)
    except TypeError:
        return tokenizer.decode(ids)
