"""``encoderlens patch MODEL --clean X --corrupt Y``: activation patching for a clean/corrupted pair.

The metric follows the model's :meth:`~encoderlens.models.base.HookedModel.readout` (no family switch):
``mlm``: the logit difference at the mask; ``lm``: the mean log-probability of the target (teacher
forcing); ``ctc`` / ``classifier``: the mean log-probability of the clean run's predictions at real
positions; ``qa``: the log-probability (over real positions) of the clean run's best start plus its best
end; no readout: the sentence embedding's similarity to the clean run (or ``--reference``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from encoderlens.cli.common import (
    MODEL_HELP,
    add_device,
    add_parser,
    best_spans,
    err,
    load_model,
    mean_pooling_encoder,
    sentence_encoder,
)
from encoderlens.models.base import HookedModel
from encoderlens.models.contract import Prepared, Readout

Metric = Callable[[torch.Tensor], torch.Tensor]


def _token_id(tokenizer: Any, word: str, flag: str) -> int:
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"{flag} {word!r} is {len(ids)} tokens for this tokenizer; pass a single-token word")
    return int(ids[0])


def _mlm_metric(
    model: HookedModel, readout: Readout, args: argparse.Namespace, clean: Prepared, corrupt: Prepared
) -> tuple[Metric, str]:
    """Logit difference at the clean text's mask."""
    from encoderlens.analysis import patching as P

    tok = model.tokenizer
    if tok is None or tok.mask_token is None:
        raise ValueError("an MLM metric needs the checkpoint's tokenizer with a mask token")
    if tok.mask_token not in args.clean:
        raise ValueError(f"with an MLM model the clean text needs a {tok.mask_token} whose prediction is measured")
    stream = model.resolve_stream(None)
    pos = int(clean.token_ids[stream][0].eq(tok.mask_token_id).nonzero()[0, 0])
    with torch.no_grad():
        lc = model.run_prepared(clean, readout.return_type)[0, pos]
        lk = model.run_prepared(corrupt, readout.return_type)[0, pos]
    good = _token_id(tok, args.answer, "--answer") if args.answer else int(lc.argmax())
    bad = _token_id(tok, args.wrong, "--wrong") if args.wrong else int(lk.argmax())
    if good == bad:
        raise ValueError(
            f"clean and corrupted runs both predict {tok.convert_ids_to_tokens(good)!r} at the mask; "
            "pass --answer and --wrong"
        )
    what = f"logit({tok.convert_ids_to_tokens(good)}) - logit({tok.convert_ids_to_tokens(bad)}) at position {pos}"
    return P.logit_diff(pos, good, bad), what


def _lm_metric(model: HookedModel, args: argparse.Namespace, clean: Prepared) -> tuple[Metric, str]:
    """Mean log-probability of the target under teacher forcing (decoder position t predicts target t)."""
    if model.tokenizer is None:
        raise ValueError("an LM metric needs the checkpoint's tokenizer")
    stream = model.resolve_stream(None)
    dec = clean.token_ids[stream]
    labels = torch.as_tensor(model.tokenizer([args.decoder_input])["input_ids"], device=dec.device)
    if labels.shape != dec.shape:
        raise ValueError("--decoder-input must be target text (it is tokenized, then shifted right)")
    real = clean.mask(stream).bool()

    def metric(logits: torch.Tensor) -> torch.Tensor:
        lp = logits.log_softmax(-1).gather(-1, labels[..., None].expand(logits.shape[0], -1, 1))[..., 0]
        return lp[real.expand_as(lp)].mean()

    return metric, f"mean log-probability of {args.decoder_input!r} (teacher forcing)"


def _agreement_metric(model: HookedModel, readout: Readout, clean: Prepared) -> tuple[Metric, str]:
    """Mean log-probability of the clean run's per-position predictions, at real positions."""
    with torch.no_grad():
        labels = model.run_prepared(clean, readout.return_type).argmax(-1)
    real = clean.mask(model.resolve_stream(None)).bool()

    def metric(logits: torch.Tensor) -> torch.Tensor:
        lp = logits.log_softmax(-1).gather(-1, labels[..., None])[..., 0]
        return lp[real].mean()

    return metric, f"mean log-probability of the clean run's {readout.kind} predictions (real positions)"


def _span_metric(model: HookedModel, readout: Readout, clean: Prepared) -> tuple[Metric, str]:
    """Log-probability of the clean run's answer span's start plus its end (softmax over real positions).

    The span is the one ``predict`` prints (:func:`~encoderlens.cli.common.best_spans`: start <= end, at most
    ``MAX_ANSWER_TOKENS`` long), not the best start and best end taken apart (those can cross).
    """
    real = clean.mask(model.resolve_stream(None)).bool()
    with torch.no_grad():
        best = best_spans(model.run_prepared(clean, readout.return_type), real)  # (batch, 2): start, end
    rows = torch.arange(best.shape[0])

    def metric(logits: torch.Tensor) -> torch.Tensor:
        lp = logits.float().masked_fill(~real[..., None].to(logits.device), float("-inf")).log_softmax(1)
        r, b = rows.to(lp.device), best.to(lp.device)
        return (lp[r, b[:, 0], 0] + lp[r, b[:, 1], 1]).mean()

    return metric, "log p(clean start) + log p(clean end) of the clean answer span (softmax over positions)"


