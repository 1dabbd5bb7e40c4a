"""Builders shared by the analysis-toolkit tests: tiny random BERTs (with a real tokenizer), a pre-LN encoder."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import torch
from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

from encoderlens import HookedEncoder
from tests.conftest import randomize_norms

WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "sat",
    "ran",
    "on",
    "under",
    "mat",
    "rug",
    "paris",
    "rome",
    "france",
    "italy",
    "capital",
    "of",
    "is",
    "was",
    "city",
    "big",
    "small",
    "red",
    "blue",
    "green",
    "man",
    "woman",
    "plays",
    "sings",
    "guitar",
    "music",
    "and",
    "in",
    "to",
    "it",
    ".",
    ",",
    "!",
    "?",
]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_config(vocab_size: int = 99, **kw) -> BertConfig:
    base = dict(
        vocab_size=vocab_size,
        hidden_size=36,
        num_hidden_layers=3,
        num_attention_heads=3,
        intermediate_size=37,
        max_position_embeddings=64,
        type_vocab_size=2,
        hidden_act="gelu",
        attn_implementation="eager",
    )
    base.update(kw)
    return BertConfig(**base)


def tiny_mlm(seed: int = 0, **kw) -> HookedEncoder:
    """A tiny random BertForMaskedLM converted through our loader (token ids only, no tokenizer)."""
    torch.manual_seed(seed)
    hf = BertForMaskedLM(tiny_config(**kw)).eval()
    randomize_norms(hf)
    return HookedEncoder.from_pretrained(hf_model=hf)


def tiny_mlm_folder(path: Path, seed: int = 0, **kw) -> Path:
    """Save a tiny random BertForMaskedLM with a real word-piece tokenizer into ``path``; return the folder."""
    path.mkdir(parents=True, exist_ok=True)
    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    tok = BertTokenizerFast(vocab=vocab, do_lower_case=True)
    torch.manual_seed(seed)
    hf = BertForMaskedLM(tiny_config(vocab_size=len(SPECIALS) + len(WORDS), **kw)).eval()
    randomize_norms(hf)
    hf.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def pre_ln_encoder(seed: int = 0, mlm: bool = True) -> HookedEncoder:
    """A pre-LN encoder with a final norm (ModernBERT-like order), random weights, built from our config."""
    base = tiny_mlm(seed)
    c = base.cfg
    cfg = dataclasses.replace(
        c,
        stack=dataclasses.replace(c.stack, norm_position="pre", final_norm=True),
        embed=dataclasses.replace(c.embed, norm=None),
        mlm_head=c.mlm_head if mlm else None,
    )
    model = HookedEncoder(cfg, tokenizer=None)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if name.endswith(".w") else 0.0))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


class LinearHeadEncoder(HookedEncoder):
    """A pre-LN encoder whose stream declares a linear unembedding (as T5 lm_head / CTC heads do)."""

    def _linear_unembed(self):
        return self.W_U_lin, self.b_U_lin


def linear_head_encoder(seed: int = 0) -> LinearHeadEncoder:
    base = pre_ln_encoder(seed, mlm=False)
    model = LinearHeadEncoder(base.cfg, tokenizer=None)
    model.load_state_dict(base.state_dict())
    g = torch.Generator().manual_seed(seed + 7)
    model.W_U_lin = torch.randn(base.cfg.d_model, base.cfg.d_vocab, generator=g) * 0.3
    model.b_U_lin = torch.randn(base.cfg.d_vocab, generator=g) * 0.1
    return model.eval()


def padded_tokens(vocab: int = 99) -> tuple[torch.Tensor, torch.Tensor]:
    """Two sequences of 9 positions, the second padded after 6."""
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(5, vocab, (2, 9), generator=g)
    mask = torch.ones_like(tokens)
    mask[1, 6:] = 0
    tokens[mask == 0] = 0
    return tokens, mask


@functools.lru_cache(maxsize=1)
def default_model() -> HookedEncoder:
    """The embedded all-MiniLM-L6-v2 (loaded once per test process)."""
    return HookedEncoder.from_pretrained("default")
