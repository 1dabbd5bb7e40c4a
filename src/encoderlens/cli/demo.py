"""``encoderlens demo``: an offline analysis of the embedded all-MiniLM-L6-v2."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from encoderlens.cli.common import add_device, add_parser

DEMO_PAIRS = (
    ("A man is playing a guitar on stage.", "Someone performs music with a guitar."),
    ("A man is playing a guitar on stage.", "The stock market fell sharply today."),
)


def _mean_pool(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask[..., None].to(x.dtype)
    return (x * m).sum(-2) / m.sum(-2).clamp_min(1e-9)


@torch.no_grad()
def run_demo(
    model_name: str = "default", out: Callable[[str], None] = print, device: str | None = None
) -> dict[str, object]:
    """Run the offline demo analysis on the embedded model and print a report.

    Returns the computed numbers (used by the tests).
    """
    from encoderlens import HookedEncoder

    torch.manual_seed(0)
    model = HookedEncoder.from_pretrained(model_name, device=device)
    cfg = model.cfg
    out(
        f"encoderlens demo: {cfg.architecture} ({cfg.model_type}), {cfg.n_layers} layers, "
        f"{cfg.n_heads} heads, d_model {cfg.d_model}, {len(model.hook_names())} hook points"
    )

    text = "The quick brown fox jumps over the lazy dog because it was bored."
    _, cache = model.run_with_cache(text, return_type="embeddings")
    out(f'\n1. Cached activations for "{text}" ({len(cache)} tensors, {cache.nbytes() / 2**20:.2f} MiB)')
    for name in ("hook_full_embed", "blocks.0.attn.hook_q", "blocks.0.attn.hook_pattern", "blocks.0.mlp.hook_post"):
        out(f"   {name:<32} {tuple(cache[name].shape)}")

    tokens, _, _ = model.to_tokens(text)
    tokens = tokens[0]
    pattern = cache.stack_activation("pattern")[:, 0]  # layer head q k
    n = tokens.shape[0]
    cls_score = pattern[..., 1:, 0].mean(-1)
    sep_score = pattern[..., :-1, n - 1].mean(-1)
    prev_score = pattern.diagonal(offset=-1, dim1=-2, dim2=-1).mean(-1)
    out("\n2. Attention heads by role (mean attention from each token, this sentence)")
    report: dict[str, object] = {}
    for label, score in (("[CLS] sink", cls_score), ("[SEP] sink", sep_score), ("previous token", prev_score)):
        flat = score.flatten()
        top = flat.topk(3)
        heads = [f"L{int(i) // cfg.n_heads}H{int(i) % cfg.n_heads} ({v:.2f})" for v, i in zip(top.values, top.indices)]
        report[label] = heads
        out(f"   {label:<15} {', '.join(heads)}")

    out("\n3. Sentence-pair similarity (mean pooling, as all-MiniLM-L6-v2 declares), layer by layer")
    rows = []
    for a, b in DEMO_PAIRS:
        batch = model.tokenize([a, b])
        _, pc = model.run_with_cache(
            batch.tokens,
            one_zero_attention_mask=batch.attention_mask,
            return_type="embeddings",
            names_filter=lambda nm: nm.endswith(("hook_resid_pre", "hook_resid_post", "hook_normalized_resid_post")),
        )
        stream = pc.accumulated_resid()
        pooled = _mean_pool(stream, batch.attention_mask)
        sims = torch.nn.functional.cosine_similarity(pooled[:, 0], pooled[:, 1], dim=-1)
        final = float(sims[-1])
        ablations = []
        for layer in range(cfg.n_layers):
            emb = model.run_with_hooks(
                batch.tokens,
                one_zero_attention_mask=batch.attention_mask,
                return_type="embeddings",
                fwd_hooks=[(f"blocks.{layer}.hook_attn_out", lambda x, hook: torch.zeros_like(x))],
            )
            p = _mean_pool(emb, batch.attention_mask)
            ablations.append(float(torch.nn.functional.cosine_similarity(p[0], p[1], dim=-1)) - final)
        rows.append((a, b, sims.tolist(), ablations))
        out(f'   "{a}"  vs  "{b}"')
        out(f"     cosine after embed / each layer: {' '.join(f'{s:+.3f}' for s in sims.tolist())}")
        out(f"     change when a layer's attention is zero-ablated: {' '.join(f'{d:+.3f}' for d in ablations)}")
    report["similarity"] = rows
    out("\nNext: see README.md for the hook table, run_with_cache, patching and the other model families.")
    return report


def _demo_cmd(args: argparse.Namespace) -> int:
    run_demo(args.model, device=args.device)
    return 0


def setup(sub: argparse._SubParsersAction) -> None:
    """Add ``demo`` to the ``encoderlens`` parser."""
    demo = add_parser(sub, "demo", "offline demo on the embedded all-MiniLM-L6-v2", "encoderlens demo")
    demo.add_argument("--model", default="default", help="hub name or local folder of a text encoder")
    add_device(demo)
    demo.set_defaults(func=_demo_cmd)
