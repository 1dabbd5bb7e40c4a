"""HookedEncoderDecoder: T5 / mT5 / Flan-T5 and BART / mBART rebuilt from hooked components.

Layout (hook names follow the module tree)::

    embed                       shared token embedding W_E (no hook: each side hooks its own lookup)
    encoder.hook_embed          token embeddings of the encoder input (times the embedding scale)
    encoder.hook_pos_embed      learned positions (BART/mBART)
    encoder.hook_full_embed     input of encoder block 0 (after layernorm_embedding if any)
    encoder.hook_position_bias  T5 relative position bias (1, head_index, query_pos, key_pos)
    encoder.blocks.{i}...       TransformerBlock hooks
    encoder.ln_final.hook_scale / encoder.hook_final_norm   final norm (T5, mBART)
    decoder.*                   the same, plus decoder.blocks.{i}.cross_attn.* and hook_resid_mid_cross
    lm_head                     logits = (decoder_output * scale) @ W_U + b_U

See ``docs/encoder_decoder.md`` for the full hook table and the differences from HF.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from encoderlens.cache import ActivationCache, StreamSpec, fold_norm_into_unembed
from encoderlens.components.attention import KVCache, build_additive_mask, mask_value
from encoderlens.components.blocks import TransformerBlock
from encoderlens.components.embed import Embed, PosEmbed
from encoderlens.components.norm import make_norm
from encoderlens.components.position import RelativePositionBias
from encoderlens.config import EmbeddingConfig, EncoderDecoderConfig, StackConfig, UnembedConfig
from encoderlens.convert.loading import Checkpoint, load_tokenizer
from encoderlens.hooks import HookPoint, NameFilter, _name_matcher
from encoderlens.io.text import TextBatch, as_token_tensor, check_mask, check_tokens, tokenize
from encoderlens.models.base import HookedModel, StackWeights, StackWeightsMixin, register_family

ReturnType = Literal["auto", "logits", "encoder_output", "decoder_output", "all"]
_RETURN_TYPES = ("auto", "logits", "encoder_output", "decoder_output", "all", None)
# hooks whose last two dims are (query_pos, key_pos): during cached generation the key axis grows
_QK_HOOKS = ("hook_attn_scores", "hook_pattern", "hook_position_bias")


@dataclass
class EncoderDecoderOutput:
    """Everything a forward computes (``return_type="all"``).

    Attributes:
        logits: ``(batch, decoder_pos, d_vocab)``, or None without an LM head.
        encoder_output: Final encoder states (after the encoder's final norm, if any): what
            cross-attention reads.
        decoder_output: Final decoder states (after the decoder's final norm, if any), before the head's scale.
        encoder_attention_mask: 1 = real encoder token.
        decoder_attention_mask: 1 = real decoder token.
    """

    logits: Float[Tensor, "batch pos d_vocab"] | None
    encoder_output: Float[Tensor, "batch enc_pos d_model"]
    decoder_output: Float[Tensor, "batch pos d_model"] | None
    encoder_attention_mask: Int[Tensor, "batch enc_pos"]
    decoder_attention_mask: Int[Tensor, "batch pos"] | None


class _PropertyErrors:
    """Keep a property's own AttributeError message (``nn.Module.__getattr__`` would replace it)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)  # type: ignore[misc]
        except AttributeError:
            prop = getattr(type(self), name, None)
            if isinstance(prop, property) and prop.fget is not None:
                prop.fget(self)  # raises the property's explanatory AttributeError
            raise


class Stack(_PropertyErrors, StackWeightsMixin, nn.Module):
    """One side of an encoder-decoder: embeddings, position bias, blocks and final norm.

    The token embedding is the model's shared :class:`Embed`, held in a list so it is registered
    (and loaded) once, at the model root.

    Stacked weights: ``W_Q, W_K, W_V, W_O, b_*, QK, OV, W_in, W_gate, W_out`` over the self-attention
    and MLPs of this stack's blocks; :attr:`cross` gives the same over cross-attention (decoders).
    """

    def __init__(self, cfg: StackConfig, embed_cfg: EmbeddingConfig, embed: Embed) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_cfg = embed_cfg
        d = cfg.d_model
        self._embed = [embed]
        self.hook_embed = HookPoint()
        self.pos_embed = PosEmbed(d, embed_cfg) if embed_cfg.n_ctx else None
        self.hook_pos_embed = HookPoint() if self.pos_embed is not None else None
        self.embed_ln = make_norm(d, embed_cfg.norm) if embed_cfg.norm is not None else None
        self.hook_full_embed = HookPoint()
        rel = cfg.relative_position
        self.position_bias = RelativePositionBias(cfg.n_heads, rel) if rel is not None else None
        self.hook_position_bias = HookPoint() if self.position_bias is not None else None
        self.blocks = nn.ModuleList([TransformerBlock(cfg) for _ in range(cfg.n_layers)])
        self.ln_final = make_norm(d, cfg.norm) if cfg.final_norm else None
        self.hook_final_norm = HookPoint() if self.ln_final is not None else None

    @property
    def cross(self) -> StackWeights:
        """Stacked cross-attention weights: ``decoder.cross.W_Q[layer, head]``, ``decoder.cross.OV``..."""
        if not self.cfg.cross_attention:
            raise AttributeError("this stack has no cross-attention (only the decoder has)")
        return StackWeights(self.blocks, "cross_attn")

    @property
    def d_vocab(self) -> int:
        """Rows of the token embedding this stack reads."""
        return self._embed[0].W_E.shape[0]

    @property
    def max_positions(self) -> int | None:
        """Longest input the learned position table allows (None: relative positions, no limit)."""
        return self.pos_embed.max_positions if self.pos_embed is not None else None

    def embed_input(self, tokens: Int[Tensor, "batch pos"], past_len: int = 0) -> Float[Tensor, "batch pos d_model"]:
        """Token (+ position) embedding and embedding norm: the input of block 0."""
        x = self.hook_embed(self._embed[0](tokens))
        if self.pos_embed is not None:
            assert self.hook_pos_embed is not None
            pos = torch.arange(past_len, past_len + tokens.shape[1], device=tokens.device)[None].expand_as(tokens)
            x = x + self.hook_pos_embed(self.pos_embed(pos))
        if self.embed_ln is not None:
            x = self.embed_ln(x)
        return self.hook_full_embed(x)

    def forward(
        self,
        tokens: Int[Tensor, "batch pos"],
        key_mask: Int[Tensor, "batch key_pos"],
        encoder_out: Float[Tensor, "batch enc_pos d_model"] | None = None,
        encoder_mask: Int[Tensor, "batch enc_pos"] | None = None,
        kv_cache: list[tuple[KVCache, KVCache]] | None = None,
        past_len: int = 0,
    ) -> Float[Tensor, "batch pos d_model"]:
        """Run the stack on ``tokens`` (the new positions when ``past_len > 0``).

        Args:
            tokens: Token ids of the positions to compute.
            key_mask: 1 = attend, over all self-attention keys (``past_len + pos``).
            encoder_out: Encoder output (decoders).
            encoder_mask: 1 = real encoder position (decoders).
            kv_cache: One ``(self, cross)`` cache pair per block (generation); updated in place.
            past_len: Number of positions already in ``kv_cache``.
        """
        x = self.embed_input(tokens, past_len)
        q_len = x.shape[1]
        k_len = past_len + q_len
        mask = build_additive_mask(key_mask.bool(), q_len, k_len, self.cfg.attn.causal, x.dtype, x.device, past_len)
        bias = None
        if self.position_bias is not None:
            assert self.hook_position_bias is not None
            # computed once for the whole stack; with a cache, rows are the new queries against every key
            bias = self.hook_position_bias(self.position_bias(q_len, k_len, past_len).to(x.dtype))
        cross_mask = None
        if self.cfg.cross_attention:
            if encoder_out is None or encoder_mask is None:
                raise ValueError("the decoder needs the encoder output and its mask")
            cross_mask = build_additive_mask(encoder_mask.bool(), q_len, encoder_out.shape[1], False, x.dtype, x.device)
        for i, block in enumerate(self.blocks):
            x = block(
                x,
                additive_mask=mask,
                position_bias=bias,
                encoder_out=encoder_out,
                cross_mask=cross_mask,
                kv_cache=kv_cache[i] if kv_cache is not None else None,
            )
        if self.ln_final is not None:
            assert self.hook_final_norm is not None
            x = self.hook_final_norm(self.ln_final(x))
        return x


class LMHead(nn.Module):
    """``logits = (x * scale) @ W_U + b_U``; tied: ``W_U`` is ``W_E.T`` (the same parameter)."""

    def __init__(self, d_model: int, d_vocab: int, cfg: UnembedConfig, embed: Embed) -> None:
        super().__init__()
        self.cfg = cfg
        self._embed = [embed]
        self.W_U_untied = None if cfg.tied else nn.Parameter(torch.empty(d_model, d_vocab))
        self.b_U = nn.Parameter(torch.zeros(d_vocab)) if cfg.bias else None

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        return self._embed[0].W_E.T if self.W_U_untied is None else self.W_U_untied

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]:
        if self.cfg.scale != 1.0:
            x = x * self.cfg.scale
        logits = x @ self.W_U
        return logits + self.b_U if self.b_U is not None else logits


@register_family("encoder_decoder")
class HookedEncoderDecoder(_PropertyErrors, HookedModel):
    """A sequence-to-sequence transformer with a hook point on every activation, both stacks.

    Submodules ``encoder`` and ``decoder`` (see the module docstring and ``docs/encoder_decoder.md``
    for every hook name). Encoder-only checkpoints (``T5EncoderModel``) have ``decoder = None``:
    the forward then returns the encoder output.

    Example:
        >>> model = HookedEncoderDecoder.from_pretrained("google/flan-t5-small")
        >>> dec = model.decoder_input_from_targets("Das Haus ist wunderbar.")
        >>> logits, cache = model.run_with_cache("translate English to German: The house is wonderful.", dec)
        >>> cache.decoder["pattern", 0, "cross_attn"].shape  # (batch, head_index, decoder_pos, encoder_pos)
        >>> model.generate("translate English to German: The house is wonderful.", max_new_tokens=10)

    Differs from HF:
        - A missing decoder input raises (HF's BART silently builds one from the encoder input).
        - ``generate`` does what its arguments say (greedy, sampling or beam search): the checkpoint's
          generation config (forced BOS/EOS, ``no_repeat_ngram_size``, ``min_length``, default beams) is not
          applied.
        - Text passed as ``decoder_input`` is treated as targets (see :meth:`decoder_input_from_targets`).
    """

    cfg: EncoderDecoderConfig

    def __init__(self, cfg: EncoderDecoderConfig, tokenizer: Any = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        d = cfg.d_model
        self.embed = Embed(d, cfg.encoder_embed)
        self.encoder = Stack(cfg.encoder, cfg.encoder_embed, self.embed)
        self.decoder: Stack | None = None
        # the decoder's own token table when it shares none with the encoder (Marian, untied embeddings)
        self.decoder_embed: Embed | None = None
        dec_tokens = self.embed
        if cfg.decoder is not None:
            assert cfg.decoder_embed is not None
            if not cfg.shared_embedding:
                self.decoder_embed = dec_tokens = Embed(d, cfg.decoder_embed)
            self.decoder = Stack(cfg.decoder, cfg.decoder_embed, dec_tokens)
        self.lm_head = LMHead(d, cfg.d_vocab_out, cfg.unembed, dec_tokens) if cfg.unembed is not None else None
        self.streams: tuple[str, ...] = ("encoder", "decoder") if self.decoder is not None else ("encoder",)
        self.setup()

    @classmethod
    def extras_from_checkpoint(cls, ckpt: Checkpoint) -> dict[str, Any]:
        return {"tokenizer": load_tokenizer(ckpt.path, ckpt.config)}

    # ------------------------------------------------------------------ weights
    @property
    def W_E(self) -> Float[Tensor, "d_vocab d_model"]:
        """The shared token embedding (encoder, decoder, and the head when tied); the encoder's when the
        decoder has its own (``model.decoder_embed.W_E``, ``cfg.shared_embedding=False``)."""
        return self.embed.W_E

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        """Unembedding as stored (without the head's ``scale``; see :meth:`effective_W_U`)."""
        return self._head().W_U

    @property
    def b_U(self) -> Float[Tensor, " d_vocab"]:
        head = self._head()
        return head.b_U if head.b_U is not None else head.W_U.new_zeros(head.W_U.shape[1])

    def effective_W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        """``scale * W_U``: logits are exactly ``decoder_output @ effective_W_U() + b_U``."""
        head = self._head()
        return head.W_U * head.cfg.scale

    def folded_unembed(self) -> tuple[Float[Tensor, "d_model d_vocab"], Float[Tensor, " d_vocab"]]:
        """``(W_U, b_U)`` acting on the decoder's *normalised* final stream (before the final norm's weight).

        The final norm's weight ``w`` (and bias ``b``, LayerNorm) and the head's ``scale`` are folded in:
        ``W = diag(w) @ W_U * scale``, ``bias = b_U + (b @ W_U) * scale``, so
        ``logits = normalized @ W + bias`` with ``normalized`` the final norm's ``hook_normalized``
        (what :meth:`ActivationCache.apply_ln_to_stack` produces from residual components). This is the
        unembedding :meth:`ActivationCache.logit_attrs` uses on ``cache.decoder``.
        """
        return fold_norm_into_unembed(self._decoder().ln_final, self.effective_W_U(), self.b_U)

    def _head(self) -> LMHead:
        if self.lm_head is None:
            raise AttributeError(
                f"this {self.cfg.architecture} checkpoint has no LM head, hence no unembedding; "
                "load a *ForConditionalGeneration checkpoint for logits"
            )
        return self.lm_head

    def _decoder(self) -> Stack:
        if self.decoder is None:
            raise ValueError(
                f"this {self.cfg.architecture} checkpoint is encoder-only (no decoder weights): "
                "use model(input) or model.encode(input) for the encoder output"
            )
        return self.decoder

    # ------------------------------------------------------------------ inputs
    def tokenize(self, input: Any, one_zero_attention_mask: Any = None) -> TextBatch:
        """Encoder input: strings (padded right, truncated to the position table with a warning),
        token ids ``(pos,)`` / ``(batch, pos)`` with an optional mask, or a :class:`TextBatch`."""
        return self._batch(input, one_zero_attention_mask, self.encoder, "input", "one_zero_attention_mask")

    def _batch(self, input: Any, mask: Any, stack: Stack, what: str, mask_name: str) -> TextBatch:
        device = self.embed.W_E.device
        if isinstance(input, TextBatch):
            if mask is not None:
                raise ValueError(f"{what} is a TextBatch, which carries its own mask; do not also pass {mask_name}")
            batch = TextBatch(
                as_token_tensor(input.tokens), check_mask(input.attention_mask, input.tokens.shape, mask_name), None
            )
        elif _is_text(input):
            if mask is not None:
                raise ValueError(f"{mask_name} is built from text automatically; pass it with token ids only")
            batch = tokenize(self.tokenizer, _as_text_list(input), max_length=stack.max_positions)
            batch = TextBatch(batch.tokens, batch.attention_mask, None)
        else:
            if input is None:
                raise TypeError(f"{what} is None; pass a string, a list of strings or token ids")
            tokens = as_token_tensor(input)
            m = torch.ones_like(tokens) if mask is None else check_mask(mask, tokens.shape, mask_name)
            batch = TextBatch(tokens, m, None)
        check_tokens(batch.tokens, stack.d_vocab, stack.max_positions)
        return TextBatch(batch.tokens.to(device), batch.attention_mask.to(device), None)

    def decoder_input_from_targets(self, targets: Any, attention_mask: Any = None) -> TextBatch:
        """Teacher-forcing decoder input for target text or target token ids.

        Targets are tokenized with special tokens (T5 appends ``</s>``; BART wraps in ``<s> ... </s>``),
        then shifted right: ``[decoder_start] + targets[:-1]`` (mBART, ``decoder_shift="wrap_last_token"``:
        the last real target token, the language id, moves to the front instead). Position ``i`` of the
        logits then predicts target token ``i``. ``-100`` in target ids (ignored labels) becomes padding.

        Args:
            targets: A string, a list of strings, or target token ids ``(pos,)`` / ``(batch, pos)``.
            attention_mask: With token ids: 1 = real target token.

        Returns:
            A :class:`TextBatch` to pass as ``decoder_input`` (it carries the shifted mask).

        Example:
            >>> dec = model.decoder_input_from_targets(["Das Haus.", "Hallo"])
            >>> logits = model(["The house.", "Hello"], decoder_input=dec)
        """
        self._decoder()
        pad = self.cfg.pad_token_id
        if isinstance(targets, Tensor) or (not _is_text(targets) and not isinstance(targets, TextBatch)):
            tokens = as_token_tensor(targets).clone()
            ignored = tokens == -100
            if bool(ignored.any()):
                if pad is None:
                    raise ValueError("targets contain -100 (ignored labels) but the model has no pad_token_id")
                tokens[ignored] = pad
            if attention_mask is None:
                attention_mask = (~ignored).long()
            targets = TextBatch(tokens, check_mask(attention_mask, tokens.shape, "attention_mask"), None)
        elif attention_mask is not None:
            raise ValueError("attention_mask is built from text automatically; pass it with token ids only")
        batch = self._batch(targets, None, self._decoder(), "targets", "attention_mask")
        tokens, mask = batch.tokens, batch.attention_mask
        shifted = torch.empty_like(tokens)
        shifted[:, 1:] = tokens[:, :-1]
        if self.cfg.decoder_shift == "wrap_last_token":
            last = mask.sum(dim=1) - 1
            shifted[:, 0] = tokens.gather(1, last[:, None]).squeeze(1)
        else:
            start = self.cfg.decoder_start_token_id
            if start is None:
                raise ValueError(
                    "this checkpoint's config has no decoder_start_token_id; build decoder inputs yourself "
                    "(token ids starting with the start token)"
                )
            shifted[:, 0] = start
        shifted_mask = torch.ones_like(mask)
        shifted_mask[:, 1:] = mask[:, :-1]
        return TextBatch(shifted, shifted_mask, None)

    def _decoder_batch(self, decoder_input: Any, decoder_attention_mask: Any) -> TextBatch:
        stack = self._decoder()
        if decoder_input is None:
            raise ValueError(
                "this forward needs a decoder input and got none (encoderlens never builds one silently). "
                "For target text use decoder_input=model.decoder_input_from_targets(text) "
                "(start token + shift right); for free generation use model.generate(input); "
                "for the encoder alone use return_type='encoder_output'"
            )
        if _is_text(decoder_input):
            if decoder_attention_mask is not None:
                raise ValueError("decoder_attention_mask is built from text automatically; pass it with token ids")
            return self.decoder_input_from_targets(decoder_input)
        return self._batch(decoder_input, decoder_attention_mask, stack, "decoder_input", "decoder_attention_mask")

    def to_tokens(self, input: str | Sequence[str]) -> Int[Tensor, "batch pos"]:
        """Token ids of encoder text (padded batch)."""
        return self.tokenize(input).tokens

    def to_string(self, tokens: Tensor | Sequence[int]) -> str | list[str]:
        """Decode ids to text, skipping special tokens (one string for 1-D ids, a list for a batch)."""
        if self.tokenizer is None:
            raise ValueError("to_string needs a tokenizer; this model was loaded without one")
        single = (isinstance(tokens, Tensor) and tokens.ndim == 1) or (
            not isinstance(tokens, Tensor) and len(tokens) > 0 and isinstance(tokens[0], int)
        )
        t = as_token_tensor(tokens)
        out = [self.tokenizer.decode(row.tolist(), skip_special_tokens=True) for row in t]
        return out[0] if single else out

    def to_str_tokens(self, input: Any) -> list[str] | list[list[str]]:
        """Encoder tokens as strings (a list for one text, a list of lists for a batch; padding dropped)."""
        if self.tokenizer is None:
            raise ValueError("to_str_tokens needs a tokenizer; this model was loaded without one")
        single = isinstance(input, str) or (isinstance(input, Tensor) and input.ndim == 1)
        batch = self.tokenize(input)
        rows = [
            self.tokenizer.convert_ids_to_tokens(t[m.bool()].tolist())
            for t, m in zip(batch.tokens, batch.attention_mask)
        ]
        return rows[0] if single else rows

    # ------------------------------------------------------------------ forward
    def encode(self, input: Any, one_zero_attention_mask: Any = None) -> Float[Tensor, "batch enc_pos d_model"]:
        """The encoder output (what cross-attention reads) for text or token ids."""
        batch = self.tokenize(input, one_zero_attention_mask)
        return self.encoder(batch.tokens, batch.attention_mask)

    def forward(
        self,
        input: Any,
        decoder_input: Any = None,
        return_type: ReturnType | None = "auto",
        one_zero_attention_mask: Any = None,
        decoder_attention_mask: Any = None,
    ) -> Any:
        """Run the encoder on ``input`` and the decoder on ``decoder_input`` (teacher forcing).

        Args:
            input: Encoder input: a string, a list of strings, token ids ``(pos,)`` / ``(batch, pos)``,
                or a :class:`TextBatch`.
            decoder_input: Decoder token ids (used as given: they must start with the decoder start
                token), a :class:`TextBatch` from :meth:`decoder_input_from_targets`, or target text
                (converted by :meth:`decoder_input_from_targets`). Required unless
                ``return_type="encoder_output"`` or the checkpoint is encoder-only.
            return_type: ``"logits"``; ``"encoder_output"`` (final encoder states); ``"decoder_output"``
                (final decoder states); ``"all"`` (:class:`EncoderDecoderOutput`); None (run for hooks);
                ``"auto"``: logits when the checkpoint has an LM head, else the output of its last stack.
            one_zero_attention_mask: With encoder token ids: 1 = real token, 0 = padding.
            decoder_attention_mask: With decoder token ids: 1 = real token, 0 = padding.
        """
        if return_type not in _RETURN_TYPES:
            raise ValueError(f"return_type must be one of {_RETURN_TYPES}, got {return_type!r}")
        if return_type == "auto":
            if self.decoder is None:
                return_type = "encoder_output"
            else:
                return_type = "logits" if self.lm_head is not None else "decoder_output"
        if self.decoder is None and return_type not in ("encoder_output", None):
            raise ValueError(
                f"this {self.cfg.architecture} checkpoint is encoder-only: return_type={return_type!r} needs a "
                "decoder; use return_type='encoder_output' (the default for this model)"
            )
        if return_type == "logits" and self.lm_head is None:
            raise ValueError(
                f"return_type='logits' needs an LM head, and this {self.cfg.architecture} checkpoint has none; "
                "use return_type='decoder_output' (or load a *ForConditionalGeneration checkpoint)"
            )
        enc = self.tokenize(input, one_zero_attention_mask)
        if return_type == "encoder_output" or (self.decoder is None and return_type is None):
            if decoder_input is not None:
                raise ValueError("return_type='encoder_output' runs the encoder only; do not pass decoder_input")
            return self.encoder(enc.tokens, enc.attention_mask)
        assert self.decoder is not None
        dec = self._decoder_batch(decoder_input, decoder_attention_mask)
        if dec.tokens.shape[0] != enc.tokens.shape[0]:
            raise ValueError(
                f"encoder input has batch size {enc.tokens.shape[0]} but decoder input has {dec.tokens.shape[0]}; "
                "pass one decoder sequence per encoder sequence"
            )
        enc_out = self.encoder(enc.tokens, enc.attention_mask)
        dec_out = self.decoder(dec.tokens, dec.attention_mask, enc_out, enc.attention_mask)
        if return_type is None:
            return None
        if return_type == "decoder_output":
            return dec_out
        logits = self.lm_head(dec_out) if self.lm_head is not None else None
        if return_type == "logits":
            return logits
        return EncoderDecoderOutput(logits, enc_out, dec_out, enc.attention_mask, dec.attention_mask)

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(
        self,
        input: Any,
        max_new_tokens: int = 20,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        num_beams: int = 1,
        length_penalty: float = 1.0,
        early_stopping: bool | Literal["never"] = False,
        eos_token_id: int | Sequence[int] | None = None,
        stop_at_eos: bool = True,
        decoder_input: Any = None,
        one_zero_attention_mask: Any = None,
        use_cache: bool = True,
        return_cache: bool = False,
        names_filter: NameFilter = None,
        return_type: Literal["input", "tokens", "str"] = "input",
        seed: int | None = None,
    ) -> Any:
        """Generate decoder tokens, running the encoder once and the decoder with a KV cache.

        Hooks attached to the model (``model.hooks(...)``, ``model.add_hook``) fire on every step, so a
        hook can steer generation. With the cache, each step runs only the new position: self-attention
        hooks see ``query_pos = 1`` and ``key_pos`` growing; cross-attention ``hook_k``/``hook_v`` fire
        on the first step only (their keys and values are static and reused).

        Args:
            input: Encoder input (text, token ids, or a :class:`TextBatch`).
            max_new_tokens: Tokens to generate after the decoder prefix.
            do_sample: Sample instead of taking the argmax.
            temperature: Divides the logits before sampling (``do_sample`` only).
            top_k: Sample among the ``top_k`` most likely tokens only.
            top_p: Sample from the smallest set of tokens whose probability reaches ``top_p``.
            num_beams: Beams for beam search (1: greedy or sampling). Beam search follows HF's algorithm
                (``2 * num_beams`` candidates per step, finished hypotheses scored by
                ``sum_logprobs / generated_len ** length_penalty``) and returns the best hypothesis per input.
            length_penalty: Exponent of the length normalisation of finished beams (beam search only).
            early_stopping: Beam search stopping rule, as in HF: False (stop when no running beam can beat
                the worst finished one, judged at the current length), True (stop once ``num_beams``
                hypotheses are finished), ``"never"`` (judge at the maximum length when ``length_penalty > 0``).
            eos_token_id: Token(s) that end a sequence (default: the checkpoint's).
            stop_at_eos: Stop a sequence at EOS (later positions get the pad token) and stop when every
                sequence has ended. False: always generate ``max_new_tokens``.
            decoder_input: Decoder prefix (token ids starting with the start token, a :class:`TextBatch`,
                or text, converted by :meth:`decoder_input_from_targets`); default: the start token. All
                rows must have the same length (no padding).
            one_zero_attention_mask: With encoder token ids: 1 = real token.
            use_cache: Reuse keys/values between steps (False: recompute the whole decoder each step).
            return_cache: Also return an :class:`ActivationCache` of the whole generation: encoder
                activations once, decoder activations concatenated over the steps along the position axis
                (attention scores/patterns/position bias padded on the key axis), so it equals
                ``run_with_cache(input, decoder_input=tokens[:, :-1])`` on the generated tokens.
            names_filter: Which hooks ``return_cache`` records (default: all).
            return_type: ``"tokens"`` (``(batch, prefix + new)`` ids including the prefix, as HF returns
                them), ``"str"`` (decoded, special tokens skipped), or ``"input"`` (strings for text
                input, tokens otherwise).
            seed: Seed of the sampling generator.

        Returns:
            Tokens or strings, and the cache when ``return_cache``.
        """
        stack = self._decoder()
        if self.lm_head is None:
            raise ValueError(f"generate needs an LM head; this {self.cfg.architecture} checkpoint has none")
        if not isinstance(num_beams, int) or num_beams < 1:
            raise ValueError(f"num_beams must be a positive int, got {num_beams!r}")
        if num_beams > 1:
            if do_sample:
                raise ValueError("beam sampling is not implemented: use num_beams > 1 with do_sample=False")
            if return_cache:
                raise ValueError(
                    "return_cache is not available with beam search (beams are reordered every step); "
                    "run model.run_with_cache(input, tokens[:, :-1]) on the returned tokens instead"
                )
            if not stop_at_eos:
                raise ValueError("stop_at_eos=False is not available with beam search")
        if early_stopping not in (True, False, "never"):
            raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
        if do_sample:
            if temperature <= 0:
                raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
            if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
                raise ValueError(f"top_k must be a positive int, got {top_k!r}")
            if top_p is not None and not 0 < top_p <= 1:
                raise ValueError(f"top_p must lie in (0, 1], got {top_p!r}")
        if return_type not in ("input", "tokens", "str"):
            raise ValueError(f"return_type must be 'input', 'tokens' or 'str', got {return_type!r}")
        eos = self.cfg.eos_token_ids if eos_token_id is None else _as_id_tuple(eos_token_id)
        pad = self.cfg.pad_token_id if self.cfg.pad_token_id is not None else (eos[0] if eos else 0)

        enc = self.tokenize(input, one_zero_attention_mask)
        batch_size = enc.tokens.shape[0]
        prefix = self._generation_prefix(decoder_input, batch_size)
        total = prefix.shape[1] + max_new_tokens
        limit = stack.max_positions
        if limit is not None and total - 1 > limit:
            raise ValueError(
                f"decoder prefix ({prefix.shape[1]}) + max_new_tokens ({max_new_tokens}) needs {total - 1} decoder "
                f"positions but the model has {limit}; lower max_new_tokens to {limit + 1 - prefix.shape[1]}"
            )

        records: dict[str, list[Tensor]] = defaultdict(list)
        fwd: list[tuple[str, Any]] = []
        if return_cache:
            match = _name_matcher(names_filter)

            def record(t: Tensor, hook: HookPoint) -> None:
                assert hook.name is not None
                records[hook.name].append(t.detach())

            fwd = [(name, record) for name in self.hook_dict if match(name)]

        gen = None
        if do_sample and seed is not None:
            gen = torch.Generator(device=enc.tokens.device).manual_seed(seed)
        with self.hooks(fwd_hooks=fwd):
            enc_out = self.encoder(enc.tokens, enc.attention_mask)
            if num_beams > 1:
                tokens = self._beam_search(
                    enc_out, enc.attention_mask, prefix, max_new_tokens, num_beams, eos, pad, length_penalty,
                    early_stopping, use_cache,
                )  # fmt: skip
                return self._format_generated(tokens, input, return_type)
            tokens = prefix
            finished = torch.zeros(batch_size, dtype=torch.bool, device=tokens.device)
            kv = [(KVCache(), KVCache(static=True)) for _ in stack.blocks] if use_cache else None
            eos_t = torch.tensor(eos, device=tokens.device, dtype=torch.long)
            for _ in range(max_new_tokens):
                if use_cache:
                    assert kv is not None
                    past = kv[0][0].length
                    new = tokens[:, past:]
                else:
                    past, new = 0, tokens
                    # a full recompute: the last step's decoder activations cover every position
                    for name in [n for n in records if n.startswith("decoder.")]:
                        del records[name]
                key_mask = torch.ones_like(tokens)
                dec_out = stack(new, key_mask, enc_out, enc.attention_mask, kv, past)
                logits = self.lm_head(dec_out[:, -1:])[:, 0].float()
                next_tok = self._pick(logits, do_sample, temperature, top_k, top_p, gen)
                if stop_at_eos and eos:
                    next_tok = torch.where(finished, torch.full_like(next_tok, pad), next_tok)
                    finished = finished | torch.isin(next_tok, eos_t)
                tokens = torch.cat([tokens, next_tok[:, None]], dim=1)
                if stop_at_eos and eos and bool(finished.all()):
                    break

        out = self._format_generated(tokens, input, return_type)
        if return_cache:
            cache_dict = self._merge_steps(records, tokens.shape[1] - 1, use_cache)
            return out, ActivationCache(cache_dict, self)
        return out

    def _format_generated(self, tokens: Tensor, input: Any, return_type: str) -> Any:
        if return_type == "str" or (return_type == "input" and _is_text(input)):
            if self.tokenizer is None:
                raise ValueError("return_type='str' needs a tokenizer; this model was loaded without one")
            texts = [self.tokenizer.decode(row.tolist(), skip_special_tokens=True) for row in tokens]
            return texts[0] if isinstance(input, str) else texts
        return tokens

    def _beam_search(
        self,
        enc_out: Float[Tensor, "batch enc_pos d_model"],
        enc_mask: Int[Tensor, "batch enc_pos"],
        prefix: Int[Tensor, "batch pos"],
        max_new_tokens: int,
        num_beams: int,
        eos: tuple[int, ...],
        pad: int,
        length_penalty: float,
        early_stopping: bool | str,
        use_cache: bool,
    ) -> Int[Tensor, "batch pos"]:
        """Beam search with HF's (vectorised, transformers >= 4.50) semantics; returns the best beam per input.

        State per input: ``num_beams`` running beams (log-prob sums) and the ``num_beams`` best finished
        hypotheses (length-normalised scores). Each step keeps the top ``max(2, 1 + n_eos) * num_beams``
        continuations so that enough unfinished ones remain; candidates ending in EOS (or at the length
        limit) among the top ``num_beams`` become finished hypotheses.
        """
        stack = self._decoder()
        assert self.lm_head is not None
        batch, prompt_len = prefix.shape
        k, device = num_beams, prefix.device
        max_len = prompt_len + max_new_tokens
        n_keep = max(2, 1 + len(eos)) * k
        neg = -1.0e9
        # every beam of one input reads the same encoder output
        enc_out = enc_out.repeat_interleave(k, dim=0)
        enc_mask = enc_mask.repeat_interleave(k, dim=0)
        running = torch.full((batch, k, max_len), pad, dtype=torch.long, device=device)
        running[:, :, :prompt_len] = prefix[:, None]
        running_scores = torch.zeros(batch, k, device=device)
        running_scores[:, 1:] = neg  # only the first beam is live at the start: no duplicate beams
        finished = running.clone()
        finished_scores = torch.full((batch, k), neg, device=device)
        finished_len = torch.full((batch, k), max_len, dtype=torch.long, device=device)
        is_finished = torch.zeros(batch, k, dtype=torch.bool, device=device)
        can_improve = torch.ones(batch, 1, dtype=torch.bool, device=device)
        top_k_mask = torch.arange(n_keep, device=device) < k
        eos_t = torch.tensor(eos, dtype=torch.long, device=device)
        kv = [(KVCache(), KVCache(static=True)) for _ in stack.blocks] if use_cache else None
        cur = prompt_len
        while True:
            flat = running[:, :, :cur].reshape(batch * k, cur)
            past = kv[0][0].length if kv is not None else 0
            dec_out = stack(flat[:, past:], torch.ones_like(flat), enc_out, enc_mask, kv, past)
            logits = self.lm_head(dec_out[:, -1:])[:, 0].float()
            vocab = logits.shape[-1]
            log_probs = logits.log_softmax(-1).view(batch, k, vocab) + running_scores[:, :, None]
            top_scores, top_idx = log_probs.view(batch, k * vocab).topk(n_keep, dim=-1)
            src_beam, new_tok = top_idx // vocab, top_idx % vocab
            cand = running.gather(1, src_beam[:, :, None].expand(-1, -1, max_len)).clone()
            cand[:, :, cur] = new_tok
            ends = torch.isin(new_tok, eos_t) | (cur + 1 >= max_len)

            # running beams for the next step: the best candidates that did not just end
            live_scores = top_scores + ends.float() * neg
            keep = live_scores.topk(k, dim=-1).indices
            running = cand.gather(1, keep[:, :, None].expand(-1, -1, max_len))
            running_scores = live_scores.gather(1, keep)
            parent = src_beam.gather(1, keep)

            # finished hypotheses: merge the new ones (among the top k only) with the kept ones
            just_ended = ends & top_k_mask[None]
            scored = top_scores / float(cur + 1 - prompt_len) ** length_penalty
            if early_stopping is True:
                scored = scored + (is_finished.all(-1, keepdim=True)).float() * neg
            scored = scored + (~can_improve).float() * neg + (~just_ended).float() * neg
            merged_scores = torch.cat([finished_scores, scored], dim=1)
            best = merged_scores.topk(k, dim=-1).indices
            finished = torch.cat([finished, cand], dim=1).gather(1, best[:, :, None].expand(-1, -1, max_len))
            finished_scores = merged_scores.gather(1, best)
            cand_len = torch.full_like(new_tok, cur + 1)
            finished_len = torch.cat([finished_len, cand_len], dim=1).gather(1, best)
            is_finished = torch.cat([is_finished, just_ended], dim=1).gather(1, best)

            if kv is not None:
                # the self-attention caches follow their beams; cross-attention caches are equal across beams
                order = (parent + torch.arange(batch, device=device)[:, None] * k).reshape(-1)
                for self_cache, _ in kv:
                    assert self_cache.k is not None and self_cache.v is not None
                    self_cache.k = self_cache.k.index_select(0, order)
                    self_cache.v = self_cache.v.index_select(0, order)
            cur += 1
            # can a running beam still beat the worst finished hypothesis?
            hyp_len = max_len - prompt_len if early_stopping == "never" and length_penalty > 0 else cur - prompt_len
            best_running = running_scores[:, :1] / float(hyp_len) ** length_penalty
            worst_done = torch.where(is_finished, finished_scores.min(dim=1, keepdim=True).values, neg)
            can_improve = can_improve & (best_running > worst_done).any(-1, keepdim=True)
            open_beams = not (bool(is_finished.all()) and early_stopping is True)
            if not (bool(can_improve.any()) and open_beams and not bool(ends.all())):
                break
        out_len = int(finished_len[:, 0].max())
        return finished[:, 0, :out_len]

    def _generation_prefix(self, decoder_input: Any, batch_size: int) -> Tensor:
        device = self.embed.W_E.device
        if decoder_input is None:
            start = self.cfg.decoder_start_token_id
            if start is None:
                raise ValueError(
                    "this checkpoint's config has no decoder_start_token_id; pass decoder_input (e.g. the "
                    "target-language token id for mBART) to start generation"
                )
            return torch.full((batch_size, 1), start, dtype=torch.long, device=device)
        dec = self._decoder_batch(decoder_input, None)
        if not bool(dec.attention_mask.bool().all()):
            raise ValueError(
                "generate needs decoder prefixes of equal length without padding; "
                "generate rows with different prefixes in separate calls"
            )
        tokens = dec.tokens
        if tokens.shape[0] == 1 and batch_size > 1:
            tokens = tokens.expand(batch_size, -1)
        if tokens.shape[0] != batch_size:
            raise ValueError(
                f"encoder input has batch size {batch_size} but the decoder prefix has {tokens.shape[0]}; "
                "pass one prefix per input (or a single prefix for all)"
            )
        return tokens.contiguous()

    @staticmethod
    def _pick(
        logits: Float[Tensor, "batch d_vocab"],
        do_sample: bool,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        gen: torch.Generator | None,
    ) -> Int[Tensor, " batch"]:
        if not do_sample:
            return logits.argmax(dim=-1)
        logits = logits / temperature
        neg = torch.finfo(logits.dtype).min
        if top_k is not None and top_k < logits.shape[-1]:
            kth = logits.topk(top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, neg)
        if top_p is not None and top_p < 1.0:
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            probs = sorted_logits.softmax(-1)
            # drop a token when the more likely ones already reach top_p (the most likely always stays)
            drop_sorted = (probs.cumsum(-1) - probs) >= top_p
            drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
            logits = logits.masked_fill(drop, neg)
        probs = logits.softmax(-1)
        return torch.multinomial(probs, 1, generator=gen)[:, 0]

    def _merge_steps(self, records: dict[str, list[Tensor]], n_pos: int, use_cache: bool) -> dict[str, Tensor]:
        """Join per-step activations into the activations of one forward over all decoder positions."""
        merged: dict[str, Tensor] = {}
        for name, steps in records.items():
            if len(steps) == 1 or not use_cache:
                merged[name] = steps[-1]
                continue
            if name.endswith(_QK_HOOKS) and ".cross_attn." not in name:
                if name.endswith("hook_position_bias"):
                    assert self.decoder is not None and self.decoder.position_bias is not None
                    full = self.decoder.position_bias(n_pos, n_pos).to(steps[0].dtype).clone()
                else:
                    fill = mask_value(steps[0].dtype) if name.endswith("hook_attn_scores") else 0.0
                    shape = (*steps[0].shape[:-2], n_pos, n_pos)
                    full = steps[0].new_full(shape, fill)
                row = 0
                for t in steps:
                    q, k = t.shape[-2:]
                    full[..., row : row + q, :k] = t
                    row += q
                merged[name] = full
            elif name.endswith(_QK_HOOKS):
                merged[name] = torch.cat(steps, dim=-2)
            else:
                merged[name] = torch.cat(steps, dim=1)
        return merged

    # ------------------------------------------------------------------ cache support
    def stream_spec(self, stream: str | None = None) -> StreamSpec:
        """How each residual stream is built (``"encoder"`` or ``"decoder"``), for :class:`ActivationCache`."""
        if stream not in self.streams:
            raise ValueError(
                f"this model's residual streams are {self.streams}; got stream={stream!r}. "
                "Use cache.encoder / cache.decoder (or cache.stream_view(name))"
            )
        st: Stack = getattr(self, stream)
        p = f"{stream}."
        if st.embed_ln is not None:
            # the normalised embedding is block 0's input, hence the first summand of a pre-LN stream
            embed_hooks: tuple[str, ...] = (p + "hook_full_embed",)
        else:
            embed_hooks = (p + "hook_embed",) + ((p + "hook_pos_embed",) if st.pos_embed is not None else ())
        unembed = None
        if stream == "encoder":
            note = "the encoder stream is not unembedded (logits are read from cache.decoder)"
        elif self.lm_head is None:
            note = f"this {self.cfg.architecture} checkpoint has no LM head"
        else:
            note = ""
            unembed = self.folded_unembed()
        return StreamSpec(
            prefix=p,
            n_layers=st.cfg.n_layers,
            n_heads=st.cfg.n_heads,
            norm_position=st.cfg.norm_position,
            embed_hooks=embed_hooks,
            embed_normalized=False,
            final_norm=p + "ln_final" if st.ln_final is not None else None,
            has_cross_attention=st.cfg.cross_attention,
            blocks=st.blocks,
            unembed=unembed,
            unembed_note=note,
        )


def _is_text(x: Any) -> bool:
    return isinstance(x, str) or (isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(s, str) for s in x))


def _as_text_list(x: Any) -> str | list[str]:
    # a tuple of strings is a batch here (there are no sentence pairs in seq2seq inputs)
    return x if isinstance(x, str) else list(x)


def _as_id_tuple(x: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(x, int):
        return (x,)
    if isinstance(x, Tensor):
        return tuple(int(v) for v in x.flatten().tolist())
    try:
        return tuple(int(v) for v in x)
    except TypeError:
        raise TypeError(f"eos_token_id must be an int or a sequence of ints, got {type(x).__name__}") from None
