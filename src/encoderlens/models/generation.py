"""Generation for encoder-decoders: greedy decoding, sampling and beam search with a KV cache.

The functions take the decoder stack and the head as arguments (the encoder has run already), so any
model with a :class:`~encoderlens.components.stack.Stack` decoder reuses them;
:meth:`HookedEncoderDecoder.generate <encoderlens.models.encoder_decoder.HookedEncoderDecoder.generate>`
is the public entry point (input handling, hooks, the activation cache of a generation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import tqdm
from jaxtyping import Float, Int
from torch import Tensor

from encoderlens.components.attention import KVCache, mask_value
from encoderlens.components.position import RelativePositionBias
from encoderlens.components.stack import Stack

#: The head: decoder states ``(batch, pos, d_model)`` -> logits ``(batch, pos, d_vocab)``.
Head = Callable[[Tensor], Tensor]

#: Hooks whose last two dims are (query_pos, key_pos): during cached generation the key axis grows.
QK_HOOKS = ("hook_attn_scores", "hook_pattern", "hook_position_bias")


def check_generate_args(
    max_new_tokens: int,
    do_sample: bool,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    num_beams: int,
    early_stopping: bool | str,
    stop_at_eos: bool,
    return_cache: bool,
    return_type: str,
    freq_penalty: float = 0.0,
) -> None:
    """Refuse generation arguments that are out of range or do not combine (ValueError saying why)."""
    if freq_penalty != 0.0 and (not do_sample or num_beams > 1):
        raise ValueError(
            f"freq_penalty={freq_penalty} applies to sampling only (as in TransformerLens, where greedy decoding "
            "ignores it); pass do_sample=True, or drop freq_penalty"
        )
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
    if return_type not in ("input", "tokens", "tensor", "str"):
        raise ValueError(f"return_type must be 'input', 'tokens' (or 'tensor') or 'str', got {return_type!r}")


def as_id_tuple(x: int | Sequence[int]) -> tuple[int, ...]:
    """An ``eos_token_id`` argument (int, sequence or tensor of ints) as a tuple of ints."""
    if isinstance(x, int):
        return (x,)
    if isinstance(x, Tensor):
        return tuple(int(v) for v in x.flatten().tolist())
    try:
        return tuple(int(v) for v in x)
    except TypeError:
        raise TypeError(f"eos_token_id must be an int or a sequence of ints, got {type(x).__name__}") from None


def pick_next_token(
    logits: Float[Tensor, "batch d_vocab"],
    do_sample: bool,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    gen: torch.Generator | None,
    freq_penalty: float = 0.0,
    tokens: Int[Tensor, "batch pos"] | None = None,
) -> Int[Tensor, " batch"]:
    """The next token of each row: the argmax, or a sample (``temperature``, then ``top_k`` / ``top_p``).

    ``freq_penalty`` (sampling only, as TransformerLens): after the temperature, each logit is lowered by
    ``freq_penalty`` times the number of times its token occurs in ``tokens`` (the decoder tokens so far).
    """
    if not do_sample:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if freq_penalty != 0.0 and tokens is not None:
        counts = torch.zeros_like(logits).scatter_add_(
            -1, tokens, torch.ones(tokens.shape, dtype=logits.dtype, device=logits.device)
        )
        logits = logits - freq_penalty * counts
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


def greedy_or_sample(
    decoder: Stack,
    head: Head,
    enc_out: Float[Tensor, "batch enc_pos d_model"],
    enc_mask: Int[Tensor, "batch enc_pos"],
    prefix: Int[Tensor, "batch pos"],
    max_new_tokens: int,
    *,
    eos: tuple[int, ...],
    pad: int,
    stop_at_eos: bool = True,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    gen: torch.Generator | None = None,
    use_cache: bool = True,
    on_recompute: Callable[[], None] | None = None,
    freq_penalty: float = 0.0,
    verbose: bool = False,
) -> Int[Tensor, "batch total_pos"]:
    """Greedy decoding or sampling: extend ``prefix`` by up to ``max_new_tokens`` tokens per row.

    With ``use_cache`` each step runs the decoder on the new position only (self-attention keys and
    values are cached; cross-attention ones are computed on the first step and reused). Without it,
    every step recomputes the whole decoder and ``on_recompute`` is called before it.

    Args:
        decoder: The decoder stack (with cross-attention).
        head: Maps decoder states ``(batch, pos, d_model)`` to logits ``(batch, pos, d_vocab)``.
        enc_out: Encoder output, read by cross-attention.
        enc_mask: 1 = real encoder position.
        prefix: Decoder prefix (starting with the start token), no padding.
        max_new_tokens: Tokens to add at most.
        eos: Tokens that end a sequence.
        pad: Token written after a sequence ended.
        stop_at_eos: Stop a row at EOS and stop when every row ended.
        do_sample, temperature, top_k, top_p, gen: Sampling (see :func:`pick_next_token`).
        use_cache: Reuse keys and values between steps.
        on_recompute: Called before each full recompute (``use_cache=False``).
        freq_penalty: Sampling only: lower each logit by this times its token's count so far.
        verbose: Show a progress bar over the steps.

    Returns:
        ``(batch, prefix + new)`` token ids.
    """
    tokens = prefix
    finished = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
    kv = [(KVCache(), KVCache(static=True)) for _ in decoder.blocks] if use_cache else None
    eos_t = torch.tensor(eos, device=tokens.device, dtype=torch.long)
    for _ in tqdm.trange(max_new_tokens, disable=not verbose):
        if use_cache:
            assert kv is not None
            past = kv[0][0].length
            new = tokens[:, past:]
        else:
            past, new = 0, tokens
            if on_recompute is not None:
                on_recompute()
        key_mask = torch.ones_like(tokens)
        dec_out = decoder(new, key_mask, enc_out, enc_mask, kv, past)
        logits = head(dec_out[:, -1:])[:, 0].float().to(tokens.device)  # the head may sit elsewhere (device_map)
        next_tok = pick_next_token(logits, do_sample, temperature, top_k, top_p, gen, freq_penalty, tokens)
        if stop_at_eos and eos:
            next_tok = torch.where(finished, torch.full_like(next_tok, pad), next_tok)
            finished = finished | torch.isin(next_tok, eos_t)
        tokens = torch.cat([tokens, next_tok[:, None]], dim=1)
        if stop_at_eos and eos and bool(finished.all()):
            break
    return tokens


def beam_search(
    decoder: Stack,
    head: Head,
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
) -> Int[Tensor, "batch total_pos"]:
    """Beam search with HF's (vectorised, transformers >= 4.50) semantics; returns the best beam per input.

    State per input: ``num_beams`` running beams (log-prob sums) and the ``num_beams`` best finished
    hypotheses (length-normalised scores). Each step keeps the top ``max(2, 1 + n_eos) * num_beams``
    continuations so that enough unfinished ones remain; candidates ending in EOS (or at the length
    limit) among the top ``num_beams`` become finished hypotheses.
    """
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
    kv = [(KVCache(), KVCache(static=True)) for _ in decoder.blocks] if use_cache else None
    cur = prompt_len
    while True:
        flat = running[:, :, :cur].reshape(batch * k, cur)
        past = kv[0][0].length if kv is not None else 0
        dec_out = decoder(flat[:, past:], torch.ones_like(flat), enc_out, enc_mask, kv, past)
        logits = head(dec_out[:, -1:])[:, 0].float().to(device)  # the head may sit elsewhere (device_map)
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


def merge_steps(
    records: dict[str, list[Tensor]], n_pos: int, use_cache: bool, position_bias: RelativePositionBias | None
) -> dict[str, Tensor]:
    """Join per-step activations into the activations of one forward over all decoder positions.

    Args:
        records: Hook name -> the activation recorded at each step.
        n_pos: Decoder positions of the whole generation.
        use_cache: Whether the steps ran with a KV cache (False: the last step covers every position).
        position_bias: The decoder's relative position bias (rebuilds ``hook_position_bias`` in full).
    """
    merged: dict[str, Tensor] = {}
    for name, steps in records.items():
        if len(steps) == 1 or not use_cache:
            merged[name] = steps[-1]
            continue
        if name.endswith(QK_HOOKS) and ".cross_attn." not in name:
            if name.endswith("hook_position_bias"):
                assert position_bias is not None
                full = position_bias(n_pos, n_pos).to(steps[0].dtype).clone()
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
        elif name.endswith(QK_HOOKS):
            merged[name] = torch.cat(steps, dim=-2)
        else:
            merged[name] = torch.cat(steps, dim=1)
    return merged
