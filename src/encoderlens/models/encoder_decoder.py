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
from typing import Any, ClassVar, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from encoderlens.cache import ActivationCache, StreamSpec, fold_norm_into_unembed
from encoderlens.components.embed import Embed
from encoderlens.components.heads import LMHead
from encoderlens.components.stack import Stack
from encoderlens.config import EncoderDecoderConfig
from encoderlens.hooks import HookPoint, NameFilter, _name_matcher
from encoderlens.io.checkpoint import Checkpoint, load_tokenizer
from encoderlens.io.text import TextBatch, as_token_tensor, check_mask, is_text, is_tokenizer_output, text_batch
from encoderlens.models import generation
from encoderlens.models.base import HookedModel
from encoderlens.models.contract import (
    TOKEN_ALIGNMENT_HINT,
    ExampleInput,
    Prepared,
    Readout,
    text_position_labels,
)

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


class HookedEncoderDecoder(HookedModel):
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
        token ids ``(pos,)`` / ``(batch, pos)`` with an optional mask, a tokenizer's output
        (``BatchEncoding`` / dict with ``input_ids``) or a :class:`TextBatch`
        (decided by :func:`encoderlens.io.text.text_batch`)."""
        return self._batch(input, one_zero_attention_mask, self.encoder, "input", "one_zero_attention_mask")

    def _batch(self, input: Any, mask: Any, stack: Stack, what: str, mask_name: str) -> TextBatch:
        batch = text_batch(
            input,
            mask,
            tokenizer=self.tokenizer,
            d_vocab=stack.d_vocab,
            max_positions=stack.max_positions,
            pairs=False,
            what=what,
            mask_name=mask_name,
        )
        device = self.embed.W_E.device
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
        if isinstance(targets, Tensor) or not (
            is_text(targets, pairs=False) or isinstance(targets, TextBatch) or is_tokenizer_output(targets)
        ):
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
        if is_text(decoder_input, pairs=False):
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
        generation.check_generate_args(
            max_new_tokens, do_sample, temperature, top_k, top_p, num_beams, early_stopping, stop_at_eos,
            return_cache, return_type,
        )  # fmt: skip
        eos = self.cfg.eos_token_ids if eos_token_id is None else generation.as_id_tuple(eos_token_id)
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
                tokens = generation.beam_search(
                    stack, self.lm_head, enc_out, enc.attention_mask, prefix, max_new_tokens, num_beams, eos, pad,
                    length_penalty, early_stopping, use_cache,
                )  # fmt: skip
                return self._format_generated(tokens, input, return_type)

            def forget_decoder_steps() -> None:
                # a full recompute: the last step's decoder activations cover every position
                for name in [n for n in records if n.startswith("decoder.")]:
                    del records[name]

            tokens = generation.greedy_or_sample(
                stack, self.lm_head, enc_out, enc.attention_mask, prefix, max_new_tokens, eos=eos, pad=pad,
                stop_at_eos=stop_at_eos, do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
                gen=gen, use_cache=use_cache, on_recompute=forget_decoder_steps,
            )  # fmt: skip

        out = self._format_generated(tokens, input, return_type)
        if return_cache:
            bias = self.decoder.position_bias if self.decoder is not None else None
            cache_dict = generation.merge_steps(records, tokens.shape[1] - 1, use_cache, bias)
            return out, ActivationCache(cache_dict, self)
        return out

    def _format_generated(self, tokens: Tensor, input: Any, return_type: str) -> Any:
        if return_type == "str" or (return_type == "input" and is_text(input, pairs=False)):
            if self.tokenizer is None:
                raise ValueError("return_type='str' needs a tokenizer; this model was loaded without one")
            texts = [self.tokenizer.decode(row.tolist(), skip_special_tokens=True) for row in tokens]
            return texts[0] if isinstance(input, str) else texts
        return tokens

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
            if decoder_input is None:
                raise ValueError(
                    "an encoder-decoder needs decoder_input= (target text, or decoder token ids starting with the "
                    "start token) to run the decoder; e.g. prepare(model, 'translate English to German: Hello', "
                    "decoder_input='Hallo')"
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
