"""Tiny seeded HF encoder-decoders (T5, mT5, BART, mBART), padded batches and offline tokenizers."""

from __future__ import annotations

import string

import torch
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    GenerationConfig,
    MBartConfig,
    MBartForConditionalGeneration,
    MT5Config,
    MT5ForConditionalGeneration,
    T5Config,
    T5ForConditionalGeneration,
)

from tests.conftest import randomize_norms

VOCAB = 99
N_BUCKETS = 8
MAX_DISTANCE = 20
ENC_LEN = 25
DEC_LEN = 23


def t5_config(cls=T5Config, **kw):
    base = dict(
        vocab_size=VOCAB,
        d_model=36,
        d_kv=13,  # inner dim 39 != d_model: a transposed projection cannot pass
        d_ff=37,
        num_layers=3,
        num_decoder_layers=2,
        num_heads=3,
        relative_attention_num_buckets=N_BUCKETS,
        relative_attention_max_distance=MAX_DISTANCE,
        feed_forward_proj="relu",
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
        attn_implementation="eager",
    )
    base.update(kw)
    return cls(**base)


def bart_config(cls=BartConfig, **kw):
    base = dict(
        vocab_size=VOCAB,
        d_model=36,
        encoder_layers=3,
        decoder_layers=2,
        encoder_attention_heads=3,
        decoder_attention_heads=2,  # differs from the encoder: each stack reads its own
        encoder_ffn_dim=37,
        decoder_ffn_dim=41,
        max_position_embeddings=40,
        scale_embedding=True,
        activation_function="gelu",
        init_std=0.2,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
        attn_implementation="eager",
    )
    base.update(kw)
    return cls(**base)


def make_hf(kind: str, seed: int = 0):
    """An HF model of a named variant with randomised norms/biases (and a random untied head where relevant)."""
    torch.manual_seed(seed)
    if kind == "t5":
        hf = T5ForConditionalGeneration(t5_config())
    elif kind == "t5_gated":
        # T5 v1.1 / Flan: gated-gelu MLP, untied head, no output rescaling
        hf = T5ForConditionalGeneration(t5_config(feed_forward_proj="gated-gelu", tie_word_embeddings=False))
        hf.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, 36))
    elif kind == "mt5":
        hf = MT5ForConditionalGeneration(t5_config(MT5Config, feed_forward_proj="gated-gelu"))
        hf.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, 36))
    elif kind == "bart":
        hf = BartForConditionalGeneration(bart_config())
        with torch.no_grad():
            hf.final_logits_bias.normal_(0.0, 0.5)
    elif kind == "mbart":
        hf = MBartForConditionalGeneration(bart_config(MBartConfig, decoder_attention_heads=3))
        with torch.no_grad():
            hf.final_logits_bias.normal_(0.0, 0.5)
    else:
        raise ValueError(kind)
    randomize_norms(hf)
    return hf.eval()


def padded_seq2seq_batch(first_token: int | None = None, seed: int = 3):
    """Encoder (3, 25) and decoder (3, 23) token batches, right-padded to unequal lengths."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(3, VOCAB, (3, ENC_LEN), generator=g)
    src_mask = torch.ones_like(src)
    src_mask[1, 17:] = 0
    src_mask[2, 6:] = 0
    tgt = torch.randint(3, VOCAB, (3, DEC_LEN), generator=g)
    tgt_mask = torch.ones_like(tgt)
    tgt_mask[1, 20:] = 0
    tgt_mask[2, 4:] = 0
    if first_token is not None:
        tgt[:, 0] = first_token
    return src, src_mask, tgt, tgt_mask


def greedy_config(hf) -> GenerationConfig:
    """Pure greedy decoding in HF: no forced tokens, no n-gram blocking, no minimum length."""
    cfg = hf.config
    return GenerationConfig(
        do_sample=False,
        num_beams=1,
        pad_token_id=cfg.pad_token_id,
        eos_token_id=cfg.eos_token_id,
        decoder_start_token_id=cfg.decoder_start_token_id,
        forced_bos_token_id=None,
        forced_eos_token_id=None,
        no_repeat_ngram_size=0,
        repetition_penalty=1.0,
        min_length=0,
    )


def pick_eos(tokens: torch.Tensor) -> int:
    """A token that ends some rows mid-generation while another row never produces it.

    Random tiny models loop; choosing the EOS from their own EOS-free output makes batched generation
    exercise early stopping and padding of finished rows.
    """
    gen = tokens[:, 1:]
    best, best_score = None, -1
    for v in gen.unique().tolist():
        hits = gen == v
        first = [int(r.nonzero()[0]) if r.any() else None for r in hits]
        ends = [f for f in first if f is not None]
        if not ends or len(ends) == len(first) and len(set(ends)) == 1:
            continue
        if min(ends) < 2:
            continue
        score = len(set(first))
        if score > best_score:
            best, best_score = v, score
    if best is None:
        raise AssertionError(f"no usable EOS in {tokens.tolist()}; pick another seed")
    return best


def t5_tokenizer():
    """A real (tokenizers-backed) T5 tokenizer built offline from a word list; it appends ``</s>``."""
    from transformers import T5Tokenizer

    words = ["the", "cat", "sat", "on", "mat", "dog", "ran", "a", "house", "is", "big", "small"]
    words += ["das", "haus", "ist", "gross", "hallo", "welt"]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(f"\u2581{w}", -float(i)) for i, w in enumerate(words)]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def bart_tokenizer():
    """A byte-level BPE BART tokenizer with single-character pieces (no merges); wraps in ``<s> ... </s>``."""
    from transformers import BartTokenizer

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for c in string.ascii_lowercase:
        vocab[c] = len(vocab)
    for c in string.ascii_lowercase:
        vocab["\u0120" + c] = len(vocab)
    vocab["\u0120"] = len(vocab)
    vocab["<mask>"] = len(vocab)
    return BartTokenizer(vocab=vocab, merges=[])


def sharpen_t5(hf, factor: float = 8.0):
    """Scale attention/MLP output weights so a random T5 stops repeating one token under greedy decoding."""
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith(("wo.weight", ".o.weight")):
                p.mul_(factor)
    return hf


def untie_head(hf, seed: int = 0):
    """Give a BART-like model a random untied head: a tied random head mostly copies the current token."""
    hf.config.tie_word_embeddings = False
    g = torch.Generator().manual_seed(seed)
    hf.lm_head.weight = torch.nn.Parameter(torch.randn(hf.lm_head.weight.shape, generator=g))
    return hf


def generating_hf(kind: str):
    """A variant whose greedy output varies (random tiny models otherwise repeat one token)."""
    hf = make_hf(kind)
    return sharpen_t5(hf) if kind in ("t5", "t5_gated", "mt5") else untie_head(hf)
