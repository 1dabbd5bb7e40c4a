"""Generation entry point of :class:`~encoderlens.models.encoder_decoder.HookedEncoderDecoder` (input handling,
hooks, the activation cache of a generation); the decoding loops live in :mod:`encoderlens.models.generation`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from encoderlens.cache import ActivationCache
from encoderlens.components.heads import LMHead
from encoderlens.hooks import HookPoint, NameFilter
from encoderlens.io.text import is_text
from encoderlens.models import generation
from encoderlens.models.encoder_decoder_inputs import EncoderDecoderInputs
from encoderlens.names import _name_matcher


class EncoderDecoderGeneration(EncoderDecoderInputs):
    """``generate``: the encoder once, then the decoder step by step (greedy, sampling or beam search)."""

    lm_head: LMHead | None

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
        return_type: Literal["input", "tokens", "tensor", "str"] = "input",
        seed: int | None = None,
        freq_penalty: float = 0.0,
        verbose: bool = False,
        **unsupported: Any,
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
            freq_penalty: Sampling only (TransformerLens's keyword): lower each logit by this times the
                number of times its token already occurs in the decoder tokens.
            verbose: Show a progress bar over the steps (TransformerLens's keyword; default off).
            **unsupported: TransformerLens / HF keywords without an equivalent here raise a ``TypeError``
                naming what to use instead.

        Differs from TransformerLens: greedy by default (``do_sample=False``, HF's default; TransformerLens
        samples), ``max_new_tokens=20`` (TransformerLens: 10), a KV cache, and no progress bar by default.

        Returns:
            Tokens or strings, and the cache when ``return_cache``.
        """
        if unsupported:
            raise TypeError(_unsupported_generate_message(unsupported))
        if return_type == "tensor":
            return_type = "tokens"  # TransformerLens's name
        stack = self._decoder()
        if self.lm_head is None:
            raise ValueError(f"generate needs an LM head; this {self.cfg.architecture} checkpoint has none")
        generation.check_generate_args(
            max_new_tokens, do_sample, temperature, top_k, top_p, num_beams, early_stopping, stop_at_eos,
            return_cache, return_type, freq_penalty,
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
            match = self._with_aliases(_name_matcher(names_filter))

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
                gen=gen, use_cache=use_cache, on_recompute=forget_decoder_steps, freq_penalty=freq_penalty,
                verbose=verbose,
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


#: Keywords of TransformerLens's / HF's ``generate`` that have no equivalent here, with what to do instead.
_UNSUPPORTED_GENERATE = {
    "use_past_kv_cache": "use use_cache= (a KV cache is on by default)",
    "prepend_bos": "encoder text is tokenized with the tokenizer's own special tokens; pass token ids to control them",
    "padding_side": "encoder inputs are padded on the right with a mask; pass token ids and one_zero_attention_mask",
    "repetition_penalty": "use freq_penalty= with do_sample=True (TransformerLens's penalty)",
    "no_repeat_ngram_size": "not implemented; post-filter the returned tokens",
    "min_length": "not implemented; use stop_at_eos=False for a fixed length",
    "min_new_tokens": "not implemented; use stop_at_eos=False for a fixed length",
    "num_return_sequences": "call generate once per sample (with seed=) or repeat the input",
    "attention_mask": "pass one_zero_attention_mask=",
    "input_ids": "pass the token ids as the first argument",
}


def _unsupported_generate_message(kwargs: dict[str, Any]) -> str:
    parts = []
    for key in sorted(kwargs):
        fix = _UNSUPPORTED_GENERATE.get(key)
        parts.append(f"{key!r} ({fix})" if fix else repr(key))
    return (
        f"generate() got unsupported keyword(s) {', '.join(parts)}; supported: max_new_tokens, do_sample, "
        "temperature, top_k, top_p, freq_penalty, num_beams, length_penalty, early_stopping, eos_token_id, "
        "stop_at_eos, decoder_input, one_zero_attention_mask, use_cache, return_cache, names_filter, "
        "return_type, seed, verbose"
    )
