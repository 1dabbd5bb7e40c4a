"""Cost of edge attribution patching (EAP, EAP-IG) and of batched integrated gradients (prints, asserts nothing).

- EAP, on a pre-LN and a post-LN (BERT order) encoder: counts the forwards (a hook on the stream's first
  residual) and backward passes (calls of ``torch.autograd.grad``) of one ``edge_attribution`` call, times
  it, and compares with one plain forward, one forward + backward, and real single-edge ablation (timed on a
  sample, extrapolated to every edge). Post-LN adds the propagation through the stream's norms (tensor maths
  over cached sums, no forward).
- EAP-IG: ``n_steps`` interpolations batched ``chunk_size`` per forward vs one per forward (counts, time).
- Integrated gradients of the input: 64 interpolation steps batched 16 at a time vs one at a time.

    python benchmarks/bench_eap.py            # 256 wide, 4 layers, 8 heads, 8 x 32 tokens
    python benchmarks/bench_eap.py --quick    # tiny sizes (checks the script runs)
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import torch
from transformers import BertConfig, BertForMaskedLM

from encoderlens import HookedEncoder
from encoderlens.analysis import ablate_edges, attribute_input, edge_attribution, token_score


def build(width: int, layers: int, heads: int, norm_position: str) -> HookedEncoder:
    """A BERT-shaped encoder with random weights: post-LN as BERT, or pre-LN with a final norm."""
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
    if norm_position == "pre":
        c = dataclasses.replace(
            c,
            stack=dataclasses.replace(c.stack, norm_position="pre", final_norm=True),
            embed=dataclasses.replace(c.embed, norm=None),
        )
    model = HookedEncoder(c, tokenizer=None)
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


def counted(model: HookedEncoder, fn: Callable[[], Any]) -> dict[str, int]:
    """Forwards and backward passes of one call of ``fn``."""
    counts = {"fwd": 0, "bwd": 0}
    grad = torch.autograd.grad

    def counting_grad(*a: Any, **k: Any) -> Any:
        counts["bwd"] += 1
        return grad(*a, **k)

    torch.autograd.grad = counting_grad  # type: ignore[assignment]
    model.add_hook("blocks.0.hook_resid_pre", lambda x, hook: counts.__setitem__("fwd", counts["fwd"] + 1))
    try:
        fn()
    finally:
        model.reset_hooks()
        torch.autograd.grad = grad  # type: ignore[assignment]
    return counts


def eap_table(model: HookedEncoder, label: str, tok: torch.Tensor, cor: torch.Tensor, metric: Any) -> None:
    counts = counted(model, lambda: edge_attribution(model, tok, cor, metric))
    n_edges = len(edge_attribution(model, tok, cor, metric).graph)
    t_eap = timed(lambda: edge_attribution(model, tok, cor, metric))
    t_fwd = timed(lambda: model(tok))

    def fwd_bwd() -> None:
        with torch.enable_grad():
            metric(model(tok)).backward()
        model.zero_grad(set_to_none=True)

    t_fb = timed(fwd_bwd)
    sample = list(range(0, n_edges, max(1, n_edges // 16)))[:16]
    t_sample = timed(lambda: ablate_edges(model, tok, cor, metric, [[e] for e in sample], chunk_size=8), repeats=1)
    t_brute = t_sample / len(sample) * n_edges
    steps, chunk = 8, 8
    ig_counts = counted(model, lambda: edge_attribution(model, tok, cor, metric, method="EAP-IG", n_steps=steps))
    t_ig = timed(lambda: edge_attribution(model, tok, cor, metric, method="EAP-IG", n_steps=steps), repeats=1)
    one_counts = counted(
        model, lambda: edge_attribution(model, tok, cor, metric, method="EAP-IG", n_steps=steps, chunk_size=1)
    )
    t_ig1 = timed(
        lambda: edge_attribution(model, tok, cor, metric, method="EAP-IG", n_steps=steps, chunk_size=1), repeats=1
    )
    print(f"## {label}\n")
    print("| quantity | value |\n|---|---|")
    print(f"| edges | {n_edges} |")
    print(f"| EAP: forwards / backward passes | {counts['fwd']} / {counts['bwd']} |")
    print(f"| EAP time | {t_eap * 1e3:.1f} ms |")
    print(f"| one plain forward / one forward+backward | {t_fwd * 1e3:.1f} ms / {t_fb * 1e3:.1f} ms |")
    print(f"| EAP / one plain forward | {t_eap / t_fwd:.1f} |")
    print(f"| EAP / (2 forwards + 1 backward) | {t_eap / (t_fwd + t_fb):.2f} |")
    print(f"| real single-edge ablation of every edge (extrapolated from {len(sample)}) | {t_brute:.2f} s |")
    print(f"| speed-up of EAP over brute force | {t_brute / t_eap:.0f}x |")
    print(
        f"| EAP-IG {steps} steps, {chunk} per forward: forwards / backwards / time | "
        f"{ig_counts['fwd']} / {ig_counts['bwd']} / {t_ig * 1e3:.0f} ms ({t_ig / t_fwd:.1f} plain forwards) |"
    )
    print(
        f"| EAP-IG {steps} steps, 1 per forward: forwards / backwards / time | "
        f"{one_counts['fwd']} / {one_counts['bwd']} / {t_ig1 * 1e3:.0f} ms ({t_ig1 / t_fwd:.1f} plain forwards) |\n"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    width, layers, heads, batch, seq = (32, 2, 2, 2, 8) if args.quick else (256, 4, 8, 8, 32)
    g = torch.Generator().manual_seed(2)
    tok = torch.randint(5, 1000, (batch, seq), generator=g)
    cor = tok.clone()
    cor[:, 3] = 7

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, 5, 11].sum() - logits[:, 5, 12].sum()

    size = f"{width} wide, {layers} layers, {heads} heads, {batch} x {seq} tokens"
    for norm_position in ("pre", "post"):
        model = build(width, layers, heads, norm_position)
        eap_table(model, f"EAP on a {norm_position}-LN encoder ({size})", tok, cor, metric)

    model = build(width, layers, heads, "pre")
    target = token_score(5, 11)
    t_b = timed(lambda: attribute_input(model, tok, target, n_steps=64, chunk_size=16), repeats=1)
    t_1 = timed(lambda: attribute_input(model, tok, target, n_steps=64, chunk_size=1), repeats=1)
    print("## Integrated gradients of the input, 64 steps\n")
    print("| interpolations per forward | time |\n|---|---|")
    print(f"| 16 (default) | {t_b * 1e3:.0f} ms |\n| 1 | {t_1 * 1e3:.0f} ms |")


if __name__ == "__main__":
    main()
