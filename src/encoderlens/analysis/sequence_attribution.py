"""Attribution of every generated (or forced) target token to the source and the previous target tokens.

inseq's core view for encoder-decoders: for each decoder position ``t`` the target is the score of the
next token ``y_{t+1}`` (``decoder_input[t + 1]``: a forced target, or the output of ``model.generate(...,
return_type="tokens")``), attributed to the encoder input (source tokens) and to the decoder input
(previous target tokens; later ones get exactly 0 through the causal mask). Every target position runs in
one batched pass: the batch is repeated once per target position, and each copy reads its own position.
The result is a token x token matrix per item (rows: generated tokens; columns: source then target tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from encoderlens.analysis.input_attribution import Baseline, Method, attribute_input
from encoderlens.analysis.results import Labelled
from encoderlens.analysis.targets import Kind, _score
from encoderlens.models.base import HookedModel
from encoderlens.models.contract import Prepared


@dataclass
class SequenceAttribution:
    """Per item, target token x input token attributions.

    Attributes:
        source: ``(item, generated, pos)``: attribution of each generated token to each source position.
        target: ``(item, generated, pos)``: ... to each decoder-input position (previous target tokens).
        scores: ``(item, generated)``: the attributed value ``f`` (the token's score).
        delta: ``(item, generated)`` convergence delta (integrated gradients), else None.
        batch: The prepared input.
    """

    source: Labelled
    target: Labelled
    scores: Tensor
    delta: Tensor | None
    batch: Prepared
    method: str

    def matrix(self, item: int = 0) -> Labelled:
        """One item's ``(generated, input)`` matrix: source positions, then target positions (padding dropped)."""
        src, tgt = self.source.values[item], self.target.values[item]
        keep_s = ~torch.isnan(src).all(0)
        keep_t = ~torch.isnan(tgt).all(0)
        rows = ~torch.isnan(self.scores[item])
        ls = [f"src {lab}" for lab, k in zip(self.batch.position_labels(self.streams[0], item), keep_s) if k]
        lt = [f"tgt {lab}" for lab, k in zip(self.batch.position_labels(self.streams[1], item), keep_t) if k]
        gen = [g for g, r in zip(self._generated_labels(item), rows) if r]
        vals = torch.cat([src[:, keep_s], tgt[:, keep_t]], 1)[rows]
        return Labelled(
            vals, ("generated", "input"), {"generated": gen, "input": ls + lt}, f"{self.method}: target x input"
        )

    @property
    def streams(self) -> tuple[Any, ...]:
        return self.batch.streams

    def _generated_labels(self, item: int) -> list[str]:
        labs = self.batch.position_labels(self.streams[1], item)
        return [f"{t}->{labs[t + 1].split(':', 1)[-1]}" for t in range(len(labs) - 1)]

    def to_text(self, item: int = 0, digits: int = 3) -> str:
        return self.matrix(item).to_text(digits)

    def to_html(self, path: str | Path | None = None, item: int = 0) -> str:
        """The token x token heatmap (source + target on the columns) as self-contained HTML."""
        return self.matrix(item).to_html(path)

    def plot(self, item: int = 0, ax: Any = None) -> Any:
        return self.matrix(item).plot(ax=ax)


def attribute_sequence(
    model: HookedModel,
    input: Any,
    *,
    method: Method = "integrated_gradients",
    kind: Kind = "logprob",
    baseline: Baseline = "zero",
    n_steps: int = 64,
    rule: str = "gausslegendre",
    chunk_size: int = 4,
    **input_options: Any,
) -> SequenceAttribution:
    """Attribute each next decoder token to source and previous target tokens (an encoder-decoder).

    Args:
        model: A model with two streams (source, target), e.g. :class:`HookedEncoderDecoder`.
        input: The source plus ``decoder_input=`` (forced targets, or ``model.generate(...,
            return_type="tokens")``) in ``input_options``; or a :class:`Prepared`.
        method, baseline, n_steps, rule: As :func:`~encoderlens.analysis.input_attribution.attribute_input`.
        kind: What is attributed: ``"logprob"`` (inseq's default probability view in log space), ``"logit"``,
            ``"prob"``.
        chunk_size: Interpolation steps per forward (each step runs every target position of every item).

    Example:
        >>> gen = model.generate("translate: the cat", return_type="tokens")
        >>> res = attribute_sequence(model, "translate: the cat", decoder_input=gen)
        >>> res.to_html("seq.html")  # generated tokens x (source + target) tokens
    """
    if len(model.streams) != 2:
        raise ValueError(
            f"attribute_sequence needs a source and a target stream (an encoder-decoder); this model has "
            f"{model.streams}. Use attribute_input with a target"
        )
    src_stream, tgt_stream = model.streams
    batch = model.prepare_input(input, **input_options)
    ids = batch.token_ids.get(tgt_stream)
    if ids is None:
        raise ValueError("the target stream has no token ids")
    b, n_tgt = ids.shape
    n_gen = n_tgt - 1
    if n_gen < 1:
        raise ValueError("the decoder input needs at least two tokens (a prefix and one target)")
    valid = batch.mask(tgt_stream)[:, 1:].bool()  # (b, n_gen): position t predicts token t+1
    rep = batch.repeat(n_gen)  # copy j reads position j
    nxt = ids[:, 1:]

    def fn(out: Any, bt: Prepared) -> Tensor:
        rows = torch.arange(out.shape[0], device=out.device)
        copy = (rows // b) % n_gen
        item = rows % b
        tok = nxt.to(out.device)[item, copy]
        val = _score(out[rows, copy], kind)[rows, tok]
        return val * valid.to(out.device)[item, copy]

    hooks = [model.input_spec(s).hook for s in (src_stream, tgt_stream)]
    readout = model.readout(tgt_stream)
    if readout is None or readout.return_type is None:
        raise ValueError(f"the {tgt_stream} stream of this {model.architecture} model has no output head to attribute")
    if isinstance(baseline, (Tensor, dict)):
        raise ValueError("give attribute_sequence a 'zero' / number baseline or a baseline input, not tensors")
    if not isinstance(baseline, (str, int, float)):
        baseline = model.prepare_input(baseline).repeat(n_gen)
    res = attribute_input(
        model,
        rep,
        fn,
        method=method,
        hooks=hooks,
        baseline=baseline,
        n_steps=n_steps,
        rule=rule,
        chunk_size=chunk_size,
        return_type=readout.return_type,
    )

    def unfold(values: Tensor) -> Tensor:  # (n_gen * b, pos) -> (b, n_gen, pos), invalid rows NaN
        v = values.reshape(n_gen, b, -1).permute(1, 0, 2).clone()
        v[~valid] = float("nan")
        return v

    def labelled(hook: str, stream: Any) -> Labelled:
        v = unfold(res.scores[hook].values)
        return Labelled(
            v,
            ("item", "generated", "pos"),
            {"pos": batch.position_labels(stream, 0)},
            f"{method}: {kind} of each next token, attributed to {stream} tokens",
        )

    def per_gen(t: Tensor | None) -> Tensor | None:
        if t is None:
            return None
        v = t.reshape(n_gen, b).t().clone()
        v[~valid] = float("nan")
        return v

    scores = per_gen(res.target)
    assert scores is not None
    return SequenceAttribution(
        labelled(hooks[0], src_stream), labelled(hooks[1], tgt_stream), scores, per_gen(res.delta), batch, method
    )
