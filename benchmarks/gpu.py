"""The forward / cache / generate cases on CUDA, against HF on the same GPU: run it whenever a GPU is at hand.

BERT-base (MLM logits), T5-small (LM logits, greedy generate of 20 tokens) and HuBERT-base (CTC
logits), random weights, in ``--dtype`` (default bf16; fp16 and fp32 too). Each case is timed with
``torch.cuda.synchronize()`` around the call, in the interleaved rounds of ``common.py``, and printed
as ours / HF:

- forward, no hooks / the faster of HF eager and HF sdpa (target <= 1.0);
- ``run_with_cache`` (default filter) / HF with hidden states and attentions (target <= 1.05);
- ``run_with_cache(device="cpu")`` (offload as produced; no target: PCIe bound);
- T5 greedy ``generate`` of 20 tokens / HF ``generate``;
- with more than one CUDA device: T5 (base size) placed over every GPU with ``device_map="balanced"``
  against the same model on one GPU (forward, ``run_with_cache``, ``generate``; no target: the ratio
  is the cost of the block-boundary copies), and the largest difference between the two outputs.

Prints ``skipped: no CUDA device`` on a machine without one (and so in ``make bench`` on a CPU box).

Run: ``python benchmarks/gpu.py [--dtype bf16 --repeats 11]``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import common  # noqa: F401  (sets up paths and offline mode first)
import torch
from common import Ratio, print_table, print_times, ratio_rows, skipped, tmpdir

TITLE = "GPU: BERT-base, T5-small, HuBERT-base"
PLACEMENT_TITLE = "GPU: T5-base blocks over several GPUs (device_map='balanced') / one GPU"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    p.add_argument("--repeats", type=int, default=11)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="tiny sizes, one round")
    p.add_argument("--device", default="cuda", help="cuda (default); cpu only checks that the script runs")
    # accepted for run_all.py's shared arguments; a GPU run has its own clock (synchronised wall time)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--clock", default=None)
    p.add_argument("--tl-off", action="store_true")
    p.add_argument("--glibc-malloc-defaults", action="store_true")
    return p.parse_args()


def cuda_timed(fns: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Like ``common.time_interleaved`` with a device synchronisation before and after each call."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    with torch.inference_mode():
        for r in range(warmup + repeats):
            for n in names[r % len(names) :] + names[: r % len(names)]:
                sync()
                t0 = time.perf_counter()
                fns[n]()
                sync()
                if r >= warmup:
                    times[n].append(time.perf_counter() - t0)
    return times


def main() -> None:
    args = parse()
    if args.device == "cuda" and not torch.cuda.is_available():
        skipped(TITLE, "no CUDA device (this script times GPUs only; the CPU benchmarks are the others)")
        skipped(PLACEMENT_TITLE, "no CUDA device")
        return
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        HubertConfig,
        HubertForCTC,
        T5Config,
        T5ForConditionalGeneration,
        Wav2Vec2FeatureExtractor,
    )

    from encoderlens import HookedAudioEncoder, HookedEncoder, HookedEncoderDecoder

    dev, dtype = torch.device(args.device), DTYPES[args.dtype]
    q = args.quick
    g = torch.Generator().manual_seed(0)

    def load(hf_cls: type, cfg: object, ours_cls: type, extra: Callable[[str], None] | None = None):  # type: ignore[no-untyped-def]
        path = tmpdir(hf_cls.__name__)
        hf_cls(cfg).save_pretrained(path)
        if extra is not None:
            extra(path)
        hf = {
            impl: hf_cls.from_pretrained(path, attn_implementation=impl, dtype=dtype).to(dev).eval()
            for impl in ("eager", "sdpa")
        }
        return hf, ours_cls.from_pretrained(path, device=dev, dtype=dtype)

    fns: dict[str, Callable[[], object]] = {}
    rows: list[Ratio] = []

    def cases(name: str, hf: dict, run_hf: Callable, run_ours: Callable, cache_ours: Callable, cpu_cache: Callable):  # type: ignore[no-untyped-def]
        fns.update(
            {
                f"{name}_hf_eager": lambda: run_hf(hf["eager"], False),
                f"{name}_hf_sdpa": lambda: run_hf(hf["sdpa"], False),
                f"{name}_hf_full": lambda: run_hf(hf["eager"], True),
                f"{name}_ours": run_ours,
                f"{name}_ours_cache": cache_ours,
                f"{name}_ours_cache_cpu": cpu_cache,
            }
        )
        rows.extend(
            [
                Ratio(f"{name} forward / HF fastest", f"{name}_ours", (f"{name}_hf_eager", f"{name}_hf_sdpa"), 1.0),
                Ratio(
                    f"{name} run_with_cache / HF + hidden states + attentions",
                    f"{name}_ours_cache",
                    f"{name}_hf_full",
                    1.05,
                ),  # fmt: skip
                Ratio(
                    f"{name} run_with_cache(device='cpu') / HF + hidden + attentions",
                    f"{name}_ours_cache_cpu",
                    f"{name}_hf_full",
                ),  # fmt: skip
            ]
        )

    # BERT-base, 8 x 128
    bcfg = BertConfig(**({"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4} if q else {}))
    bert_hf, bert = load(BertForMaskedLM, bcfg, HookedEncoder)
    tok = torch.randint(1000, bcfg.vocab_size, (2, 16) if q else (8, 128), generator=g).to(dev)
    mask = torch.ones_like(tok)
    cases(
        "BERT",
        bert_hf,
        lambda m, full: m(input_ids=tok, attention_mask=mask, output_hidden_states=full, output_attentions=full),
        lambda: bert(tok, one_zero_attention_mask=mask),
        lambda: bert.run_with_cache(tok, one_zero_attention_mask=mask),
        lambda: bert.run_with_cache(tok, one_zero_attention_mask=mask, device="cpu"),
    )
    # T5-small, 8 x 128 -> 32
    tcfg = T5Config(
        vocab_size=32128, d_model=64 if q else 512, d_kv=64, d_ff=2048, num_layers=2 if q else 6, num_heads=8,
        decoder_start_token_id=0,
    )  # fmt: skip
    t5_hf, t5 = load(T5ForConditionalGeneration, tcfg, HookedEncoderDecoder)
    src = torch.randint(2, 32128, (2, 16) if q else (8, 128), generator=g).to(dev)
    smask = torch.ones_like(src)
    dec = torch.randint(2, 32128, (2, 8) if q else (8, 32), generator=g).to(dev)
    dec[:, 0] = 0
    t5_hf["eager"].generation_config.eos_token_id = None
    cases(
        "T5",
        t5_hf,
        lambda m, full: m(
            input_ids=src,
            attention_mask=smask,
            decoder_input_ids=dec,
            output_hidden_states=full,
            output_attentions=full,
        ),  # fmt: skip
        lambda: t5(src, decoder_input=dec, one_zero_attention_mask=smask),
        lambda: t5.run_with_cache(src, decoder_input=dec, one_zero_attention_mask=smask),
        lambda: t5.run_with_cache(src, decoder_input=dec, one_zero_attention_mask=smask, device="cpu"),
    )
    fns["T5_hf_generate"] = lambda: t5_hf["eager"].generate(
        input_ids=src, attention_mask=smask, max_new_tokens=20, do_sample=False, num_beams=1, pad_token_id=0
    )
    fns["T5_ours_generate"] = lambda: t5.generate(
        src, max_new_tokens=20, one_zero_attention_mask=smask, stop_at_eos=False, return_type="tokens"
    )
    rows.append(Ratio("T5 greedy generate 20 tokens / HF generate", "T5_ours_generate", "T5_hf_generate", 1.2))
    # HuBERT-base CTC, 4 x 2 s
    hcfg = HubertConfig(**({"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4} if q else {}))
    fe = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=False)
    hub_hf, hub = load(HubertForCTC, hcfg, HookedAudioEncoder, fe.save_pretrained)
    waves = [0.3 * torch.randn(4000 if q else 32000, generator=g) for _ in range(4)]
    batch = hub.prepare(waves)
    values = batch.input_values.to(dev, dtype)
    cases(
        "HuBERT",
        hub_hf,
        lambda m, full: m(input_values=values, output_hidden_states=full, output_attentions=full),
        lambda: hub(batch),
        lambda: hub.run_with_cache(batch),
        lambda: hub.run_with_cache(batch, device="cpu"),
    )

    times = cuda_timed(fns, repeats=1 if q else args.repeats, warmup=0 if q else args.warmup)
    name = torch.cuda.get_device_name() if dev.type == "cuda" else str(dev)
    print_table(f"{TITLE} ({name}, {args.dtype}, synchronised wall clock, {len(times['BERT_ours'])} rounds)",
                ratio_rows(times, rows))  # fmt: skip
    if dev.type == "cuda":
        print(f"\npeak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    print_times("times", times)
    placement(args, dtype)


def placement(args: argparse.Namespace, dtype: torch.dtype) -> None:
    """T5 with its blocks over every GPU against the same checkpoint on one GPU."""
    n = torch.cuda.device_count()
    if args.device != "cuda" or n < 2:
        skipped(PLACEMENT_TITLE, f"needs more than one CUDA device (found {n})")
        return
    from transformers import T5Config, T5ForConditionalGeneration

    from encoderlens import HookedEncoderDecoder

    q = args.quick
    cfg = T5Config(
        vocab_size=32128, d_model=64 if q else 768, d_kv=64, d_ff=3072, num_layers=2 if q else 12, num_heads=12,
        decoder_start_token_id=0,
    )  # fmt: skip
    path = tmpdir("T5_placement")
    T5ForConditionalGeneration(cfg).save_pretrained(path)
    one = HookedEncoderDecoder.from_pretrained(path, device="cuda:0", dtype=dtype)
    split = HookedEncoderDecoder.from_pretrained(path, device_map="balanced", dtype=dtype)
    assert split.hf_device_map is not None
    used = sorted(set(split.hf_device_map.values()))
    g = torch.Generator().manual_seed(0)
    src = torch.randint(2, 32128, (2, 16) if q else (8, 128), generator=g).to("cuda:0")
    smask = torch.ones_like(src)
    dec = torch.randint(2, 32128, (2, 8) if q else (8, 32), generator=g).to("cuda:0")
    dec[:, 0] = 0
    gen = {"max_new_tokens": 20, "one_zero_attention_mask": smask, "stop_at_eos": False, "return_type": "tokens"}
    fns: dict[str, Callable[[], object]] = {}
    for name, m in (("one", one), ("split", split)):
        fns[f"{name}_forward"] = lambda m=m: m(src, decoder_input=dec, one_zero_attention_mask=smask)
        fns[f"{name}_cache"] = lambda m=m: m.run_with_cache(src, decoder_input=dec, one_zero_attention_mask=smask)
        fns[f"{name}_generate"] = lambda m=m: m.generate(src, **gen)
    times = cuda_timed(fns, repeats=1 if q else args.repeats, warmup=0 if q else args.warmup)
    rows = [
        Ratio(f"T5 {case}, over {len(used)} devices / one GPU", f"split_{case}", f"one_{case}")
        for case in ("forward", "cache", "generate")
    ]
    print_table(f"{PLACEMENT_TITLE} ({args.dtype}, devices {used})", ratio_rows(times, rows))
    with torch.inference_mode():
        a = one(src, decoder_input=dec, one_zero_attention_mask=smask).float()
        b = split(src, decoder_input=dec, one_zero_attention_mask=smask).to(a.device).float()
        same_tokens = torch.equal(one.generate(src, **gen), split.generate(src, **gen).to(src.device))
    print(f"\nmax |split - one| logits: {(a - b).abs().max().item():.3g}; same generated tokens: {same_tokens}")
    print_times("times", times)


if __name__ == "__main__":
    main()
