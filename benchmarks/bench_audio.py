"""HookedAudioEncoder vs HF HubertForCTC on a HuBERT-base config (random weights), 4 x 2 s audio, CPU, fp32.

Prints ratios measured in one process (see ``common.py`` for the timing method):

- no-hook forward (CTC logits) vs the faster of HF eager and HF sdpa in each round (target <= 1.0);
- full ``run_with_cache`` vs HF with ``output_hidden_states=True, output_attentions=True`` (target <= 1.05).

Both models get the same padded, normalised batch (our ``prepare`` runs once, outside the timing).
Prints ``skipped: not available`` when this encoderlens has no ``HookedAudioEncoder``.

Run: ``python benchmarks/bench_audio.py [--threads 2 --repeats 7]``.
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

TITLE = "HuBERT-base audio encoder, batch 4 x 2 s (16 kHz)"


def hubert_config(quick: bool):  # type: ignore[no-untyped-def]
    from transformers import HubertConfig

    if quick:
        return HubertConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            conv_dim=(16, 16), conv_kernel=(10, 3), conv_stride=(5, 2), num_conv_pos_embeddings=8,
            num_conv_pos_embedding_groups=4,
        )  # fmt: skip
    return HubertConfig()  # the defaults are hubert-base: 768 wide, 12 layers, 12 heads, 7 conv layers


def main() -> None:
    args = parse_args(__doc__ or "")
    if not has_encoderlens("HookedAudioEncoder"):
        skipped(TITLE, "not available (this encoderlens has no HookedAudioEncoder)")
        return
    setup(args.threads, args.glibc_malloc_defaults)
    from transformers import HubertForCTC, Wav2Vec2FeatureExtractor

    from encoderlens import HookedAudioEncoder

    cfg = hubert_config(args.quick)
    path = tmpdir("hubert")
    HubertForCTC(cfg).save_pretrained(path)  # with the CTC head: the forward includes the logits
    # hubert-base's feature extractor: normalise, no attention mask (group-norm front end)
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=False).save_pretrained(path)
    hf_eager = HubertForCTC.from_pretrained(path, attn_implementation="eager").eval()
    hf_sdpa = HubertForCTC.from_pretrained(path, attn_implementation="sdpa").eval()
    ours = HookedAudioEncoder.from_pretrained(path)
    n_items, seconds = (2, 0.25) if args.quick else (4, 2.0)
    g = torch.Generator().manual_seed(0)
    waves = [0.3 * torch.randn(int(seconds * 16000), generator=g) for _ in range(n_items)]
    batch = ours.prepare(waves)
    values = batch.input_values
    n_hooks = len(ours.hook_names())
    n_cached = sum(not n.endswith(opt_in_hooks()) for n in ours.hook_names())

    fns = {
        "hf_eager": lambda: hf_eager(input_values=values),
        "hf_sdpa": lambda: hf_sdpa(input_values=values),
        "hf_eager_full": lambda: hf_eager(input_values=values, output_hidden_states=True, output_attentions=True),
        "ours": lambda: ours(batch, return_type="logits"),
        "ours_cache_all": lambda: ours.run_with_cache(batch, return_type="logits"),
    }
    rows = [
        Ratio("forward (CTC logits), no hooks / HF fastest (eager or sdpa)", "ours", ("hf_eager", "hf_sdpa"), 1.0),
        Ratio("forward, no hooks / HF eager", "ours", "hf_eager"),
        Ratio("forward, no hooks / HF sdpa", "ours", "hf_sdpa"),
        Ratio(
            f"run_with_cache (default: {n_cached} of {n_hooks} hooks) / HF eager + hidden states + attentions",
            "ours_cache_all",
            "hf_eager_full",
            1.05,
        ),
    ]
    times = time_cases(fns, rows, args)
    print_table(
        f"{TITLE} (threads={args.threads}, fp32, {args.clock} clock, {len(times['ours'])} rounds)",
        ratio_rows(times, rows),
    )
    print_times("times", times)


if __name__ == "__main__":
    main()
