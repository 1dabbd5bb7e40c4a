"""``encoderlens predict MODEL TEXT...``: fill-mask, sentence embeddings, CTC transcript or seq2seq output."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from encoderlens.analysis.families import AUDIO, ENCODER
from encoderlens.cli.common import MODEL_HELP, guard, load_model, sentence_encoder


def _predict_cmd(args: argparse.Namespace) -> int:
    model = load_model(args.model)
    fam = model.family
    if fam == ENCODER:
        if model.mlm_head is not None:
            tok = model.tokenizer
            for text in args.text:
                if tok is not None and tok.mask_token and tok.mask_token not in text:
                    raise ValueError(
                        f"fill-mask needs {tok.mask_token} in the text, got {text!r}; e.g. "
                        f"'Paris is the capital of {tok.mask_token}.'"
                    )
                with torch.no_grad():
                    preds = model(text, return_type="predictions", top_k=args.top_k)
                print(text)
                for pred in preds:
                    cands = ", ".join(f"{w} ({p:.3f})" for w, p in zip(pred.tokens, pred.probs))
                    print(f"  position {pred.position}: {cands}")
                    print(f"  -> {pred.sequence}")
            return 0
        enc = sentence_encoder(model, args.model)
        if enc is None:
            raise ValueError(
                f"{args.model} has no MLM head and declares no sentence-embedding pooling, so there is nothing to "
                "predict; use `encoderlens cache` for its hidden states"
            )
        emb = enc.embed(args.text)
        p = enc.pooling
        print(
            f"sentence embeddings ({'+'.join(p.modes)} pooling{', normalized' if p.normalize else ''}), dim {emb.shape[1]}:"
        )
        for t, e in zip(args.text, emb):
            head = " ".join(f"{v:+.3f}" for v in e[:6].tolist())
            print(f"  [{head} ...] |e|={float(e.norm()):.3f}  {t}")
        if len(args.text) > 1:
            sims = torch.nn.functional.cosine_similarity(emb[:, None], emb[None], dim=-1)
            print("cosine similarity:")
            for i, row in enumerate(sims.tolist()):
                print(f"  {i}: " + " ".join(f"{v:+.3f}" for v in row))
        return 0
    if fam == AUDIO:
        transcribe = getattr(model, "transcribe", None)
        if not callable(transcribe):
            raise NotImplementedError(f"{type(model).__name__} has no transcribe(); predict needs a CTC checkpoint")
        for path in args.text:
            if not Path(path).exists():
                raise FileNotFoundError(f"no such audio file: {path}")
            with torch.no_grad():
                out = transcribe(path)
            print(f"{path}: {out if isinstance(out, str) else out[0]}")
        return 0
    generate = getattr(model, "generate", None)
    if not callable(generate):
        raise NotImplementedError(f"{type(model).__name__} has no generate()")
    for text in args.text:
        with torch.no_grad():
            out = generate(text, max_new_tokens=args.max_new_tokens)
        if isinstance(out, torch.Tensor):
            out = model.to_string(out[0] if out.ndim == 2 else out)
        if isinstance(out, list):
            out = out[0]
        print(f"{text}\n  -> {out}")
    return 0


def setup(sub: argparse._SubParsersAction) -> None:
    """Add ``predict`` to the ``encoderlens`` parser."""
    p = sub.add_parser("predict", help="fill-mask / sentence embeddings / CTC transcript / seq2seq output")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("text", nargs="+", help="input text(s) (audio file paths for speech models)")
    p.add_argument("--top-k", type=int, default=5, help="candidates per [MASK]")
    p.add_argument("--max-new-tokens", type=int, default=32, help="encoder-decoders: tokens to generate")
    p.set_defaults(func=guard("predict", _predict_cmd))
