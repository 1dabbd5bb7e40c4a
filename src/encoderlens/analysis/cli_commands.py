"""Command-line subcommands of the analysis toolkit: ``inspect``, ``predict``, ``cache``, ``attention``, ``patch``.

Importing this module appends their setup functions to :data:`encoderlens.cli.SUBCOMMANDS`
(``encoderlens.cli.main`` imports it). ``MODEL`` is a hub name, a local checkpoint folder, or ``default``
(the embedded all-MiniLM-L6-v2, offline).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

import encoderlens.cli as _cli
from encoderlens.analysis.families import AUDIO, ENCODER, SEQ2SEQ


def _err(msg: str) -> None:
    print(msg, file=sys.stderr)


def _guard(name: str, fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn failures main() does not catch into a one-line message and exit code 1."""

    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except FileNotFoundError:
            raise  # main() reports it as a bad argument (exit code 2)
        except (NotImplementedError, RuntimeError, OSError, ImportError, KeyError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else e
            _err(f"encoderlens {name}: error: {msg}")
            return 1

    return run


def _load(name: str) -> Any:
    import encoderlens

    _err(f"loading {name} ...")
    return encoderlens.from_pretrained(name)


def _folder(name: str) -> Path | None:
    from encoderlens.io.checkpoint import resolve_path

    try:
        return resolve_path(name)
    except ValueError:
        return None


def _sentence_encoder(model: Any, name: str) -> Any:
    """A SentenceEncoder when the model or its folder declares sentence-transformers pooling, else None."""
    from encoderlens.analysis.similarity import SentenceEncoder

    folder = _folder(name)
    declared = folder is not None and (folder / "modules.json").exists()
    if getattr(model.cfg, "sentence_pooling", None) is None and not declared:
        return None
    return SentenceEncoder.from_model(model, folder)


def _dummy_input(model: Any) -> tuple[Any, dict[str, Any], str]:
    fam = model.family
    if fam == ENCODER:
        if model.tokenizer is not None:
            return "Hello world", {}, "the text 'Hello world'"
        return torch.tensor([[1, 2, 3, 4]]) % model.cfg.d_vocab, {}, "4 token ids"
    if fam == AUDIO:
        rate = int(getattr(model, "sampling_rate", None) or getattr(model.cfg, "sampling_rate", 16000) or 16000)
        g = torch.Generator().manual_seed(0)
        return torch.randn(1, rate, generator=g) * 0.1, {}, f"1 s of noise at {rate} Hz"
    start = getattr(model.cfg, "decoder_start_token_id", None)
    start = 0 if start is None else int(start)
    return "Hello world", {"decoder_input": torch.tensor([[start, start]])}, "'Hello world' -> 2 decoder tokens"


# ---------------------------------------------------------------------- inspect
def _describe(model: Any) -> list[tuple[str, str]]:
    cfg = model.cfg
    rows = [("family", model.family), ("architecture", str(getattr(cfg, "architecture", "?")))]
    rows.append(("model_type", str(getattr(cfg, "model_type", "?"))))
    for attr in ("n_layers", "n_heads", "d_model", "d_head", "d_vocab"):
        if hasattr(cfg, attr):
            rows.append((attr, str(getattr(cfg, attr))))
    stack = getattr(cfg, "stack", None)
    if stack is not None:
        rows.append(("d_mlp", str(stack.mlp.d_mlp)))
        rows.append(("activation", stack.mlp.act_fn + (" (gated)" if stack.mlp.gated else "")))
        rows.append(("norm", f"{stack.norm.kind}, {stack.norm_position}-LN"))
    heads = [
        h for h in ("mlm_head", "pooler", "nsp_head", "ctc_head", "lm_head") if getattr(model, h, None) is not None
    ]
    rows.append(("heads", ", ".join(heads) if heads else "none (bare encoder)"))
    n_params = sum(p.numel() for p in model.parameters())
    rows.append(("parameters", f"{n_params:,}"))
    rows.append(
        ("tokenizer", type(model.tokenizer).__name__ if getattr(model, "tokenizer", None) is not None else "none")
    )
    rows.append(("hook points", str(len(model.hook_names()))))
    return rows


def _inspect_cmd(args: argparse.Namespace) -> int:
    from encoderlens.analysis.families import prepare, run_with_cache

    model = _load(args.model)
    info = _describe(model)
    enc = _sentence_encoder(model, args.model) if model.family == ENCODER else None
    if enc is not None:
        p = enc.pooling
        info.append(
            (
                "sentence pooling",
                f"{'+'.join(p.modes)}{', normalized' if p.normalize else ''}{f', {len(p.dense)} dense' if p.dense else ''}",
            )
        )
    inp, kw, desc = _dummy_input(model)
    prepared = prepare(model, inp, **kw)
    pattern = args.hooks or "*"
    with torch.no_grad():
        _, cache = run_with_cache(model, prepared, names_filter=None, return_type=None)
    names = [n for n in model.hook_names() if fnmatch.fnmatchcase(n, pattern)]
    if not names:
        raise ValueError(f"--hooks {pattern!r} matches no hook point; try e.g. 'blocks.0.*'")
    table = [(n, tuple(cache[n].shape) if n in cache else None) for n in names]
    if args.json:
        print(
            json.dumps(
                {
                    "model": args.model,
                    "info": dict(info),
                    "dummy_input": desc,
                    "hooks": [{"name": n, "shape": list(s) if s is not None else None} for n, s in table],
                },
                indent=2,
            )
        )
        return 0
    width = max(len(k) for k, _ in info)
    print(f"{args.model}")
    for k, v in info:
        print(f"  {k:<{width}}  {v}")
    print(f"\nhook points (shapes from a dummy run on {desc}; batch first):")
    nw = max(len(n) for n, _ in table)
    for n, s in table:
        print(f"  {n:<{nw}}  {'(not reached)' if s is None else s}")
    return 0


# ---------------------------------------------------------------------- predict
def _predict_cmd(args: argparse.Namespace) -> int:
    model = _load(args.model)
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
        enc = _sentence_encoder(model, args.model)
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


# ---------------------------------------------------------------------- cache
def _input_for(model: Any, inputs: Sequence[str], decoder_input: str | None) -> tuple[Any, dict[str, Any]]:
    if model.family == AUDIO:
        for p in inputs:
            if not Path(p).exists():
                raise FileNotFoundError(f"no such audio file: {p} (speech models take audio file paths)")
        return (inputs[0] if len(inputs) == 1 else list(inputs)), {}
    kw: dict[str, Any] = {}
    if model.family == "encoder_decoder":
        if decoder_input is None:
            raise ValueError("encoder-decoders need --decoder-input TEXT (the target side to run the decoder on)")
        kw["decoder_input"] = [decoder_input] * len(inputs) if len(inputs) > 1 else decoder_input
    return (inputs[0] if len(inputs) == 1 else list(inputs)), kw


def _cache_cmd(args: argparse.Namespace) -> int:
    from safetensors.torch import save_file

    from encoderlens.analysis.families import prepare, run_with_cache

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out must end in .safetensors, got {out.name!r}")
    if not out.parent.exists():
        raise FileNotFoundError(f"output folder {out.parent} does not exist")
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[args.dtype]
    model = _load(args.model)
    patterns = [p.strip() for arg in args.hooks for p in arg.split(",") if p.strip()]
    names: list[str] = []
    for pat in patterns:
        hits = [n for n in model.hook_names() if fnmatch.fnmatchcase(n, pat)]
        if not hits:
            model.check_hook_name(pat)  # raises with close matches
        names += [n for n in hits if n not in names]
    inp, kw = _input_for(model, args.input, args.decoder_input)
    prepared = prepare(model, inp, **kw)
    wanted = set(names)
    with torch.no_grad():
        _, cache = run_with_cache(model, prepared, names_filter=lambda n: n in wanted, return_type=None)
    tensors = {n: cache[n].to(dtype).contiguous().cpu() for n in names if n in cache}
    for stream, mask in prepared.masks.items():
        if mask is not None:
            tensors[f"input.{stream + '.' if stream else ''}attention_mask"] = mask.contiguous().cpu()
    for stream, ids in prepared.token_ids.items():
        tensors[f"input.{stream + '.' if stream else ''}tokens"] = ids.contiguous().cpu()
    meta = {
        "model": args.model,
        "inputs": json.dumps(list(args.input)),
        "hooks": json.dumps(names),
        "dtype": args.dtype,
        "format": "encoderlens activation cache: hook name -> (batch, ...) tensor; input.* hold tokens and masks",
    }
    labels = prepared.labels.get(next(iter(prepared.labels), None))
    if labels is not None:
        meta["tokens"] = json.dumps(labels)
    save_file(tensors, str(out), metadata=meta)
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    print(f"wrote {len(names)} activations ({size / 2**20:.2f} MiB, {args.dtype}) to {out}")
    return 0


# ---------------------------------------------------------------------- attention
def _parse_layers(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--layers takes comma-separated layer indices like 0,3,5; got {text!r}") from None


def _attention_cmd(args: argparse.Namespace) -> int:
    from encoderlens.analysis.views import attention_html

    out = Path(args.html)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"--html must name an .html file, got {out.name!r}")
    if not out.parent.exists():
        raise FileNotFoundError(f"output folder {out.parent} does not exist")
    model = _load(args.model)
    inp, kw = _input_for(model, args.input, args.decoder_input)
    attention_html(model, inp, out, layers=_parse_layers(args.layers), **kw)
    print(f"wrote {out} (open it in a browser; works offline)")
    return 0


# ---------------------------------------------------------------------- patch
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
    enc = _sentence_encoder(model, args.model)
    if enc is None:
        from encoderlens.analysis.similarity import Pooling, SentenceEncoder

        enc = SentenceEncoder(model, Pooling(("mean",), normalize=True))
        _err("no sentence-transformers pooling declared; using mean pooling")
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

    model = _load(args.model)
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


# ---------------------------------------------------------------------- registration
def setup(sub: argparse._SubParsersAction) -> None:
    """Add the analysis subcommands to the ``encoderlens`` parser."""
    model_help = "hub name, local checkpoint folder, or 'default' (embedded all-MiniLM-L6-v2, offline)"

    p = sub.add_parser("inspect", help="architecture and hook table with shapes")
    p.add_argument("model", help=model_help)
    p.add_argument("--hooks", default=None, help="glob of hook names to list (default: all), e.g. 'blocks.0.*'")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_guard("inspect", _inspect_cmd))

    p = sub.add_parser("predict", help="fill-mask / sentence embeddings / CTC transcript / seq2seq output")
    p.add_argument("model", help=model_help)
    p.add_argument("text", nargs="+", help="input text(s) (audio file paths for speech models)")
    p.add_argument("--top-k", type=int, default=5, help="candidates per [MASK]")
    p.add_argument("--max-new-tokens", type=int, default=32, help="encoder-decoders: tokens to generate")
    p.set_defaults(func=_guard("predict", _predict_cmd))

    p = sub.add_parser("cache", help="save activations to a .safetensors file")
    p.add_argument("model", help=model_help)
    p.add_argument("input", nargs="+", help="input text(s) (audio file paths for speech models)")
    p.add_argument("--hooks", action="append", required=True, help="hook name glob(s), repeatable or comma-separated")
    p.add_argument("--out", required=True, help="output FILE.safetensors")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    p.add_argument("--decoder-input", default=None, help="encoder-decoders: target text for the decoder")
    p.set_defaults(func=_guard("cache", _cache_cmd))

    p = sub.add_parser("attention", help="write a self-contained HTML attention browser")
    p.add_argument("model", help=model_help)
    p.add_argument("input", nargs="+", help="input text(s) (each one an item), or audio file paths")
    p.add_argument("--html", required=True, help="output .html file")
    p.add_argument("--layers", default=None, help="comma-separated layers to include (default: all)")
    p.add_argument("--decoder-input", default=None, help="encoder-decoders: target text for the decoder")
    p.set_defaults(func=_guard("attention", _attention_cmd))

    p = sub.add_parser("patch", help="activation patching for a clean/corrupted pair")
    p.add_argument("model", help=model_help)
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
    p.set_defaults(func=_guard("patch", _patch_cmd))


if not any(getattr(f, "__module__", None) == __name__ for f in _cli.SUBCOMMANDS):
    _cli.SUBCOMMANDS.append(setup)