def _similarity_metric(model: HookedModel, args: argparse.Namespace, clean: Prepared) -> tuple[Metric, str]:
    """Cosine similarity of the sentence embedding to the clean run's (or ``--reference``'s)."""
    enc = sentence_encoder(model, args.model)
    if enc is None:
        enc = mean_pooling_encoder(model)
        err("no sentence-transformers pooling declared; using mean pooling")
    ref = enc.embed(args.reference if args.reference else args.clean)
    per_item = enc.reference_metric(clean, ref)
    what = f"cosine similarity of the sentence embedding to {'the reference' if args.reference else 'the clean run'}"
    return (lambda out: per_item(out).mean()), what


def _check_flags(model: HookedModel, readout: Readout | None, args: argparse.Namespace) -> None:
    kind = readout.kind if readout is not None else None
    if (args.answer or args.wrong) and kind != "mlm":
        raise ValueError(
            f"--answer/--wrong choose tokens of an MLM head, and this {model.architecture} has "
            f"{'no output head' if readout is None else f'a {kind} head'}; leave them out"
        )
    if args.reference and readout is not None:
        raise ValueError("--reference is for sentence-embedding models (no output head); leave it out")
    if kind == "lm" and args.decoder_input is None:
        raise ValueError(
            "this model generates text: pass --decoder-input TEXT, the target whose probability is measured"
        )


def _patch_cmd(args: argparse.Namespace) -> int:
    from encoderlens.analysis import patching as P

    model = load_model(args.model, args.device)
    readout = model.readout()
    _check_flags(model, readout, args)
    stream = model.resolve_stream(args.stream) if args.stream is not None else model.streams[0]
    if args.target == "cross" and not model.stream_spec(model.resolve_stream(None)).has_cross_attention:
        raise ValueError(f"--target cross patches cross-attention heads, and this {model.architecture} has none")
    kw: dict[str, Any] = {} if args.decoder_input is None else {"decoder_input": args.decoder_input}
    try:
        clean = model.prepare_input(args.clean, **kw)
        corrupt = model.prepare_input(args.corrupt, **kw)
    except TypeError as e:
        if kw and "decoder_input" in str(e):
            raise ValueError(
                f"--decoder-input is for models with a decoder; this {model.architecture} has none"
            ) from None
        raise
    P.check_compatible(clean, corrupt)
    if readout is None:
        metric, what = _similarity_metric(model, args, clean)
        rt = None
    elif readout.kind == "mlm":
        metric, what = _mlm_metric(model, readout, args, clean, corrupt)
        rt = readout.return_type
    elif readout.kind == "lm":
        metric, what = _lm_metric(model, args, clean)
        rt = readout.return_type
    elif readout.kind == "qa":
        metric, what = _span_metric(model, readout, clean)
        rt = readout.return_type
    else:
        metric, what = _agreement_metric(model, readout, clean)
        rt = readout.return_type
    common: dict[str, Any] = dict(normalize=not args.no_normalize, return_type=rt, progress=not args.no_progress)
    if args.target == "resid":
        res = P.patch_residual(model, clean, corrupt, metric, hook="resid_pre", stream=stream, **common)
    elif args.target == "heads":
        res = P.patch_heads(model, clean, corrupt, metric, stream=stream, **common)
    elif args.target == "cross":
        res = P.patch_heads(
            model, clean, corrupt, metric, attn="cross_attn", stream=model.resolve_stream(None), **common
        )
    else:
        res = P.patch_residual(model, clean, corrupt, metric, hook=f"{args.target}_out", stream=stream, **common)
    print(f"metric: {what}")
    print(f"clean {res.meta['metric_clean']:+.4f}, corrupted {res.meta['metric_corrupt']:+.4f}")
    print(res.to_text())
    print("\nlargest effects: " + ", ".join(f"{' '.join(c.values())} {v:+.3f}" for c, v in res.top(5, absolute=True)))
    if args.html:
        res.to_html(args.html)
        print(f"wrote {args.html}")
    if args.json:
        Path(args.json).write_text(json.dumps(res.to_dict(), indent=1))
        print(f"wrote {args.json}")
    return 0


def setup(sub: argparse._SubParsersAction) -> None:
    """Add ``patch`` to the ``encoderlens`` parser."""
    p = add_parser(
        sub,
        "patch",
        "activation patching for a clean/corrupted pair",
        "encoderlens patch default --clean 'The cat sat on the mat.' --corrupt 'The dog sat on the mat.' --target mlp",
    )
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--clean", required=True, help="clean text (with [MASK] for MLM models), or audio file")
    p.add_argument("--corrupt", required=True, help="corrupted text with as many tokens (or audio of equal length)")
    p.add_argument(
        "--target",
        choices=("resid", "attn", "mlp", "heads", "cross"),
        default="resid",
        help="what to patch: residual by layer x position, attention / MLP outputs by position, heads, "
        "or cross-attention heads (encoder-decoders)",
    )
    p.add_argument("--decoder-input", default=None, help="encoder-decoders: target text whose probability is measured")
    p.add_argument("--stream", default=None, help="models with several streams: the one patched; default: the first")
    p.add_argument("--answer", default=None, help="MLM: token whose logit is measured; default: the clean top-1")
    p.add_argument("--wrong", default=None, help="MLM: token subtracted; default: the corrupted top-1")
    p.add_argument("--reference", default=None, help="embedding models: measure similarity to this text")
    p.add_argument("--no-normalize", action="store_true", help="report raw metric values")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--html", default=None, help="also write the result as an HTML heatmap")
    p.add_argument("--json", default=None, help="also write the result as JSON")
    add_device(p)
    p.set_defaults(func=_patch_cmd)
