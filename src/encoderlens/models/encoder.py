"""HookedEncoder: BERT-family text encoders rebuilt from hooked components."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from encoderlens.cache import StreamSpec
from encoderlens.components.attention import build_additive_mask
from encoderlens.components.attention_deberta import RelativeEmbedding
from encoderlens.components.blocks import TransformerBlock
from encoderlens.components.embed import Embed, PosEmbed, TokenTypeEmbed
from encoderlens.components.heads import MLMHead, NSPHead, Pooler
from encoderlens.components.norm import make_norm
from encoderlens.config import EncoderConfig
from encoderlens.convert.loading import Checkpoint, load_tokenizer
from encoderlens.hooks import HookPoint
from encoderlens.io.text import (
    TextBatch,
    as_token_tensor,
    check_mask,
    check_token_types,
    check_tokens,
    tokenize,
)
from encoderlens.models.base import HookedModel, StackWeightsMixin, register_family

EncoderReturnType = Literal["logits", "predictions", "embeddings", "pooled", "nsp", "all"]
_RETURN_TYPES = ("logits", "predictions", "embeddings", "pooled", "nsp", "all", None)


@dataclass
class MaskPrediction:
    """Top-k predictions for one ``[MASK]`` position.

    Attributes:
        position: Token position of the mask.
        token_ids: Predicted ids, most likely first.
        tokens: Predicted tokens as the tokenizer spells them (``"##ing"`` marks a word-piece continuation).
        words: Tokens as text, with word-piece markers removed.
        is_continuation: Whether each token continues the previous word (``##`` word pieces).
        probs: Probabilities.
        sequence: The input text with this mask filled by the top prediction (word pieces merged).
    """

    position: int
    token_ids: list[int]
    tokens: list[str]
    words: list[str]
    is_continuation: list[bool]
    probs: list[float]
    sequence: str


@dataclass
class EncoderOutput:
    """Everything the encoder computes (``return_type="all"``); absent heads give None."""

    embeddings: Float[Tensor, "batch pos d_model"]
    logits: Float[Tensor, "batch pos d_vocab"] | None
    pooled: Float[Tensor, "batch d_model"] | None
    nsp_logits: Float[Tensor, "batch 2"] | None
    attention_mask: Int[Tensor, "batch pos"]


@register_family("encoder")
class HookedEncoder(StackWeightsMixin, HookedModel):
    """A bidirectional text encoder with a hook point on every activation.

    Hook points (``i`` = block):

    - ``hook_embed``, ``hook_pos_embed``, ``hook_token_type_embed``: the embedding parts.
    - ``hook_full_embed``: their sum after the embedding norm: the input of block 0.
    - ``blocks.{i}.hook_resid_pre | hook_attn_out | hook_resid_mid | hook_mlp_out | hook_resid_post``
    - ``blocks.{i}.attn.hook_q | hook_k | hook_v | hook_attn_scores | hook_pattern | hook_z | hook_result``
    - ``blocks.{i}.mlp.hook_pre | hook_post``; ``blocks.{i}.ln1 | ln2 .hook_scale | hook_normalized``
    - ``mlm_head.hook_transformed``, ``pooler.hook_pooled`` when those heads exist.
    - Rotary models (ModernBERT): ``blocks.{i}.attn.hook_rot_q | hook_rot_k``.
    - Disentangled attention (DeBERTa): ``rel_embed.hook_rel_embed``, ``blocks.{i}.attn.hook_pos_q |
      hook_pos_k | hook_c2c_scores | hook_c2p_scores | hook_p2c_scores``.

    Example:
        >>> model = HookedEncoder.from_pretrained("default")
        >>> emb, cache = model.run_with_cache("The cat sat.", return_type="embeddings")
        >>> cache["pattern", 0].shape  # (batch, head_index, query_pos, key_pos)
    """

    cfg: EncoderConfig

    def __init__(self, cfg: EncoderConfig, tokenizer: Any = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        d = cfg.d_model
        self.embed = Embed(d, cfg.embed)
        self.hook_embed = HookPoint()
        self.pos_embed = PosEmbed(d, cfg.embed) if cfg.embed.n_ctx else None
        self.hook_pos_embed = HookPoint() if self.pos_embed is not None else None
        self.token_type_embed = TokenTypeEmbed(d, cfg.embed) if cfg.embed.n_token_types else None
        self.hook_token_type_embed = HookPoint() if self.token_type_embed is not None else None
        self.embed_ln = make_norm(d, cfg.embed.norm) if cfg.embed.norm is not None else None
        self.hook_full_embed = HookPoint()
        self.blocks = nn.ModuleList([TransformerBlock(cfg.stack, layer=i) for i in range(cfg.n_layers)])
        disentangled = cfg.stack.attn.disentangled
        # DeBERTa: one relative embedding table, projected by every block
        self.rel_embed = RelativeEmbedding(d, disentangled) if disentangled is not None else None
        self.ln_final = make_norm(d, cfg.stack.norm) if cfg.stack.final_norm else None
        self.mlm_head = MLMHead(d, cfg.d_vocab, cfg.mlm_head, self.embed) if cfg.mlm_head is not None else None
        self.pooler = Pooler(d) if cfg.pooler else None
        self.nsp_head = NSPHead(d) if cfg.nsp_head else None
        self.setup()

    @classmethod
    def extras_from_checkpoint(cls, ckpt: Checkpoint) -> dict[str, Any]:
        return {"tokenizer": load_tokenizer(ckpt.path, ckpt.config)}

    # ------------------------------------------------------------------ weights
    @property
    def W_E(self) -> Float[Tensor, "d_vocab d_model"]:
        return self.embed.W_E

    @property
    def W_pos(self) -> Float[Tensor, "n_ctx d_model"]:
        if self.pos_embed is None:
            raise AttributeError("this model has no learned position embedding")
        return self.pos_embed.W_pos

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        if self.mlm_head is None:
            raise AttributeError("this checkpoint has no MLM head, hence no unembedding W_U")
        return self.mlm_head.W_U

    @property
    def b_U(self) -> Float[Tensor, " d_vocab"]:
        if self.mlm_head is None:
            raise AttributeError("this checkpoint has no MLM head, hence no unembedding b_U")
        return self.mlm_head.b_U

    @property
    def max_positions(self) -> int | None:
        return self.pos_embed.max_positions if self.pos_embed is not None else None

    # ------------------------------------------------------------------ inputs
    def tokenize(
        self,
        input: Any,
        one_zero_attention_mask: Any = None,
        token_type_ids: Any = None,
    ) -> TextBatch:
        """Turn strings, sentence pairs or token ids into a validated :class:`TextBatch`.

        Strings are padded (right) and truncated to the position table with a warning. Pairs
        ``(text_a, text_b)`` get segment ids. Token tensors are checked, never modified.
        """
        device = self.embed.W_E.device
        if isinstance(input, str) or (
            isinstance(input, (list, tuple)) and input and isinstance(input[0], (str, tuple))
        ):
            if one_zero_attention_mask is not None:
                raise ValueError(
                    "one_zero_attention_mask is built from text automatically; pass it with token ids only"
                )
            batch = tokenize(self.tokenizer, input, max_length=self.max_positions)
            tt = batch.token_type_ids if token_type_ids is None else token_type_ids
            if tt is not None and self.token_type_embed is None:
                tt = None
            batch = TextBatch(batch.tokens, batch.attention_mask, tt)
        else:
            tokens = as_token_tensor(input)
            mask = (
                torch.ones_like(tokens)
                if one_zero_attention_mask is None
                else check_mask(one_zero_attention_mask, tokens.shape)
            )
            batch = TextBatch(tokens, mask, token_type_ids)
        check_tokens(batch.tokens, self.cfg.d_vocab, self.max_positions)
        tt = batch.token_type_ids
        if tt is not None:
            tt = check_token_types(tt, batch.tokens.shape, self.cfg.embed.n_token_types).to(device)
        return TextBatch(batch.tokens.to(device), batch.attention_mask.to(device), tt)

    def to_tokens(self, input: str | Sequence[str] | tuple[str, str]) -> Int[Tensor, "batch pos"]:
        """Token ids of text (padded batch). Use :meth:`tokenize` for the mask and segment ids too."""
        return self.tokenize(input).tokens

    def to_str_tokens(self, input: Any) -> list[str] | list[list[str]]:
        """Tokens as strings: a list for one text or 1-D ids, a list of lists for a batch (padding dropped)."""
        if self.tokenizer is None:
            raise ValueError("to_str_tokens needs a tokenizer; this model was loaded without one")
        single = isinstance(input, str) or (isinstance(input, Tensor) and input.ndim == 1)
        single = single or (isinstance(input, tuple) and len(input) == 2 and isinstance(input[0], str))
        if isinstance(input, list) and input and isinstance(input[0], int):
            single = True
        batch = self.tokenize(input)
        rows = [
            self.tokenizer.convert_ids_to_tokens(t[m.bool()].tolist())
            for t, m in zip(batch.tokens, batch.attention_mask)
        ]
        return rows[0] if single else rows

    def to_string(self, tokens: Tensor | Sequence[int]) -> str | list[str]:
        """Decode ids to text (one string for 1-D ids, a list for a batch)."""
        if self.tokenizer is None:
            raise ValueError("to_string needs a tokenizer; this model was loaded without one")
        t = as_token_tensor(tokens) if not isinstance(tokens, Tensor) or tokens.ndim != 1 else tokens[None]
        out = [self.tokenizer.decode(row.tolist(), skip_special_tokens=True) for row in t]
        return (
            out[0] if (isinstance(tokens, Tensor) and tokens.ndim == 1) or not isinstance(tokens[0], Sequence) else out
        )

    # ------------------------------------------------------------------ forward
    def embed_input(self, batch: TextBatch) -> Float[Tensor, "batch pos d_model"]:
        """Embedding sum (after the embedding norm), i.e. the input of block 0."""
        tokens = batch.tokens
        x = self.hook_embed(self.embed(tokens))
        if self.pos_embed is not None:
            assert self.hook_pos_embed is not None
            pos = torch.arange(tokens.shape[1], device=tokens.device)[None].expand_as(tokens)
            x = x + self.hook_pos_embed(self.pos_embed(pos))
        if self.token_type_embed is not None:
            assert self.hook_token_type_embed is not None
            tt = batch.token_type_ids if batch.token_type_ids is not None else torch.zeros_like(tokens)
            x = x + self.hook_token_type_embed(self.token_type_embed(tt))
        if self.embed_ln is not None:
            x = self.embed_ln(x)
        if self.cfg.embed.zero_padding:
            x = x * batch.attention_mask[..., None].to(x.dtype)
        return self.hook_full_embed(x)

    def encode(self, batch: TextBatch, stop_at_layer: int | None = None) -> Float[Tensor, "batch pos d_model"]:
        """Run embeddings and blocks (``stop_at_layer``: run blocks ``[0, stop_at_layer)`` only, no final norm)."""
        x = self.embed_input(batch)
        mask = build_additive_mask(
            batch.attention_mask.bool(), x.shape[1], x.shape[1], self.cfg.stack.attn.causal, x.dtype, x.device
        )
        rel = self.rel_embed(x.shape[1], x.shape[1]) if self.rel_embed is not None else None
        for block in self.blocks[:stop_at_layer]:
            x = block(x, additive_mask=mask, rel_embeddings=rel)
        if stop_at_layer is None and self.ln_final is not None:
            x = self.ln_final(x)
        return x

    def forward(
        self,
        input: Any,
        return_type: EncoderReturnType | None = "logits",
        one_zero_attention_mask: Any = None,
        token_type_ids: Any = None,
        top_k: int = 5,
        stop_at_layer: int | None = None,
    ) -> Any:
        """Run the encoder.

        Args:
            input: A string, a list of strings, a ``(text_a, text_b)`` pair or a list of pairs, or token
                ids ``(pos,)`` / ``(batch, pos)``.
            return_type: ``"logits"`` (MLM vocabulary logits), ``"predictions"`` (top-k fills of every
                ``[MASK]``; a list per text, or a list of lists for a batch), ``"embeddings"`` (final
                residual stream), ``"pooled"``, ``"nsp"`` (next-sentence logits), ``"all"``
                (:class:`EncoderOutput`), or None (run for hooks only).
            one_zero_attention_mask: With token ids: 1 = real token, 0 = padding.
            token_type_ids: With token ids: segment ids.
            top_k: Predictions per mask for ``return_type="predictions"``.
            stop_at_layer: Stop before this block and return the residual stream (``"embeddings"`` only).
        """
        if return_type not in _RETURN_TYPES:
            raise ValueError(f"return_type must be one of {_RETURN_TYPES}, got {return_type!r}")
        if return_type in ("logits", "predictions") and self.mlm_head is None:
            raise ValueError(
                f"return_type={return_type!r} needs an MLM head, and this {self.cfg.architecture} checkpoint has none; "
                "use return_type='embeddings' (or load a *ForMaskedLM checkpoint)"
            )
        if return_type in ("pooled", "nsp") and self.pooler is None:
            raise ValueError(f"return_type={return_type!r} needs a pooler, and this checkpoint has none")
        if return_type == "nsp" and self.nsp_head is None:
            raise ValueError("return_type='nsp' needs a next-sentence head (a *ForPreTraining checkpoint)")
        if stop_at_layer is not None and return_type not in ("embeddings", None):
            raise ValueError("stop_at_layer returns the residual stream: use return_type='embeddings'")
        batch = self.tokenize(input, one_zero_attention_mask, token_type_ids)
        resid = self.encode(batch, stop_at_layer)
        if return_type is None:
            return None
        if return_type == "embeddings":
            return resid
        if return_type == "pooled":
            assert self.pooler is not None
            return self.pooler(resid)
        if return_type == "nsp":
            assert self.pooler is not None and self.nsp_head is not None
            return self.nsp_head(self.pooler(resid))
        if return_type == "all":
            pooled = self.pooler(resid) if self.pooler is not None else None
            return EncoderOutput(
                embeddings=resid,
                logits=self.mlm_head(resid) if self.mlm_head is not None else None,
                pooled=pooled,
                nsp_logits=self.nsp_head(pooled) if self.nsp_head is not None and pooled is not None else None,
                attention_mask=batch.attention_mask,
            )
        assert self.mlm_head is not None
        logits = self.mlm_head(resid)
        if return_type == "logits":
            return logits
        preds = self._predictions(batch, logits, top_k)
        return preds[0] if isinstance(input, str) or (isinstance(input, Tensor) and input.ndim == 1) else preds

    def _predictions(self, batch: TextBatch, logits: Tensor, top_k: int) -> list[list[MaskPrediction]]:
        tok = self.tokenizer
        if tok is None or tok.mask_token_id is None:
            raise ValueError("return_type='predictions' needs a tokenizer with a mask token")
        if not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be a positive int, got {top_k!r}")
        is_mask = batch.tokens == tok.mask_token_id
        if not bool(is_mask.any()):
            raise ValueError(
                f"no {tok.mask_token} token in the input; put {tok.mask_token} where a prediction is wanted"
            )
        probs = logits.float().softmax(-1)
        out: list[list[MaskPrediction]] = []
        for b in range(batch.tokens.shape[0]):
            row = batch.tokens[b][batch.attention_mask[b].bool()]
            preds = []
            for pos in is_mask[b].nonzero().flatten().tolist():
                p, ids = probs[b, pos].topk(top_k)
                id_list = ids.tolist()
                tokens = tok.convert_ids_to_tokens(id_list)
                cont = [t.startswith("##") for t in tokens]
                words = [t[2:] if c else t for t, c in zip(tokens, cont)]
                filled = row.clone()
                filled[pos] = id_list[0]
                seq = tok.decode(filled.tolist(), skip_special_tokens=True)
                preds.append(MaskPrediction(pos, id_list, tokens, words, cont, p.tolist(), seq))
            out.append(preds)
        return out

    # ------------------------------------------------------------------ cache support
    def stream_spec(self, stream: str | None = None) -> StreamSpec:
        if stream not in (None, "encoder"):
            raise ValueError(f"a HookedEncoder has one residual stream; got stream={stream!r}, pass None")
        embed_hooks = tuple(
            name
            for name, hp in (
                ("hook_embed", self.hook_embed),
                ("hook_pos_embed", self.hook_pos_embed),
                ("hook_token_type_embed", self.hook_token_type_embed),
            )
            if hp is not None
        )
        pre_ln = self.cfg.stack.norm_position == "pre"
        if pre_ln and self.embed_ln is not None:
            # pre-LN with an embedding norm (ModernBERT): the normalised embedding is the stream's first summand
            embed_hooks = ("hook_full_embed",)
        return StreamSpec(
            prefix="",
            n_layers=self.cfg.n_layers,
            n_heads=self.cfg.n_heads,
            norm_position=self.cfg.stack.norm_position,
            embed_hooks=embed_hooks,
            embed_normalized=self.embed_ln is not None and not pre_ln,
            final_norm="ln_final" if self.ln_final is not None else None,
            has_cross_attention=False,
            blocks=self.blocks,
            unembed=self._linear_unembed(),
            unembed_note=(
                "the MLM head applies dense -> GELU -> LayerNorm before W_U, so logits are not linear in the "
                "residual stream"
                if self.mlm_head is not None
                else "this checkpoint has no MLM head"
            ),
        )

    def _linear_unembed(self) -> tuple[Tensor, Tensor] | None:
        # the BERT MLM head is nonlinear (dense + act + LN): no linear unembedding exists
        return None
