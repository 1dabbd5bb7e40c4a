"""HookedWhisper vs HF WhisperForConditionalGeneration on a whisper-tiny config (random weights), CPU, fp32.

Input: 2 log-mel windows of 30 s (3000 frames, 1500 encoder positions), decoder 24 tokens. Prints
ratios measured in one process (see ``common.py`` for the timing method):

- no-hook forward (logits, from log-mel features) vs HF eager (target <= 1.05);
- greedy ``generate`` of 20 new tokens with hooks active (a hook on every decoder
  ``hook_resid_post``) vs HF ``generate`` (target <= 1.1). The end-of-text token is suppressed on both
  sides, so each generates exactly that many tokens.

Prints ``skipped: not available`` when this encoderlens has no ``HookedWhisper``.

Run: ``python benchmarks/bench_whisper.py [--threads 2 --repeats 7]``.
"""

from __future__ import annotations

import common  # noqa: F401  (sets up paths and offline mode first)
import torch
from common import (
    Ratio,
    has_encoderlens,
    parse_args,
    print_table,
    print_times,
    ratio_rows,
    setup,
    skipped,
    time_cases,
    tmpdir,
)

TITLE = "Whisper-tiny, batch 2 x 30 s -> 24 tokens"
START, EOS, NO_TS = 50257, 50256, 50362


def whisper_config(quick: bool):  # type: ignore[no-untyped-def]
    from transformers import WhisperConfig

    common_kw = dict(
        vocab_size=51864, num_mel_bins=80, max_source_positions=1500, max_target_positions=448,
        pad_token_id=EOS, eos_token_id=EOS, bos_token_id=EOS, decoder_start_token_id=START,
    )  # fmt: skip
    if quick:
        return WhisperConfig(
            d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
            encoder_ffn_dim=64, decoder_ffn_dim=64, **common_kw,
        )  # fmt: skip
    # whisper-tiny.en: 384 wide, 4 + 4 layers, 6 heads, MLP 1536
    return WhisperConfig(
        d_model=384, encoder_layers=4, decoder_layers=4, encoder_attention_heads=6, decoder_attention_heads=6,
        encoder_ffn_dim=1536, decoder_ffn_dim=1536, **common_kw,
    )  # fmt: skip


def main() -> None:
    args = parse_args(__doc__ or "")
    if not has_encoderlens("HookedWhisper"):
        skipped(TITLE, "not available (this encoderlens has no HookedWhisper)")
        return
    setup(args.threads, args.glibc_malloc_defaults)
    from transformers import GenerationConfig, WhisperForConditionalGeneration

    from encoderlens import HookedWhisper

    cfg = whisper_config(args.quick)
    path = tmpdir("whisper")
    hf = WhisperForConditionalGeneration(cfg)
    gen = GenerationConfig(
        decoder_start_token_id=START, eos_token_id=EOS, pad_token_id=EOS, no_timestamps_token_id=NO_TS,
        is_multilingual=False, suppress_tokens=[EOS], begin_suppress_tokens=[EOS], max_length=448,
    )  # fmt: skip
    hf.generation_config = gen
    hf.save_pretrained(path)
    hf = WhisperForConditionalGeneration.from_pretrained(path, attn_implementation="eager").eval()
    ours = HookedWhisper.from_pretrained(path)
    batch, tgt, new = (1, 6, 3) if args.quick else (2, 24, 20)
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(batch, 80, 3000, generator=g)
    dec = torch.randint(0, EOS, (batch, tgt), generator=g)
    dec[:, 0] = START

    def noop(x: torch.Tensor, hook: object) -> None:
        return None

    steer = [(lambda n: n.startswith("decoder.") and n.endswith("hook_resid_post"), noop)]

    def ours_generate() -> object:
        with ours.hooks(fwd_hooks=steer):
            return ours.generate(input_features=feats, max_new_tokens=new)

    def hf_generate() -> object:
        return hf.generate(input_features=feats, max_new_tokens=new)

    fns = {
        "hf_eager": lambda: hf(input_features=feats, decoder_input_ids=dec),
        "ours": lambda: ours(input_features=feats, decoder_input=dec, return_type="logits"),
        "hf_generate": hf_generate,
        "ours_generate": ours_generate,
    }
    with torch.inference_mode():
        a, b = ours_generate(), hf_generate()
    same = torch.equal(torch.as_tensor(a)[:, 2:], b)  # ours keeps the 2-token prompt
    rows = [
        Ratio("forward (logits), no hooks / HF eager", "ours", "hf_eager", 1.05),
        Ratio(f"greedy generate {new} new tokens, hooks active / HF generate", "ours_generate", "hf_generate", 1.1),
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
