"""``encoderlens predict MODEL INPUT...``: what the model's readout head says about each input.

The task follows the model's :meth:`~encoderlens.models.base.HookedModel.readout` (no family switch):
``mlm`` fills each mask, ``ctc`` transcribes (greedy), ``lm`` generates (greedy, from the decoder prefix
an empty target gives), ``classifier`` labels each position, ``qa`` prints the best answer span; a model
without a readout prints sentence embeddings when its checkpoint declares a sentence-transformers pooling.
"""

from __future__ import annotations

import argparse

import torch

from encoderlens.cli.common import (
    MODEL_HELP,
    add_device,
    add_parser,
    best_spans,
    load_model,
    sentence_encoder,
)
from encoderlens.io.text import TextBatch
from encoderlens.models.base import HookedModel
from encoderlens.models.contract import Readout
from encoderlens.models.mask_fill import mask_predictions


def _needs_tokenizer(model: HookedModel, what: str) -> None:
    if model.tokenizer is None:
        raise ValueError(
            f"{what} needs the checkpoint's tokenizer, and this {model.architecture} was loaded without one"
        )


def _fill_mask(model: HookedModel, readout: Readout, text: str, top_k: int) -> None:
    _needs_tokenizer(model, "fill-mask")
    tok = model.tokenizer
    if tok.mask_token and tok.mask_token not in text:
        raise ValueError(
            f"fill-mask needs {tok.mask_token} in the text, got {text!r}; e.g. 'Paris is the capital of {tok.mask_token}.'"
        )
    p = model.prepare_input(text)
    stream = model.resolve_stream(None)
    with torch.no_grad():
        logits = model.run_prepared(p, readout.return_type)
    batch = TextBatch(p.token_ids[stream], p.mask(stream), None)
    print(text)
    for pred in mask_predictions(tok, batch, logits, top_k)[0]:
        cands = ", ".join(f"{w} ({q:.3f})" for w, q in zip(pred.tokens, pred.probs))
        print(f"  position {pred.position}: {cands}")
        print(f"  -> {pred.sequence}")


def _transcribe(model: HookedModel, readout: Readout, path: str) -> None:
    """Greedy CTC: argmax per real frame, merge repeats, drop blanks, decode."""
    _needs_tokenizer(model, "a transcript")
    p = model.prepare_input(path)
    stream = model.resolve_stream(None)
    with torch.no_grad():
        ids = model.run_prepared(p, readout.return_type).argmax(-1)[0][p.mask(stream)[0].bool()].tolist()
    blank = readout.blank_id if readout.blank_id is not None else 0
    kept = [i for k, i in enumerate(ids) if i != blank and (k == 0 or i != ids[k - 1])]
    try:
        text = model.tokenizer.decode(kept, group_tokens=False)
    except TypeError:  # tokenizers without CTC grouping options
        text = model.tokenizer.decode(kept)
    print(f"{path}: {text}")


def _generate(model: HookedModel, readout: Readout, text: str, max_new_tokens: int) -> None:
    """Greedy decoding through the contract: the prefix of an empty target, then the argmax token, to EOS."""
    _needs_tokenizer(model, "generation")
    tok = model.tokenizer
    stream = model.resolve_stream(None)
    ids = model.prepare_input(text, decoder_input="").token_ids[stream]
    start = ids.shape[1]
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model.run_prepared(model.prepare_input(text, decoder_input=ids), readout.return_type)
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
        if tok.eos_token_id is not None and int(nxt) == tok.eos_token_id:
            break
    print(f"{text}\n  -> {tok.decode(ids[0, start:].tolist(), skip_special_tokens=True)}")


def _label(model: HookedModel, readout: Readout, text: str) -> None:
    p = model.prepare_input(text)
    stream = model.resolve_stream(None)
    with torch.no_grad():
        best = model.run_prepared(p, readout.return_type).argmax(-1)[0]
    names = readout.output_labels
    labels = p.position_labels(stream)
    print(text)
    for pos, lab in enumerate(labels):
        if int(p.mask(stream)[0, pos]):
            k = int(best[pos])
            print(f"  {lab}: {names[k] if names is not None and k < len(names) else k}")


def _answer_span(model: HookedModel, readout: Readout, text: str) -> None:
    """The span ``i..j`` (``i <= j < i + MAX_ANSWER_TOKENS``, real positions) maximising ``start[i] + end[j]``."""
    p = model.prepare_input(text)
    stream = model.resolve_stream(None)
    with torch.no_grad():
        qa = model.run_prepared(p, readout.return_type)[0].float()
    start, end = best_spans(qa[None], p.mask(stream)[:1])[0].tolist()
    labels = p.position_labels(stream)
    print(text)
    print(f"  answer span {start}..{end}: {' '.join(labels[start : end + 1])}")
    print(f"  start logit {float(qa[start, 0]):+.3f}, end logit {float(qa[end, 1]):+.3f}")


def _embed(model: HookedModel, name: str, texts: list[str]) -> None:
    enc = sentence_encoder(model, name)
    if enc is None:
        raise ValueError(
            f"{name} has no output head and declares no sentence-embedding pooling, so there is nothing to "
            "predict; use `encoderlens cache` for its hidden states"
        )
    emb = enc.embed(texts)
    p = enc.pooling
    print(
        f"sentence embeddings ({'+'.join(p.modes)} pooling{', normalized' if p.normalize else ''}), dim {emb.shape[1]}:"
    )
    for t, e in zip(texts, emb):
        head = " ".join(f"{v:+.3f}" for v in e[:6].tolist())
        print(f"  [{head} ...] |e|={float(e.norm()):.3f}  {t}")
    if len(texts) > 1:
        sims = torch.nn.functional.cosine_similarity(emb[:, None], emb[None], dim=-1)
        print("cosine similarity:")
        for i, row in enumerate(sims.tolist()):
            print(f"  {i}: " + " ".join(f"{v:+.3f}" for v in row))


def _predict_cmd(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        raise ValueError(f"--top-k must be a positive number, got {args.top_k}")
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be a positive number, got {args.max_new_tokens}")
    model = load_model(args.model, args.device)
    readout = model.readout()
    if readout is None:
        _embed(model, args.model, list(args.input))
        return 0
    for item in args.input:
        if readout.kind == "mlm":
            _fill_mask(model, readout, item, args.top_k)
        elif readout.kind == "ctc":
            _transcribe(model, readout, item)
        elif readout.kind == "lm":
            _generate(model, readout, item, args.max_new_tokens)
        elif readout.kind == "qa":
            _answer_span(model, readout, item)
        else:
            _label(model, readout, item)
    return 0


def setup(sub: argparse._SubParsersAction) -> None:
    """Add ``predict`` to the ``encoderlens`` parser."""
    p = add_parser(
        sub,
        "predict",
        "fill-mask / CTC transcript / seq2seq output / labels / sentence embeddings, from the model's head",
        "encoderlens predict bert-base-uncased 'Paris is the capital of [MASK].' --top-k 3",
    )
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("input", nargs="+", help="input text(s) (audio file paths for speech models)")
    p.add_argument("--top-k", type=int, default=5, help="fill-mask: candidates per mask")
    p.add_argument("--max-new-tokens", type=int, default=32, help="encoder-decoders: most tokens to generate")
    add_device(p)
    p.set_defaults(func=_predict_cmd)
