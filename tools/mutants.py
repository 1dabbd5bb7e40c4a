"""Apply plausible one-line bugs to ``src/`` one at a time and report which ones the tests miss.

Each mutation is a literal ``old -> new`` replacement in one file (``old`` must occur exactly once, so a
mutation that no longer applies after a refactor is reported as stale, not silently skipped). The file is
restored after every run, also on Ctrl-C.

Usage (from the repository root; not part of CI, it runs the tests once per mutation)::

    python tools/mutants.py                 # each mutation against the tests listed with it (minutes)
    python tools/mutants.py --full          # each mutation against the whole suite (slow)
    python tools/mutants.py --only t5_eps names_filter_substring

Exit status: 0 when every mutation is caught, 1 when some survive or are stale.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    """A one-line bug: replace ``old`` by ``new`` in ``path``; ``tests`` should catch it."""

    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTATIONS = (
    Mutation(
        "t5_eps",
        "src/encoderlens/convert/t5.py",
        'NormConfig("rmsnorm", eps=hf.layer_norm_epsilon, bias=False)',
        'NormConfig("rmsnorm", eps=1e-6, bias=False)',
        ("tests/parity/test_t5_parity.py",),
    ),
    Mutation(
        "wav2vec2_eps",
        "src/encoderlens/convert/wav2vec2.py",
        'NormConfig("layernorm", eps=hf.layer_norm_eps)',
        'NormConfig("layernorm", eps=1e-5)',
        ("tests/parity/test_audio_parity.py",),
    ),
    Mutation(
        "apply_ln_mlp_input_uses_ln1",
        "src/encoderlens/cache.py",
        "{'ln2' if mlp_input else 'ln1'}",
        "{'ln1' if mlp_input else 'ln1'}",
        ("tests/unit/test_cache_reference.py",),
    ),
    Mutation(
        "logit_attrs_adds_incorrect",
        "src/encoderlens/cache.py",
        "direction = direction - W_U[:, bad].movedim(0, -1)",
        "direction = direction + W_U[:, bad].movedim(0, -1)",
        ("tests/unit/test_cache_reference.py",),
    ),
    Mutation(
        "mean_ablation_over_padding",
        "src/encoderlens/analysis/similarity.py",
        "mean = (x * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1)",
        "mean = x.mean(1, keepdim=True)",
        ("tests/unit/test_mutation_guards.py", "tests/unit/test_analysis_similarity.py"),
    ),
    Mutation(
        "names_filter_substring",
        "src/encoderlens/hooks.py",
        "return lambda name: name == target",
        "return lambda name: target in name",
        ("tests/unit/test_hooks.py", "tests/unit/test_mutation_guards.py"),
    ),
    Mutation(
        "tokenizer_truncates_late",
        "src/encoderlens/io/text.py",
        "if longest > max_length:",
        "if longest > max_length + 1:",
        ("tests/unit/test_text_inputs.py", "tests/unit/test_mutation_guards.py"),
    ),
    Mutation(
        "decoder_mask_extra_position",
        "src/encoderlens/models/encoder_decoder.py",
        "return TextBatch(shifted, mask.clone(), None)",
        "return TextBatch(shifted, torch.cat([torch.ones_like(mask[:, :1]), mask[:, :-1]], 1), None)",
        ("tests/unit/test_reliability_models.py",),
    ),
    Mutation(
        "stop_at_layer_unchecked",
        "src/encoderlens/components/stack.py",
        "if not -n <= stop_at_layer <= n:",
        "if False:",
        ("tests/unit/test_reliability_models.py",),
    ),
    Mutation(
        "json_escape_only_close_tag",
        "src/encoderlens/analysis/views.py",
        'for ch, esc in (("<", "\\\\u003c"),',
        'for ch, esc in (("</", "<\\\\/"),',
        ("tests/unit/test_analysis_views.py",),
    ),
    Mutation(
        "shard_paths_unchecked",
        "src/encoderlens/io/checkpoint.py",
        'or ".." in posix.parts',
        "or False",
        ("tests/unit/test_checkpoint_security.py",),
    ),
    Mutation(
        "inference_cache_poisons_autograd",
        "src/encoderlens/components/attention.py",
        "if use_cache and torch.is_inference_mode_enabled():",
        "if False:",
        ("tests/unit/test_attention_paths.py",),
    ),
)


def run_tests(tests: list[str], timeout: int) -> tuple[bool, float]:
    """Run pytest on ``tests``; True when it fails (the mutation is caught)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return True, time.monotonic() - start  # a hang counts as caught (the suite would time out)
    return proc.returncode != 0, time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="run the whole suite per mutation (default: listed tests)")
    ap.add_argument("--only", nargs="*", default=None, help="mutation names to run (default: all)")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per test run (default: 1800)")
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    args = ap.parse_args(argv)
    chosen = [m for m in MUTATIONS if args.only is None or m.name in args.only]
    if args.list:
        for m in chosen:
            print(f"{m.name:34} {m.path}")
        return 0
    unknown = sorted(set(args.only or ()) - {m.name for m in MUTATIONS})
    if unknown:
        print(f"unknown mutation(s) {unknown}; see --list", file=sys.stderr)
        return 2
    survivors, stale = [], []
    for m in chosen:
        path = ROOT / m.path
        original = path.read_text()
        if original.count(m.old) != 1:
            print(f"STALE    {m.name}: {m.old!r} occurs {original.count(m.old)} times in {m.path}")
            stale.append(m.name)
            continue
        try:
            path.write_text(original.replace(m.old, m.new))
            caught, secs = run_tests([] if args.full else list(m.tests), args.timeout)
        finally:
            path.write_text(original)
        print(f"{'caught' if caught else 'SURVIVED':8} {m.name} ({secs:.0f} s)", flush=True)
        if not caught:
            survivors.append(m.name)
    print(f"\n{len(chosen) - len(survivors) - len(stale)} caught, {len(survivors)} survived, {len(stale)} stale")
    if survivors:
        print("survived: " + ", ".join(survivors))
    return 1 if survivors or stale else 0


if __name__ == "__main__":
    sys.exit(main())
