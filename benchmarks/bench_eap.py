"""Cost of edge attribution patching and of batched integrated gradients (prints, asserts nothing).

- EAP: counts the forwards (a hook on the stream's first residual) and backward passes (calls of
  ``torch.autograd.grad``) of one ``edge_attribution`` call, times it, and compares with one forward,
  one forward + backward, and real single-edge ablation (timed on a sample, extrapolated to every edge).
- Integrated gradients: 64 interpolation steps batched 16 at a time vs one at a time.

Model: a pre-LN BERT-shaped encoder with random weights (EAP needs a pre-LN stream).

    python benchmarks/bench_eap.py            # 256 wide, 4 layers, 8 heads, 8 x 32 tokens
    python benchmarks/bench_eap.py --quick    # tiny sizes (checks the script runs)
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
from transformers import BertConfig, BertForMaskedLM

from encoderlens import HookedEncoder
from encoderlens.analysis import ablate_edges, attribute_input, edge_attribution, token_score


def build(width: int, layers: int, heads: int) -> HookedEncoder:
    torch.manual_seed(0)
    hf = BertForMaskedLM(
        BertConfig(
            vocab_size=1000,
            hidden_size=width,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=4 * width,
            max_position_embeddings=128,
        )
    ).eval()
    base = HookedEncoder.from_pretrained(hf_model=hf)
    c = base.cfg
    cfg = dataclasses.replace(
        c,
        stack=dataclasses.replace(c.stack, norm_position="pre", final_norm=True),
        embed=dataclasses.replace(c.embed, norm=None),
    )
    model = HookedEncoder(cfg, tokenizer=None)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.1 if p.ndim == 1 else 0.5 / width**0.5))
            if name.endswith(".w"):
                p.add_(1.0)
    return model.eval()


def timed(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    width, layers, heads, batch, seq = (32, 2, 2, 2, 8) if args.quick else (256, 4, 8, 8, 32)
    model = build(width, layers, heads)
    g = torch.Generator().manual_seed(2)
    tok = torch.randint(5, 1000, (batch, seq), generator=g)
    cor = tok.clone()
    cor[:, 3] = 7

    def metric(logits):
        return logits[:, 5, 11].sum() - logits[:, 5, 12].sum()

    counts = {"fwd": 0, "bwd": 0}
    grad = torch.autograd.grad

    def counting_grad(*a, **k):
        counts["bwd"] += 1
        return grad(*a, **k)

    torch.autograd.grad = counting_grad  # type: ignore[assignment]
    model.add_hook("blocks.0.hook_resid_pre", lambda x, hook: counts.__setitem__("fwd", counts["fwd"] + 1))
    eap = edge_attribution(model, tok, cor, metric)
    model.reset_hooks()
    torch.autograd.grad = grad  # type: ignore[assignment]
    n_edges = len(eap.graph)
    t_eap = timed(lambda: edge_attribution(model, tok, cor, metric))
    t_fwd = timed(lambda: model(tok))

    def fwd_bwd():
        with torch.enable_grad():
            metric(model(tok)).backward()
        model.zero_grad(set_to_none=True)

    t_fb = timed(fwd_bwd)
    sample = list(range(0, n_edges, max(1, n_edges // 16)))[:16]
    t_sample = timed(lambda: ablate_edges(model, tok, cor, metric, [[e] for e in sample], chunk_size=8), repeats=1)
    t_brute = t_sample / len(sample) * n_edges
    print(f"## EAP on a pre-LN encoder ({width} wide, {layers} layers, {heads} heads, {batch} x {seq} tokens)\n")
    print("| quantity | value |\n|---|---|")
    print(f"| edges | {n_edges} |")
    print(f"| forwards per edge_attribution | {counts['fwd']} |")
    print(f"| backward passes per edge_attribution | {counts['bwd']} |")
    print(f"| edge_attribution | {t_eap * 1e3:.1f} ms |")
    print(f"| one forward / one forward+backward | {t_fwd * 1e3:.1f} ms / {t_fb * 1e3:.1f} ms |")
    print(f"| EAP / (2 forwards + 1 backward) | {t_eap / (t_fwd + t_fb):.2f} |")
    print(f"| real single-edge ablation of every edge (extrapolated from {len(sample)}) | {t_brute:.2f} s |")
    print(f"| speed-up of EAP over brute force | {t_brute / t_eap:.0f}x |\n")

    target = token_score(5, 11)
    t_b = timed(lambda: attribute_input(model, tok, target, n_steps=64, chunk_size=16), repeats=1)
    t_1 = timed(lambda: attribute_input(model, tok, target, n_steps=64, chunk_size=1), repeats=1)
    print("## Integrated gradients, 64 steps\n")
    print("| interpolations per forward | time |\n|---|---|")
    print(f"| 16 (default) | {t_b * 1e3:.0f} ms |\n| 1 | {t_1 * 1e3:.0f} ms |")


if __name__ == "__main__":
    main()
