"""Helpers shared by the ``encoderlens`` subcommands: arguments, loading, error reporting, inputs.

Every subcommand talks to the model through the model contract only
(:class:`~encoderlens.models.base.HookedModel`: ``prepare_input``, ``run_prepared``, ``readout``,
``streams``, ``example_input``). ``MODEL`` is a hub name, a local checkpoint folder, or ``default``
(the embedded all-MiniLM-L6-v2, offline).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from encoderlens.models.base import HookedModel
from encoderlens.models.contract import Prepared

if TYPE_CHECKING:
    from encoderlens.analysis.similarity import SentenceEncoder

#: Help text of the ``MODEL`` positional argument.
MODEL_HELP = "hub name, local checkpoint folder, or 'default' (embedded all-MiniLM-L6-v2, offline)"

#: The one spelling of dtypes on the command line (torch's names).
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Help with each option's default (where it has one: None and off flags are explained in the help)
    and examples kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if action.required or default in (None, False, argparse.SUPPRESS) or "%(default)" in text:
            return text
        return f"{text} (default: %(default)s)"


def add_parser(sub: argparse._SubParsersAction, name: str, help: str, example: str) -> argparse.ArgumentParser:
    """A subcommand parser with its help, an example, defaults in the help, and ``--debug``."""
    p: argparse.ArgumentParser = sub.add_parser(
        name, help=help, description=help, epilog=f"example:\n  {example}", formatter_class=Formatter
    )
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks of errors")
    return p


def add_device(p: argparse.ArgumentParser) -> None:
    """``--device`` (every command that runs a model)."""
    p.add_argument("--device", default=None, help="where to run the model: cpu, cuda, cuda:1...; default: cpu")


def err(msg: str) -> None:
    """Print a message to stderr."""
    print(msg, file=sys.stderr)


def guard(name: str, fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Kept for callers that wrap a command themselves: :func:`encoderlens.cli.main.main` reports errors."""
    return fn


def load_model(name: str, device: str | None = None) -> HookedModel:
    """Load ``name`` with :func:`encoderlens.from_pretrained`, saying so on stderr."""
    import encoderlens

    err(f"loading {name} ...")
    model = encoderlens.from_pretrained(name, device=device)
    if not isinstance(model, HookedModel):
        raise TypeError(f"{name} did not load as an encoderlens model (got {type(model).__name__})")
    return model


def checkpoint_folder(name: str) -> Path | None:
    """The local folder ``name`` resolves to, or None (a hub name not downloaded)."""
    from encoderlens.io.checkpoint import resolve_path

    try:
        return resolve_path(name)
    except ValueError:
        return None


def sentence_encoder(model: HookedModel, name: str) -> SentenceEncoder | None:
    """A SentenceEncoder when the checkpoint folder declares sentence-transformers modules, else None."""
    from encoderlens.analysis.similarity import SentenceEncoder

    folder = checkpoint_folder(name)
    if folder is None or not (folder / "modules.json").exists():
        return None
    return SentenceEncoder.from_model(cast(Any, model), folder)  # it checks the model is a text encoder


def mean_pooling_encoder(model: HookedModel) -> SentenceEncoder:
    """Mean pooling, normalised: the sentence embedding of a text encoder that declares none."""
    from encoderlens.analysis.similarity import Pooling, SentenceEncoder

    return SentenceEncoder(cast(Any, model), Pooling(("mean",), normalize=True))


def dummy_input(model: HookedModel) -> tuple[Prepared, str]:
    """The model's example input, prepared, and its description."""
    ex = model.example_input()
    return model.prepare_input(ex.input, **ex.options), ex.description


def decoder_options(model: HookedModel, decoder_input: Any) -> dict[str, Any]:
    """``{"decoder_input": ...}`` where the model takes one (its example input does), checked against ``--decoder-input``."""
    needs = "decoder_input" in model.example_input().options
    if needs and decoder_input is None:
        raise ValueError(
            f"this {model.architecture} runs a decoder: pass --decoder-input TEXT (the target side it reads)"
        )
    if not needs and decoder_input is not None:
        raise ValueError(f"--decoder-input is for models with a decoder; this {model.architecture} has none")
    return {} if decoder_input is None else {"decoder_input": decoder_input}


def input_for(model: HookedModel, inputs: Sequence[str], decoder_input: str | None) -> Prepared:
    """The prepared input for the command-line ``inputs`` (texts or audio files) and ``--decoder-input``."""
    kw = decoder_options(
        model, [decoder_input] * len(inputs) if decoder_input is not None and len(inputs) > 1 else decoder_input
    )
    return model.prepare_input(inputs[0] if len(inputs) == 1 else list(inputs), **kw)


def hook_names(model: HookedModel, patterns: Sequence[str]) -> list[str]:
    """Hook names matching glob ``patterns`` (model order); a pattern matching nothing raises with close names."""
    import fnmatch

    names: list[str] = []
    for pat in patterns:
        hits = [n for n in model.hook_names() if fnmatch.fnmatchcase(n, pat)]
        if not hits:
            model.check_hook_name(pat)  # raises with close matches
        names += [n for n in hits if n not in names]
    return names


#: The longest answer span ``predict`` and ``patch`` consider, in tokens (HF's question-answering pipeline default).
MAX_ANSWER_TOKENS = 15


def best_spans(qa: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Each item's answer span ``i..j`` maximising ``start[i] + end[j]`` over ``i <= j < i + MAX_ANSWER_TOKENS``
    on real positions.

    Args:
        qa: Question-answering logits ``(batch, pos, 2)`` (start, end).
        real: The ``(batch, pos)`` mask of real positions.

    Returns:
        ``(batch, 2)``: each item's start and end position (``start <= end``).
    """
    qa = qa.float()
    real = real.to(qa.device).bool()
    n = qa.shape[1]
    i, j = torch.arange(n, device=qa.device)[:, None], torch.arange(n, device=qa.device)[None, :]
    ok = (j >= i) & (j < i + MAX_ANSWER_TOKENS) & real[:, :, None] & real[:, None, :]
    scores = (qa[:, :, 0, None] + qa[:, None, :, 1]).masked_fill(~ok, float("-inf"))
    best = scores.flatten(1).argmax(1)
    return torch.stack([best // n, best % n], dim=1)
