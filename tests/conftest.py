"""Shared fixtures: tiny seeded HF models saved with save_pretrained and loaded back through our loader."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# one thread per pytest-xdist worker: two workers with two threads each on two cores spin-wait each other
# (tiny models ran ~100x slower measured in CPU time); a plain run keeps up to two
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, torch.get_num_threads())))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def runtime_typechecked() -> bool:
    """Whether encoderlens was imported under jaxtyping + beartype runtime checks (``make test-typecheck``)."""
    module = sys.modules.get("encoderlens")
    spec = getattr(module, "__spec__", None)
    return type(getattr(spec, "loader", None)).__name__ == "_JaxtypingLoader"


@contextmanager
def raises_input_error(
    expected_exception: type[BaseException] | tuple[type[BaseException], ...], match: str | None = None, *, param: str
) -> Iterator[None]:
    """``pytest.raises(expected_exception, match=match)`` for an argument the function rejects with its own message.

    Under ``make test-typecheck`` the argument's annotation (what the function accepts) rejects the value
    first: then the error must be jaxtyping's ``TypeCheckError`` naming parameter ``param``. Either way the
    call must fail, and fail on that argument.
    """
    if not runtime_typechecked():
        with pytest.raises(expected_exception, match=match):
            yield
        return
    from jaxtyping import TypeCheckError

    with pytest.raises((expected_exception, TypeCheckError)) as info:
        yield
    message = str(info.value)
    if isinstance(info.value, TypeCheckError):
        # one parameter's annotation, or shapes that disagree across parameters (then none is singled out)
        named = f"parameter '{param}'" in message
        across = "whilst typechecking parameter" not in message and f"'{param}':" in message
        assert named or across, f"the type check failed on another parameter than {param!r}: {message}"
    elif match is not None:
        assert re.search(match, message), f"{match!r} not found in {message!r}"


def save_claiming(model, tmp_path, architectures):
    """Save an HF model with ``architectures`` written into its config.json (a checkpoint that claims
    another class than its weights: an ``hf_model=`` object is always converted as its own class)."""
    path = save_tiny(model, tmp_path)
    config = json.loads((path / "config.json").read_text())
    config["architectures"] = list(architectures)
    (path / "config.json").write_text(json.dumps(config))
    return path


def save_tiny(model, tmp_path, tokenizer=None):
    """Save an HF model (and optional tokenizer) and return the folder."""
    path = tmp_path / "ckpt"
    model.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path


def randomize_norms(model: torch.nn.Module, seed: int = 1) -> None:
    """HF initialises norms to w=1, b=0 and some biases to 0; randomise them so a missed weight cannot pass."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if "weight" in name else 0.0))


def masked_max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    """Max |a - b| over real (unpadded) positions; mask is (batch, pos), tensors (batch, pos, ...)."""
    m = mask.bool()
    return (a - b)[m].abs().max().item()


def pattern_max_diff(ours: torch.Tensor, theirs: torch.Tensor, mask: torch.Tensor) -> float:
    """Max |diff| of attention patterns (batch, head, q, k) over real query rows (keys at padding are ~0 in both)."""
    m = mask.bool()[:, None, :, None].expand_as(ours)
    return (ours - theirs)[m].abs().max().item()


WORDS = (
    "the a cat dog sat on mat is was and of to in it he she they big small red blue ran jumps over lazy "
    "quick brown fox paris france capital city river house tree bird sings play ##s ##ing ##ed ##er"
).split()


def tiny_bert_tokenizer(tmp_path, vocab_size: int = 99):
    """A BertTokenizerFast over a small vocabulary (special tokens first), padded to ``vocab_size`` entries."""
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    vocab += [f"tok{i}" for i in range(vocab_size - len(vocab))]
    return BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True)


@pytest.fixture
def tiny_mlm(tmp_path):
    """(our model, HF model, tokenizer): a tiny random BertForMaskedLM with a tokenizer, loaded from disk."""
    from transformers import BertConfig, BertForMaskedLM

    from encoderlens import HookedEncoder

    cfg = BertConfig(
        vocab_size=99,
        hidden_size=36,
        num_hidden_layers=3,
        num_attention_heads=3,
        intermediate_size=37,
        max_position_embeddings=40,
        type_vocab_size=2,
        attn_implementation="eager",
    )
    hf = BertForMaskedLM(cfg).eval()
    randomize_norms(hf)
    tok = tiny_bert_tokenizer(tmp_path)
    model = HookedEncoder.from_pretrained(save_tiny(hf, tmp_path, tok))
    return model, hf, tok
