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

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from encoderlens.cache import StreamSpec, fold_norm_into_unembed
from encoderlens.components.embed import Embed
from encoderlens.components.heads import LMHead
from encoderlens.components.stack import Stack
from encoderlens.config import EncoderDecoderConfig
from encoderlens.io.checkpoint import Checkpoint, load_tokenizer
from encoderlens.io.text import TextBatch, is_text
from encoderlens.models.contract import (
    TOKEN_ALIGNMENT_HINT,
    ExampleInput,
    InputSpec,
    Prepared,
    Readout,
    text_position_labels,
)
from encoderlens.models.encoder_decoder_tl import EncoderDecoderTLNames

ReturnType = Literal["auto", "logits", "encoder_output", "decoder_output", "all"]
_RETURN_TYPES = ("auto", "logits", "encoder_output", "decoder_output", "all", None)


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


class HookedEncoderDecoder(EncoderDecoderTLNames):
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
        - A missing decoder input raises with token ids (HF's BART silently builds one from the encoder
          input); with text, the decoder runs on its start token (TransformerLens's meaning).
        - ``generate`` does what its arguments say (greedy, sampling or beam search): the checkpoint's
          generation config (forced BOS/EOS, ``no_repeat_ngram_size``, ``min_length``, default beams) is not
          applied.
        - Text passed as ``decoder_input`` is treated as targets (see :meth:`decoder_input_from_targets`).

    Differs from TransformerLens (see ``docs/transformerlens.md``):
        - Hook names are ``encoder.blocks.{i}.*`` / ``encoder.ln_final.*``; TransformerLens's
          ``encoder.{i}.*``, ``encoder_final_ln.*`` and root ``hook_embed`` are aliases of them.
        - The decoder's self-attention is causal (and its relative buckets unidirectional), as in HF.
        - ``generate`` defaults to greedy decoding with a KV cache (HF's defaults).
    """

    family: ClassVar[str] = "encoder_decoder"

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
        """The shared token embedding (encoder, decoder, and the head when tied)."""
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
                (converted by :meth:`decoder_input_from_targets`). None with text ``input``: the decoder
                runs on its start token alone (TransformerLens's meaning; :meth:`start_decoder_input`).
                Required with token ids unless ``return_type="encoder_output"`` or the checkpoint is
                encoder-only.
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
        if decoder_input is None and decoder_attention_mask is None and is_text(input, pairs=False):
            # TransformerLens's meaning: text alone runs the decoder on its start token
            decoder_input = self.start_decoder_input(enc.tokens.shape[0])
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
        unembed: Callable[[], tuple[Tensor, Tensor]] | None = None
        if stream == "encoder":
            note = "the encoder stream is not unembedded (logits are read from cache.decoder)"
        elif self.lm_head is None:
            note = f"this {self.cfg.architecture} checkpoint has no LM head"
        else:
            note = ""
            unembed = self.folded_unembed
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
            unembed_fn=unembed,
            unembed_note=note,
        )

    # ------------------------------------------------------------------ model contract
    def _prepare_input(
        self,
        input: Any,
        decoder_input: Any = None,
        one_zero_attention_mask: Any = None,
        decoder_attention_mask: Any = None,
        **options: Any,
    ) -> Prepared:
        """Encoder text or ids, and ``decoder_input``: target text (start token + shift right), a
        :class:`TextBatch`, or decoder ids (+ ``decoder_attention_mask``) used as given."""
        if options:
            raise TypeError(
                f"unexpected options for an encoder-decoder: {sorted(options)}; accepted: decoder_input, "
                "one_zero_attention_mask, decoder_attention_mask"
            )
        enc = self.tokenize(input, one_zero_attention_mask)
        masks: dict[str | None, Tensor] = {"encoder": enc.attention_mask}
        labels: dict[str | None, list[list[str]] | None] = {
            "encoder": text_position_labels(self.tokenizer, enc.tokens, enc.attention_mask)
        }
        ids: dict[str | None, Tensor] = {"encoder": enc.tokens}
        kwargs: dict[str, Any] = {"one_zero_attention_mask": enc.attention_mask}
        if self.decoder is not None:
            if decoder_input is None and decoder_attention_mask is None and is_text(input, pairs=False):
                decoder_input = self.start_decoder_input(enc.tokens.shape[0])  # as the forward does
            if decoder_input is None:
                raise ValueError(
                    "an encoder-decoder needs decoder_input= (target text, or decoder token ids starting with the "
                    "start token) to run the decoder on token ids; e.g. prepare(model, ids, decoder_input='Hallo')"
                )
            dec = self._decoder_batch(decoder_input, decoder_attention_mask)
            if dec.tokens.shape[0] != enc.tokens.shape[0]:
                raise ValueError(
                    f"encoder batch has {enc.tokens.shape[0]} items but decoder_input has {dec.tokens.shape[0]}; "
                    "pass one decoder input per encoder input"
                )
            dec_mask = dec.attention_mask.long()
            kwargs["decoder_input"] = TextBatch(dec.tokens, dec_mask, None)
            masks["decoder"] = dec_mask
            labels["decoder"] = text_position_labels(self.tokenizer, dec.tokens, dec_mask)
            ids["decoder"] = dec.tokens
        elif decoder_input is not None:
            raise ValueError("this checkpoint is encoder-only; do not pass decoder_input")
        return Prepared(
            family=self.family,
            args=(enc.tokens,),
            kwargs=kwargs,
            masks=masks,
            labels=labels,
            token_ids=ids,
            batch_size=int(enc.tokens.shape[0]),
            alignment_hint=TOKEN_ALIGNMENT_HINT,
        )

    def input_spec(self, stream: str | None = None) -> InputSpec:
        """Each stream's token embeddings (``encoder.hook_embed`` / ``decoder.hook_embed``)."""
        stream = self.resolve_stream(stream)
        return InputSpec(f"{stream}.hook_embed", "token")

    @property
    def default_return_type(self) -> str:
        """``"logits"`` with an LM head, else the output of the last stack (``"decoder_output"`` /
        ``"encoder_output"`` for encoder-only checkpoints)."""
        if self.decoder is None:
            return "encoder_output"
        return "logits" if self.lm_head is not None else "decoder_output"

    def readout(self, stream: str | None = None) -> Readout | None:
        """The LM head (linear, scale and bias included) on the decoder stream; the encoder stream has none."""
        stream = self.resolve_stream(stream)
        if stream != "decoder" or self.lm_head is None:
            return None
        return Readout("lm_head", "lm", self.lm_head, linear=True, return_type="logits")

    def cross_attention_source(self, stream: str | None) -> str | None:
        """The decoder's cross-attention reads the encoder stream."""
        if self.resolve_stream(stream) != "decoder":
            return super().cross_attention_source(stream)
        return "encoder"

    def example_input(self) -> ExampleInput:
        text = self.tokenizer is not None
        src: Any = "Hello world" if text else torch.tensor([[1, 2, 3, 4]]) % self.cfg.d_vocab
        what = "the text 'Hello world'" if text else "4 token ids"
        if self.decoder is None:
            return ExampleInput(src, {}, f"{what} (encoder only)")
        start = self.cfg.decoder_start_token_id
        start = 0 if start is None else int(start)
        return ExampleInput(src, {"decoder_input": torch.tensor([[start, start]])}, f"{what} -> 2 decoder tokens")
