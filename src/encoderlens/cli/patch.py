"""``encoderlens patch MODEL --clean X --corrupt Y``: activation patching for a clean/corrupted pair."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from encoderlens.analysis.families import AUDIO, ENCODER, SEQ2SEQ
from encoderlens.cli.common import MODEL_HELP, err, guard, load_model, sentence_encoder


def _token_id(tokenizer: Any, word: str) -> int:
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"{word!r} is {len(ids)} tokens for this tokenizer; pass a single-token word")
    return int(ids[0])


def _text_metric(model: Any, args: argparse.Namespace, clean: Any) -> tuple[Any, str, str]:
    """Metric for text encoders: MLM logit difference at the mask, or sentence-embedding similarity."""
    from encoderlens.analysis import patching as P

    tok = model.tokenizer
    if model.mlm_head is not None:
        if tok.mask_token not in args.clean:
            raise ValueError(f"with an MLM model the clean text needs a {tok.mask_token} whose prediction is measured")
        pos = int(clean.token_ids[None][0].eq(tok.mask_token_id).nonzero()[0, 0])
        with torch.no_grad():
            lc = model(args.clean)[0, pos]
            lk = model(args.corrupt)[0, pos]
        good = _token_id(tok, args.answer) if args.answer else int(lc.argmax())
        bad = _token_id(tok, args.wrong) if args.wrong else int(lk.argmax())
        if good == bad:
            raise ValueError(
                f"clean and corrupted runs both predict {tok.convert_ids_to_tokens(good)!r} at the mask; "
                "pass --answer and --wrong"
            )
        what = f"logit({tok.convert_ids_to_tokens(good)}) - logit({tok.convert_ids_to_tokens(bad)}) at position {pos}"
        return P.logit_diff(pos, good, bad), what, "logits"
    enc = sentence_encoder(model, args.model)
    if enc is None:
        from encoderlens.analysis.similarity import Pooling, SentenceEncoder

        enc = SentenceEncoder(model, Pooling(("mean",), normalize=True))
        err("no sentence-transformers pooling declared; using mean pooling")
    ref = enc.embed(args.reference if args.reference else args.clean)
    per_item = enc.reference_metric(clean, ref)
    what = f"cosine similarity of the sentence embedding to {'the reference' if args.reference else 'the clean run'}"
    return (lambda out: per_item(out).mean()), what, "embeddings"


def _seq2seq_metric(model: Any, args: argparse.Namespace, clean: Any) -> tuple[Any, str, str]:
    """Metric for encoder-decoders: mean log-probability of the target under teacher forcing."""
    if getattr(model, "lm_head", None) is None:
        raise ValueError("`patch` on an encoder-decoder needs an LM head (a *ForConditionalGeneration checkpoint)")
    tok = model.tokenizer
    dec = clean.kwargs["decoder_input"]
    # decoder_input_from_targets shifts the targets right: position t predicts target token t
    labels = torch.as_tensor(tok([args.decoder_input])["input_ids"], device=dec.tokens.device)
    if labels.shape != dec.tokens.shape:
        raise ValueError("--decoder-input must be target text (it is tokenized, then shifted right)")
    real = dec.attention_mask.bool()

    def metric(logits: torch.Tensor) -> torch.Tensor:
        lp = logits.log_softmax(-1).gather(-1, labels[..., None].expand(logits.shape[0], -1, 1))[..., 0]
        return lp[real.expand_as(lp)].mean()

    return metric, f"mean log-probability of {args.decoder_input!r} (teacher forcing)", "logits"


def _audio_metric(model: Any, clean: Any) -> tuple[Any, str, str]:
    """Metric for speech encoders with a CTC head: agreement with the clean run's frame predictions."""
    from encoderlens.analysis.families import run

    if getattr(model, "ctc_head", None) is None:
        raise ValueError("`patch` on a speech encoder needs a CTC head (a *ForCTC checkpoint)")
    with torch.no_grad():
        labels = run(model, clean, "logits").argmax(-1)
    real = clean.mask(None).bool()

    def metric(logits: torch.Tensor) -> torch.Tensor:
        lp = logits.log_softmax(-1).gather(-1, labels[..., None])[..., 0]
        return lp[real].mean()

    return metric, "mean log-probability of the clean run's frame predictions (CTC, real frames)", "logits"


def _patch_cmd(args: argparse.Namespace) -> int:
    from encoderlens.analysis import patching as P
    from encoderlens.analysis.families import prepare

    model = load_model(args.model)
    fam = model.family
    kw: dict[str, Any] = {}
    if fam == SEQ2SEQ:
        if args.decoder_input is None:
            raise ValueError("encoder-decoders need --decoder-input TEXT: the target whose probability is measured")
        kw["decoder_input"] = args.decoder_input
    elif args.decoder_input is not None:
        raise ValueError("--decoder-input is for encoder-decoders only")
    if args.target == "cross" and fam != SEQ2SEQ:
        raise ValueError("--target cross (cross-attention heads) needs an encoder-decoder")
    if fam != AUDIO and getattr(model, "tokenizer", None) is None:
        raise ValueError("this checkpoint has no tokenizer; `patch` takes text")
    if fam == AUDIO:
        for path in (args.clean, args.corrupt):
            if not Path(path).exists():
                raise FileNotFoundError(f"no such audio file: {path} (speech models take audio file paths)")
    clean = prepare(model, args.clean, **kw)
    corrupt = prepare(model, args.corrupt, **kw)
    P.check_compatible(clean, corrupt)
    if fam == ENCODER:
        metric, what, rt = _text_metric(model, args, clean)
    elif fam == SEQ2SEQ:
        metric, what, rt = _seq2seq_metric(model, args, clean)
    else:
        metric, what, rt = _audio_metric(model, clean)
    stream = None if fam != SEQ2SEQ else args.stream
    common: dict[str, Any] = dict(
        normalize=not args.no_normalize, return_type=rt, progress=not args.no_progress, stream=stream
    )
    if args.target == "resid":
        res = P.patch_residual(model, clean, corrupt, metric, hook="resid_pre", **common)
    elif args.target == "heads":
        res = P.patch_heads(model, clean, corrupt, metric, **common)
    elif args.target == "cross":
        common["stream"] = "decoder"
        res = P.patch_heads(model, clean, corrupt, metric, attn="cross_attn", **common)
    else:
        res = P.patch_residual(model, clean, corrupt, metric, hook=f"{args.target}_out", **common)
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
    p = sub.add_parser("patch", help="activation patching for a clean/corrupted pair")
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
    p.add_argument("--stream", choices=("encoder", "decoder"), default="encoder", help="encoder-decoders: stream")
    p.add_argument("--answer", default=None, help="MLM: token whose logit is measured (default: clean top-1)")
    p.add_argument("--wrong", default=None, help="MLM: token subtracted (default: corrupted top-1)")
    p.add_argument("--reference", default=None, help="embedding models: measure similarity to this text")
    p.add_argument("--no-normalize", action="store_true", help="report raw metric values")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--html", default=None, help="also write the result as an HTML heatmap")
    p.add_argument("--json", default=None, help="also write the result as JSON")
    p.set_defaults(func=guard("patch", _patch_cmd))
