"""HookedEncoder vs HF BertForMaskedLM on a BERT-base config (random weights), CPU, fp32.

Prints ratios measured in one process (see ``common.py`` for the timing method):

- no-hook forward (MLM logits) vs the faster of HF eager and HF sdpa in each round (target <= 1.0);
- full ``run_with_cache`` (every hook point) vs HF with ``output_hidden_states=True,
  output_attentions=True`` (target <= 1.05);
- TransformerLens' HookedEncoder side by side, when ``transformer_lens`` is installed.

Run: ``python benchmarks/bench_encoder.py [--threads 2 --repeats 7]``.
"""

from __future__ import annotations

import common  # noqa: F401  (sets up paths and offline mode first)
import torch
from common import (
    Ratio,
    opt_in_hooks,
    parse_args,
    print_table,
    print_times,
    ratio_rows,
    setup,
    time_cases,
    tmpdir,
)

TITLE = "BERT-base encoder, batch 8 x seq 128"


def bert_config(quick: bool):  # type: ignore[no-untyped-def]
    from transformers import BertConfig

    if quick:
        return BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    return BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)


def tl_cases(path: str, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[dict, list[Ratio]]:
    """TransformerLens timings on the same weights, when it is installed (else nothing, with a note).

    TransformerLens computes the MLM logits, so its reference is HF ``BertForMaskedLM`` (eager) on the
    same weights: the ratios say what TransformerLens adds to the HF model, as ours do.
    """
    from common import transformer_lens

    tl = transformer_lens()
    if tl is None:
        print("TransformerLens: not installed (pip install transformer-lens to time it side by side)")
        return {}, []
    from transformers import BertForMaskedLM

    hf_mlm = BertForMaskedLM.from_pretrained(path, attn_implementation="eager").eval()
    try:
        from transformer_lens.model_bridge import TransformerBridge  # TransformerLens >= 4

        tl_model = TransformerBridge.boot_transformers(path, hf_model=hf_mlm)
        run = lambda: tl_model(tokens, attention_mask=mask)  # noqa: E731
        cache = lambda: tl_model.run_with_cache(tokens, attention_mask=mask)  # noqa: E731
        kind = "TransformerBridge"
    except ImportError:
        try:  # TransformerLens 2.x / 3.x
            from transformer_lens import HookedEncoder as TLHookedEncoder

            tl_model = TLHookedEncoder.from_pretrained("bert-base-cased", hf_model=hf_mlm).eval()
            run = lambda: tl_model(tokens, one_zero_attention_mask=mask)  # noqa: E731
            cache = lambda: tl_model.run_with_cache(tokens, one_zero_attention_mask=mask)  # noqa: E731
            kind = "HookedEncoder"
        except Exception as e:  # its API moves between versions: report, do not fail the benchmark
            print(f"TransformerLens: installed but could not be built here ({type(e).__name__}: {e})")
            return {}, []
    try:
        from importlib.metadata import version

        tl_version = version("transformer-lens")
    except Exception:
        tl_version = getattr(tl, "__version__", "?")
    print(f"TransformerLens {tl_version}: {kind}")
    fns = {
        "hf_mlm": lambda: hf_mlm(input_ids=tokens, attention_mask=mask),
        "hf_mlm_full": lambda: hf_mlm(
            input_ids=tokens, attention_mask=mask, output_hidden_states=True, output_attentions=True
        ),
        "tl": run,
        "tl_cache_all": cache,
    }
    rows = [
        Ratio(f"TransformerLens {kind} forward / HF MLM eager", "tl", "hf_mlm"),
        Ratio(
            f"TransformerLens {kind} run_with_cache / HF MLM eager + hidden states + attentions",
            "tl_cache_all",
            "hf_mlm_full",
        ),
    ]
    return fns, rows


def main() -> None:
    args = parse_args(__doc__ or "")
    setup(args.threads, args.glibc_malloc_defaults)
    from transformers import BertForMaskedLM

    from encoderlens import HookedEncoder

    hf_cfg = bert_config(args.quick)
    path = tmpdir("bert")
    BertForMaskedLM(hf_cfg).save_pretrained(path)  # with the MLM head: the forward includes the logits
    hf_eager = BertForMaskedLM.from_pretrained(path, attn_implementation="eager").eval()
    hf_sdpa = BertForMaskedLM.from_pretrained(path, attn_implementation="sdpa").eval()
    ours = HookedEncoder.from_pretrained(path)
    batch, seq = (2, 16) if args.quick else (8, 128)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, hf_cfg.vocab_size, (batch, seq), generator=g)
    mask = torch.ones_like(tokens)
    n_hooks = len(ours.hook_names())
    n_cached = sum(not n.endswith(opt_in_hooks()) for n in ours.hook_names())

    def patch_resid(x: torch.Tensor, hook: object) -> torch.Tensor:
        return x * 1.0

    fns = {
        "hf_eager": lambda: hf_eager(input_ids=tokens, attention_mask=mask),
        "hf_sdpa": lambda: hf_sdpa(input_ids=tokens, attention_mask=mask),
        "hf_eager_full": lambda: hf_eager(
            input_ids=tokens, attention_mask=mask, output_hidden_states=True, output_attentions=True
        ),
        "ours": lambda: ours(tokens, one_zero_attention_mask=mask, return_type="logits"),
        "ours_cache_all": lambda: ours.run_with_cache(tokens, one_zero_attention_mask=mask, return_type="logits"),
        "ours_cache_every": lambda: ours.run_with_cache(
            tokens, one_zero_attention_mask=mask, return_type="logits", names_filter=lambda n: True
        ),
        "ours_cache_resid_pattern": lambda: ours.run_with_cache(
            tokens,
            one_zero_attention_mask=mask,
            return_type="logits",
            names_filter=lambda n: n.endswith(("hook_resid_post", "hook_pattern")),
        ),
        "ours_hook_every_resid": lambda: ours.run_with_hooks(
            tokens,
            one_zero_attention_mask=mask,
            return_type="logits",
            fwd_hooks=[(lambda n: n.endswith("hook_resid_post"), patch_resid)],
        ),
    }
    tl_fns, tl_rows = tl_cases(path, tokens, mask) if not args.tl_off else ({}, [])
    fns.update(tl_fns)

    rows = [
        Ratio("forward (MLM logits), no hooks / HF fastest (eager or sdpa)", "ours", ("hf_eager", "hf_sdpa"), 1.0),
        Ratio("forward, no hooks / HF eager", "ours", "hf_eager"),
        Ratio("forward, no hooks / HF sdpa", "ours", "hf_sdpa"),
        Ratio(
            f"run_with_cache (default: {n_cached} of {n_hooks} hooks) / HF eager + hidden states + attentions",
            "ours_cache_all",
            "hf_eager_full",
            1.05,
        ),
        Ratio(
            f"run_with_cache (all {n_hooks} hook points, hook_result too) / HF eager + hidden states + attentions",
            "ours_cache_every",
            "hf_eager_full",
        ),
        Ratio(
            "run_with_cache (resid_post + pattern) / HF eager + hidden states + attentions",
            "ours_cache_resid_pattern",
            "hf_eager_full",
        ),
        Ratio("hook on every resid_post / HF eager", "ours_hook_every_resid", "hf_eager"),
        *tl_rows,
    ]
    times = time_cases(fns, rows, args)
    print_table(
        f"{TITLE} (threads={args.threads}, fp32, {args.clock} clock, {len(times['ours'])} rounds)",
        ratio_rows(times, rows),
    )
    print_times("times", times)


if __name__ == "__main__":
    main()
