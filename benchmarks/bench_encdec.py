"""HookedEncoderDecoder vs HF T5ForConditionalGeneration on a T5-small config (random weights), CPU, fp32.

Input 8 x 128 tokens, decoder 32 target tokens. Prints ratios measured in one process (see
``common.py`` for the timing method):

- no-hook forward (LM logits) vs the faster of HF eager and HF sdpa in each round (target <= 1.0);
- full ``run_with_cache`` (both stacks) vs HF with ``output_hidden_states=True, output_attentions=True``
  (target <= 1.05);
- greedy ``generate`` of 20 and 60 new tokens with hooks active (a hook on every decoder
  ``hook_resid_post``) vs HF ``generate`` (target <= 1.2). EOS is switched off on both sides, so each
  generates exactly that many tokens.

Prints ``skipped: not available`` when this encoderlens has no ``HookedEncoderDecoder``.

Run: ``python benchmarks/bench_encdec.py [--threads 2 --repeats 7]``.
"""

from __future__ import annotations

import common  # noqa: F401  (sets up paths and offline mode first)
import torch
from common import (
    Ratio,
    has_encoderlens,
    opt_in_hooks,
    parse_args,
    print_table,
    print_times,
    ratio_rows,
    setup,
    skipped,
    time_cases,
    tmpdir,
)

TITLE = "T5-small encoder-decoder, batch 8 x 128 -> 32"


def t5_config(quick: bool):  # type: ignore[no-untyped-def]
    from transformers import T5Config

    if quick:
        return T5Config(vocab_size=99, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, decoder_start_token_id=0)
    # t5-small: 512 wide, 6 + 6 layers, 8 heads of 64, relu MLP of 2048, 32128 tokens
    return T5Config(
        vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8, decoder_start_token_id=0
    )


def main() -> None:
    args = parse_args(__doc__ or "")
    if not has_encoderlens("HookedEncoderDecoder"):
        skipped(TITLE, "not available (this encoderlens has no HookedEncoderDecoder)")
        return
    setup(args.threads, args.glibc_malloc_defaults)
    from transformers import T5ForConditionalGeneration

    from encoderlens import HookedEncoderDecoder

    cfg = t5_config(args.quick)
    path = tmpdir("t5")
    T5ForConditionalGeneration(cfg).save_pretrained(path)
    hf = T5ForConditionalGeneration.from_pretrained(path, attn_implementation="eager").eval()
    hf_sdpa = T5ForConditionalGeneration.from_pretrained(path, attn_implementation="sdpa").eval()
    hf.generation_config.eos_token_id = None  # generate exactly max_new_tokens, as ours with stop_at_eos=False
    ours = HookedEncoderDecoder.from_pretrained(path)
    batch, src, tgt = (2, 16, 8) if args.quick else (8, 128, 32)
    new_tokens = (3, 6) if args.quick else (20, 60)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(2, cfg.vocab_size, (batch, src), generator=g)
    mask = torch.ones_like(tokens)
    dec = torch.randint(2, cfg.vocab_size, (batch, tgt), generator=g)
    dec[:, 0] = 0  # T5 starts decoding with the pad token
    n_hooks = len(ours.hook_names())
    n_cached = sum(not n.endswith(opt_in_hooks()) for n in ours.hook_names())

    def noop(x: torch.Tensor, hook: object) -> None:
        return None

    steer = [(lambda n: n.startswith("decoder.") and n.endswith("hook_resid_post"), noop)]

    def ours_generate(n: int) -> object:
        with ours.hooks(fwd_hooks=steer):
            return ours.generate(
                tokens, max_new_tokens=n, one_zero_attention_mask=mask, stop_at_eos=False, return_type="tokens"
            )

    def hf_generate(n: int) -> object:
        return hf.generate(
            input_ids=tokens, attention_mask=mask, max_new_tokens=n, do_sample=False, num_beams=1, pad_token_id=0
        )

    fns = {
        "hf_eager": lambda: hf(input_ids=tokens, attention_mask=mask, decoder_input_ids=dec),
        "hf_sdpa": lambda: hf_sdpa(input_ids=tokens, attention_mask=mask, decoder_input_ids=dec),
        "hf_eager_full": lambda: hf(
            input_ids=tokens,
            attention_mask=mask,
            decoder_input_ids=dec,
            output_hidden_states=True,
            output_attentions=True,
        ),
        "ours": lambda: ours(tokens, decoder_input=dec, one_zero_attention_mask=mask, return_type="logits"),
        "ours_cache_all": lambda: ours.run_with_cache(
            tokens, decoder_input=dec, one_zero_attention_mask=mask, return_type="logits"
        ),
    }
    for n in new_tokens:
        fns[f"hf_generate_{n}"] = lambda n=n: hf_generate(n)
        fns[f"ours_generate_{n}"] = lambda n=n: ours_generate(n)
    # same tokens on both sides (greedy, no EOS): a cheap check that the comparison is like for like
    with torch.inference_mode():
        a, b = ours_generate(new_tokens[0]), hf_generate(new_tokens[0])
    same = torch.equal(torch.as_tensor(a), b)
    rows = [
        Ratio("forward (LM logits), no hooks / HF fastest (eager or sdpa)", "ours", ("hf_eager", "hf_sdpa"), 1.0),
        Ratio("forward, no hooks / HF eager", "ours", "hf_eager"),
        Ratio("forward, no hooks / HF sdpa", "ours", "hf_sdpa"),
        Ratio(
            f"run_with_cache (default: {n_cached} of {n_hooks} hooks, both stacks) / HF eager + hidden states + "
            "attentions",
            "ours_cache_all",
            "hf_eager_full",
            1.05,
        ),
    ]
    rows += [
        Ratio(
            f"greedy generate {n} new tokens, hooks active / HF generate", f"ours_generate_{n}", f"hf_generate_{n}", 1.2
        )
        for n in new_tokens
    ]
    times = time_cases(fns, rows, args)
    print_table(
        f"{TITLE} (threads={args.threads}, fp32, {args.clock} clock, {len(times['ours'])} rounds)",
        ratio_rows(times, rows),
    )
    print(f"\ngenerated tokens identical to HF's: {same}")
    print_times("times", times)


if __name__ == "__main__":
    main()
