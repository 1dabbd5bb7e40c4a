"""Harvest throughput: writing every layer's residual stream to shards vs the plain forward, BERT-base, CPU.

The same items (token ids, 128 per item, batch 8) go through (a) the model's plain forward, batch
by batch, and (b) ``harvest(model, items, "blocks.*.hook_resid_post", ...)`` into a fresh folder,
shards written to disk (``shard_mb=64``). Prints tokens/s of both, the MB/s written, and the
ratio ``harvest tokens/s / forward tokens/s`` (target >= 0.85), measured in one process with the
interleaved rounds of ``common.py``; plus the largest resident memory growth over a run with 4x
the items (the memory ceiling does not grow with the dataset).

Run: ``python benchmarks/bench_harvest.py [--threads 1 --clock cpu --repeats 5]``.
"""

from __future__ import annotations

import itertools
import resource
import shutil
import statistics

import common  # noqa: F401  (sets up paths and offline mode first)
import torch
from common import Ratio, parse_args, print_table, print_times, ratio_rows, setup, time_interleaved, tmpdir

TITLE = "Harvest BERT-base, every hook_resid_post, items of 128 tokens, batch 8"


def main() -> None:
    args = parse_args(__doc__ or "")
    setup(args.threads, args.glibc_malloc_defaults)
    from transformers import BertConfig, BertModel

    from encoderlens import HookedEncoder
    from encoderlens.harvest import harvest

    if args.quick:
        cfg = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
        n_items, seq = 8, 16
    else:
        cfg = BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
        n_items, seq = 32, 128
    path = tmpdir("harvest-model")
    BertModel(cfg).save_pretrained(path)
    model = HookedEncoder.from_pretrained(path)
    batch_size = 8
    g = torch.Generator().manual_seed(0)
    items = [torch.randint(1000, cfg.vocab_size, (seq,), generator=g).tolist() for _ in range(n_items)]
    batches = [torch.tensor(items[i : i + batch_size]) for i in range(0, n_items, batch_size)]
    hooks = "blocks.*.hook_resid_post"
    out_root = tmpdir("harvest-out")
    counter = itertools.count()
    written: list[int] = []

    def forward() -> None:
        for tokens in batches:
            model(tokens, return_type="embeddings")

    def run_harvest(data: list) -> None:
        out = f"{out_root}/{next(counter)}"
        man = harvest(model, data, hooks, out, batch_size=batch_size, shard_mb=64, progress=False, resume=False)
        written.append(sum(s["bytes"] for s in man["shards"]))
        shutil.rmtree(out)

    times = time_interleaved(
        {"forward": forward, "harvest": lambda: run_harvest(items)},
        repeats=1 if args.quick else args.repeats,
        warmup=0 if args.quick else 1,
        clock=args.clock,
    )
    n_tokens = n_items * seq
    t_fwd, t_h = statistics.median(times["forward"]), statistics.median(times["harvest"])
    mb = statistics.median(written) / 2**20
    rows = ratio_rows(times, [Ratio("harvest tokens/s / forward tokens/s", "harvest", "forward", 0.85, True)])
    print_table(f"{TITLE} (threads={args.threads}, fp32, {args.clock} clock, {len(times['forward'])} rounds)", rows)
    print(
        f"\nforward: {n_tokens / t_fwd:.0f} tokens/s; harvest: {n_tokens / t_h:.0f} tokens/s, "
        f"{mb / t_h:.1f} MB/s written ({mb:.1f} MB per run, stored in the model's dtype)"
    )
    # memory ceiling: resident growth over a run with 4x the items stays that of one batch plus a shard
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.inference_mode():
        run_harvest(items * 4)
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(f"peak resident memory growth over a run with {4 * n_items} items: {grown:.0f} MB (shard_mb=64)")
    # steady ceiling: the timed runs already reached one run's peak; 4x the items may add at most one shard buffer
    ceiling = 64
    print("\n| check | grown MB | ceiling MB | target | result |\n|---|---:|---:|---:|---|")
    print(
        f"| memory ceiling: peak RSS growth over {4 * n_items} items after runs of {n_items} | {grown:.0f} | "
        f"{ceiling} | <= {ceiling} MB | {'PASS' if grown <= ceiling else 'FAIL'} |"
    )
    print_times("times", times)


if __name__ == "__main__":
    main()
