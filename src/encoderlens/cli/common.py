"""Helpers shared by the ``encoderlens`` subcommands: loading, error reporting, default inputs.

``MODEL`` is a hub name, a local checkpoint folder, or ``default`` (the embedded all-MiniLM-L6-v2, offline).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from encoderlens.analysis.families import AUDIO, ENCODER

#: Help text of the ``MODEL`` positional argument.
MODEL_HELP = "hub name, local checkpoint folder, or 'default' (embedded all-MiniLM-L6-v2, offline)"


def err(msg: str) -> None:
    """Print a message to stderr."""
    print(msg, file=sys.stderr)


def guard(name: str, fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn failures main() does not catch into a one-line message and exit code 1."""

    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except FileNotFoundError:
            raise  # main() reports it as a bad argument (exit code 2)
        except (NotImplementedError, RuntimeError, OSError, ImportError, KeyError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else e
            err(f"encoderlens {name}: error: {msg}")
            return 1

    return run


def load_model(name: str) -> Any:
    """Load ``name`` with :func:`encoderlens.from_pretrained`, saying so on stderr."""
    import encoderlens

    err(f"loading {name} ...")
    return encoderlens.from_pretrained(name)


def checkpoint_folder(name: str) -> Path | None:
    """The local folder ``name`` resolves to, or None (a hub name not downloaded)."""
    from encoderlens.io.checkpoint import resolve_path

    try:
        return resolve_path(name)
    except ValueError:
        return None


def sentence_encoder(model: Any, name: str) -> Any:
    """A SentenceEncoder when the model or its folder declares sentence-transformers pooling, else None."""
    from encoderlens.analysis.similarity import SentenceEncoder

    folder = checkpoint_folder(name)
    declared = folder is not None and (folder / "modules.json").exists()
    if getattr(model.cfg, "sentence_pooling", None) is None and not declared:
        return None
    return SentenceEncoder.from_model(model, folder)


def dummy_input(model: Any) -> tuple[Any, dict[str, Any], str]:
    """A small input the model accepts, its forward keyword arguments, and a description."""
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


def input_for(model: Any, inputs: Sequence[str], decoder_input: str | None) -> tuple[Any, dict[str, Any]]:
    """The model input (and keyword arguments) for the command-line ``inputs`` and ``--decoder-input``."""
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
