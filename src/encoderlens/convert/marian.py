"""Marian (the opus-mt translation models) -> :class:`~encoderlens.models.encoder_decoder.HookedEncoderDecoder`.

Marian is BART's post-LN encoder-decoder with three differences, all expressed in the config:

- Positions are fixed sinusoids in HF's ``MarianSinusoidalPositionalEmbedding`` layout (sines of every
  frequency in the first half of each row, cosines in the second half, not interleaved), position ``i``
  reading row ``i`` (no offset). HF does not save them (``_keys_to_ignore_on_save``); the converter
  rebuilds the table, or takes it from an older checkpoint that stored it.
- No ``layernorm_embedding``: block 0 reads ``sqrt(d_model) * token + position``.
- With ``share_encoder_decoder_embeddings=False`` the decoder has its own token table of
  ``decoder_vocab_size`` rows; the LM head (tied to it or not) and ``final_logits_bias`` use that size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from encoderlens.config import EmbeddingConfig, EncoderDecoderConfig, UnembedConfig
from encoderlens.convert.bart import HANDLED_KEYS, IGNORED_KEYS, LAYER_NAMES, _check_config, _stack, _take_cross_attn
from encoderlens.convert.common import linear_weight, take_layer
from encoderlens.convert.registry import WeightReader, register, require
from encoderlens.convert.seq2seq import arch_name, eos_ids

#: MarianConfig keys read here besides BART's.
MARIAN_KEYS = frozenset({"decoder_vocab_size", "share_encoder_decoder_embeddings"})


def marian_sinusoids(n_pos: int, dim: int) -> Tensor:
    """HF's Marian position table: ``angle[p, j] = p / 10000 ** (2 * (j // 2) / dim)``; the first
    ``ceil(dim / 2)`` columns are ``sin(angle[:, 0::2])``, the rest ``cos(angle[:, 1::2])``.

    Computed in float64 and rounded once to float32, as HF computes it with numpy.
    """
    pos = torch.arange(n_pos, dtype=torch.float64)[:, None]
    j = torch.arange(dim, dtype=torch.float64)[None]
    angle = pos / torch.pow(
        torch.tensor(10000.0, dtype=torch.float64), 2 * torch.div(j, 2, rounding_mode="floor") / dim
    )
    sentinel = (dim + 1) // 2
    out = torch.empty(n_pos, dim, dtype=torch.float64)
    out[:, :sentinel] = torch.sin(angle[:, 0::2])
    out[:, sentinel:] = torch.cos(angle[:, 1::2])
    return out.float()


def _positions(r: WeightReader, key: str, n_pos: int, dim: int, arch: str) -> Tensor:
    stored = r.take_optional(key)
    if stored is None:
        return marian_sinusoids(n_pos, dim)
    require(tuple(stored.shape) == (n_pos, dim), arch, key, tuple(stored.shape), f"{(n_pos, dim)}")
    return stored


def convert_marian(
    hf_config: Any, state_dict: Mapping[str, Tensor], head: bool | None
) -> tuple[EncoderDecoderConfig, dict[str, Tensor]]:
    """Convert a Marian checkpoint.

    Args:
        head: Whether an LM head exists (None: iff ``lm_head.weight`` or ``final_logits_bias`` is present).
    """
    arch = arch_name(hf_config)
    _check_config(hf_config, arch, pre_ln=False, handled=HANDLED_KEYS | MARIAN_KEYS, ignored=IGNORED_KEYS)
    share_flag = bool(getattr(hf_config, "share_encoder_decoder_embeddings", True))
    vocab = hf_config.vocab_size
    dec_vocab = getattr(hf_config, "decoder_vocab_size", None) or vocab
    if share_flag:
        require(
            dec_vocab == vocab,
            arch,
            "decoder_vocab_size",
            dec_vocab,
            f"{vocab} (= vocab_size) when embeddings are shared",
        )
    d, max_pos = hf_config.d_model, hf_config.max_position_embeddings
    r = WeightReader(state_dict, hf_config.model_type)
    if head is None:
        head = r.has("lm_head.weight") or r.has("final_logits_bias")
    r.strip_prefix("model.")
    out: dict[str, Tensor] = {}
    # HF reads encoder.embed_tokens and decoder.embed_tokens; ``shared`` is what they are tied to (when tied,
    # the saved copies may be left out). With tie_word_embeddings=False HF unties them even when
    # share_encoder_decoder_embeddings=True, so equality of the tables, not the flag, decides.
    shared = r.take_optional("shared.weight")
    enc_table = r.take_optional("encoder.embed_tokens.weight")
    dec_table = r.take_optional("decoder.embed_tokens.weight")
    enc_table = shared if enc_table is None else enc_table
    dec_table = shared if dec_table is None else dec_table
    if enc_table is None or dec_table is None:
        raise ValueError(
            f"{arch} checkpoint has no token embedding (shared.weight or {{encoder,decoder}}.embed_tokens)"
        )
    shared_embedding = enc_table.shape == dec_table.shape and enc_table.equal(dec_table)
    out["embed.W_E"] = enc_table
    if not shared_embedding:
        out["decoder_embed.W_E"] = dec_table
    for side in ("encoder", "decoder"):
        out[f"{side}.pos_embed.W_pos"] = _positions(r, f"{side}.embed_positions.weight", max_pos, d, arch)
        heads = getattr(hf_config, f"{side}_attention_heads")
        for i in range(getattr(hf_config, f"{side}_layers")):
            src, dst = f"{side}.layers.{i}.", f"{side}.blocks.{i}."
            take_layer(r, out, src, dst, heads, LAYER_NAMES)
            if side == "decoder":
                # TransformerLens's names: decoder blocks have ln2 (cross-attention) and ln3 (MLP)
                for key in [k for k in out if k.startswith(dst + "ln2.")]:
                    out[dst + "ln3." + key[len(dst + "ln2.") :]] = out.pop(key)
                _take_cross_attn(r, out, heads, src, dst)
    unembed = None
    if head:
        lm = r.take_optional("lm_head.weight")
        tied = lm is None or (lm.shape == dec_table.shape and lm.equal(dec_table))
        if not tied:
            assert lm is not None
            require(lm.shape[0] == dec_table.shape[0], arch, "lm_head rows", lm.shape[0], f"{dec_table.shape[0]}")
            out["lm_head.W_U_untied"] = linear_weight(lm)
        bias = r.take_optional("final_logits_bias")
        if bias is not None:
            require(bias.numel() == dec_vocab, arch, "final_logits_bias size", bias.numel(), f"{dec_vocab}")
            out["lm_head.b_U"] = bias.reshape(-1)
        unembed = UnembedConfig(tied=tied, scale=1.0, bias=bias is not None)
    r.finish()

    embed = EmbeddingConfig(
        d_vocab=vocab,
        n_ctx=max_pos,
        scale=math.sqrt(d) if hf_config.scale_embedding else 1.0,
        pad_token_id=hf_config.pad_token_id,
    )
    cfg = EncoderDecoderConfig(
        architecture=arch,
        model_type=hf_config.model_type,
        encoder_embed=embed,
        encoder=_stack(hf_config, pre_ln=False, decoder=False),
        decoder_embed=replace(embed, d_vocab=dec_vocab),
        decoder=_stack(hf_config, pre_ln=False, decoder=True),
        unembed=unembed,
        decoder_start_token_id=getattr(hf_config, "decoder_start_token_id", None),
        eos_token_ids=eos_ids(hf_config),
        pad_token_id=hf_config.pad_token_id,
        shared_embedding=shared_embedding,
    )
    return cfg, out


@register("MarianMTModel")
def convert_marian_mt(
    hf_config: Any, state_dict: Mapping[str, Tensor]
) -> tuple[EncoderDecoderConfig, dict[str, Tensor]]:
    """Marian with its LM head (tied to the decoder's token table, plus ``final_logits_bias``)."""
    return convert_marian(hf_config, state_dict, head=True)


@register("MarianModel")
def convert_marian_model(
    hf_config: Any, state_dict: Mapping[str, Tensor]
) -> tuple[EncoderDecoderConfig, dict[str, Tensor]]:
    """Marian without a head: the forward returns the final decoder states."""
    return convert_marian(hf_config, state_dict, head=False)


@register(model_types=["marian"])
def convert_marian_by_weights(
    hf_config: Any, state_dict: Mapping[str, Tensor]
) -> tuple[EncoderDecoderConfig, dict[str, Tensor]]:
    """A Marian config without ``architectures``: the head follows the weights."""
    return convert_marian(hf_config, state_dict, head=None)
