"""The model contract's data: a prepared input, an output readout, an example input.

Every encoderlens model (:class:`~encoderlens.models.base.HookedModel`) turns user input into a
:class:`Prepared` batch, runs it, and says which head reads each residual stream (:class:`Readout`).
The analysis toolkit, harvest, views and the CLI use only these and the methods
:class:`~encoderlens.models.base.HookedModel` declares; a family is plugged in by implementing them
(see ``docs/architecture.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any

from jaxtyping import Float, Int
from torch import Tensor

StreamName = str | None
"""A residual stream: None for single-stream models, ``"encoder"`` / ``"decoder"`` for encoder-decoders."""


TOKEN_ALIGNMENT_HINT = (
    "Corrupt by swapping tokens for tokens of the same count (check model.to_str_tokens), or pad both to one length."
)
"""The :attr:`Prepared.alignment_hint` of token inputs."""


@dataclass(frozen=True)
class Prepared:
    """A model input frozen to tensors, with the mask and labels of every residual stream's positions.

    Made by ``model.prepare_input(input, **options)``; run by ``model.run_prepared(batch)``. Analysis code
    reads only the masks, labels, token ids and times; ``args`` / ``kwargs`` belong to the model.

    Attributes:
        family: The family that made it (clean and corrupted inputs must come from the same one).
        args: Positional arguments of the forward (tensors, or batches of tensors).
        kwargs: Keyword arguments of the forward (never ``return_type``).
        masks: Per stream, a ``(batch, pos)`` long tensor, 1 = real position.
        labels: Per stream, per batch item, one label per position (padding marked ``"<pad>"``): tokens
            for text streams, start times (``"0.020s"``) for audio frames; None where there are none.
        token_ids: Per stream, the ``(batch, pos)`` token ids where the stream is made of tokens.
        times: Per stream, ``(pos, 2)`` start and end time in seconds of each position, where positions are
            time frames.
        batch_size: Number of items.
        alignment_hint: How to make two inputs line up position by position (shown when they do not).
    """

    family: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    # streams differ in length (encoder and decoder positions): each stream's pos is its own (``_pos``)
    masks: dict[StreamName, Int[Tensor, "batch _pos"]]
    labels: dict[StreamName, list[list[str]] | None]
    token_ids: dict[StreamName, Int[Tensor, "batch _pos"]] = field(default_factory=dict)
    times: dict[StreamName, Float[Tensor, "_pos 2"]] = field(default_factory=dict)
    batch_size: int = 1
    alignment_hint: str = ""

    @property
    def streams(self) -> tuple[StreamName, ...]:
        """The streams this input has masks for."""
        return tuple(self.masks)

    def repeat(self, k: int) -> Prepared:
        """The same input repeated ``k`` times along the batch (item order: copy 0 items, copy 1 items...)."""
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
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
            masks={s: rep(m) for s, m in self.masks.items()},
            labels={s: (None if ls is None else ls * k) for s, ls in self.labels.items()},
            token_ids={s: rep(t) for s, t in self.token_ids.items()},
            batch_size=b * k,
        )

    def mask(self, stream: StreamName) -> Int[Tensor, "batch pos"]:
        """The ``(batch, pos)`` mask of real positions of ``stream``."""
        if stream not in self.masks:
            raise ValueError(f"no stream {stream!r} in this input; streams: {list(self.masks)}")
        return self.masks[stream]

    def position_labels(self, stream: StreamName, item: int = 0, n: int | None = None) -> list[str]:
        """Labels ``"{pos}:{label}"`` of one item's positions (``"{pos}"`` where no labels exist)."""
        labs = self.labels.get(stream)
        if labs is None:
            size = n if n is not None else int(self.mask(stream).shape[1])
            return [str(p) for p in range(size)]
        return [f"{p}:{t}" for p, t in enumerate(labs[item])]

    def seconds_per_position(self, stream: StreamName) -> float | None:
        """The hop between positions in seconds where positions are time frames, else None."""
        t = self.times.get(stream)
        if t is None or t.shape[0] == 0:
            return None
        if t.shape[0] > 1:
            return float(t[1, 0] - t[0, 0])
        return float(t[0, 1] - t[0, 0])


@dataclass(frozen=True)
class Readout:
    """The head that reads a residual stream into output logits (what the logit lens and DLA apply).

    Attributes:
        name: Module path of the head (``"mlm_head"``, ``"ctc_head"``, ``"lm_head"``, ``"classifier"``,
            ``"qa_head"``).
        kind: ``"mlm"``, ``"ctc"``, ``"lm"``, ``"classifier"`` (token classification) or ``"qa"`` (question
            answering: start and end logits per position, normalised over positions, not over the two).
        head: Maps the stream's *final* state (after the stream's final norm, as the model applies it) to
            logits, ``(..., d_model) -> (..., n_outputs)``.
        linear: Whether ``head`` is affine in its input (then direct attributions through it are exact).
        return_type: The forward ``return_type`` whose output is this head's logits, if there is one.
        blank_id: The CTC blank (``kind="ctc"``).
        output_labels: Names of the outputs when they are not the tokenizer's vocabulary (classifier labels).
    """

    name: str
    kind: str
    head: Callable[[Tensor], Tensor]
    linear: bool
    return_type: str | None = None
    blank_id: int | None = None
    output_labels: tuple[str, ...] | None = None


@dataclass(frozen=True)
class InputSpec:
    """Where a stream's raw input enters the model as a tensor gradients can reach (input attribution).

    Attributes:
        hook: Full hook name of that tensor: token embeddings ``(batch, pos, d_model)`` for token streams,
            waveform samples ``(batch, samples)`` for audio.
        unit: ``"token"`` (the hook's axis 1 is the stream's positions) or ``"sample"`` (audio samples).
        sampling_rate: Samples per second (``unit="sample"``), else None.
    """

    hook: str
    unit: str
    sampling_rate: float | None = None


@dataclass(frozen=True)
class ExampleInput:
    """A small valid input (for docs, tests and the CLI): ``model.prepare_input(input, **options)``.

    Attributes:
        input: The input itself (text, token ids, a waveform...).
        options: Options for :meth:`~encoderlens.models.base.HookedModel.prepare_input`.
        description: What it is, in words.
    """

    input: Any
    options: dict[str, Any]
    description: str


def text_position_labels(
    tokenizer: Any, tokens: Int[Tensor, "batch pos"], mask: Int[Tensor, "batch pos"]
) -> list[list[str]] | None:
    """Token strings per item and position (``"<pad>"`` at padding); None without a tokenizer.

    An id the tokenizer has no string for (embedding rows past its vocabulary, as T5's 32128 rows for
    32100 tokens) is labelled ``"<id 32110>"``.
    """
    if tokenizer is None:
        return None
    out = []
    for row, m in zip(tokens.tolist(), mask.tolist()):
        toks = tokenizer.convert_ids_to_tokens(row)
        out.append([("<pad>" if not keep else t if t is not None else f"<id {i}>") for i, t, keep in zip(row, toks, m)])
    return out


def frame_position_labels(times: Float[Tensor, "pos 2"], mask: Int[Tensor, "batch pos"]) -> list[list[str]]:
    """Start times ``"0.020s"`` per item and frame (``"<pad>"`` at padded frames)."""
    starts = times[:, 0].tolist()
    return [[f"{t:.3f}s" if m else "<pad>" for t, m in zip(starts, row)] for row in mask.tolist()]
