"""Greedy generation speed against HF on a random t5-small-sized model, in one process.

Run: ``PYTHONPATH=src python benchmarks/seq2seq_generate.py``. Prints wall times (best of 3) and the ratios;
also checks that both produce the same tokens.
"""

from __future__ import annotations

import time

import torch
from transformers import GenerationConfig, T5Config, T5ForConditionalGeneration

from encoderlens import HookedEncoderDecoder


def best_of(fn, n: int = 3) -> tuple[float, torch.Tensor]:
    best, out = float("inf"), None
    for _ in range(n):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    assert out is not None
    return best, out


def main() -> None:
    torch.manual_seed(0)
    cfg = T5Config(
        vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8, decoder_start_token_id=0
    )
    hf = T5ForConditionalGeneration(cfg).eval()
    model = HookedEncoderDecoder.from_pretrained(hf_model=hf)
    src = torch.randint(2, 32000, (4, 64))
    new = 48
    hf.generation_config = GenerationConfig(
        do_sample=False, num_beams=1, eos_token_id=None, pad_token_id=0, decoder_start_token_id=0, min_new_tokens=new
    )
    with torch.no_grad():
        t_hf, theirs = best_of(lambda: hf.generate(input_ids=src, max_new_tokens=new))
    t_ours, ours = best_of(lambda: model.generate(src, max_new_tokens=new, eos_token_id=()))
    t_full, _ = best_of(lambda: model.generate(src, max_new_tokens=new, eos_token_id=(), use_cache=False), n=1)
    print(f"HF generate           {t_hf:7.3f} s")
    print(f"encoderlens (cache)   {t_ours:7.3f} s   ratio {t_ours / t_hf:5.2f}")
    print(f"encoderlens (no cache){t_full:7.3f} s   ratio {t_full / t_hf:5.2f}")
    print(f"same tokens: {torch.equal(ours, theirs)}")


if __name__ == "__main__":
    main()
