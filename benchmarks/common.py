"""Shared benchmark machinery: interleaved timing, ratio tables, optional TransformerLens.

Why interleaved: on a shared machine the load changes during a run. Each round runs every candidate
once (in a rotating order, the two sides of each targeted ratio back to back), and each ratio is the
median over rounds of ``ours / reference`` measured in the same round, so slow periods hit both sides
of a ratio alike. The table also gives the ratio of
the fastest calls (``min(ours) / min(reference)``), the usual estimate when other processes only ever
add time. ``ok`` judges the median ratio.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# benchmarks run from a checkout without installing: put src/ first on the path
_SRC = Path(__file__).resolve().parents[1] / "src"
if _SRC.is_dir() and str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))

import torch  # noqa: E402


def parse_args(description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--repeats", type=int, default=7, help="timed rounds (median is reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: elapsed time (the targets); cpu: process CPU time, steadier on a shared machine with --threads 1",
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes, one round: checks that the script runs")
    p.add_argument("--tl-off", action="store_true", help="do not time TransformerLens even if it is installed")
    p.add_argument(
        "--glibc-malloc-defaults",
        action="store_true",
        help="keep glibc's malloc thresholds (by default encoderlens lets glibc keep freed memory for reuse, "
        "see encoderlens/hooks/cpu_memory.py; the setting applies to the whole process, HF included)",
    )
    return p.parse_args()


def setup(threads: int, glibc_malloc_defaults: bool = False) -> None:
    """Threads, seed, quiet HF logging, and the CPU allocator setting (printed: it applies to both sides).

    encoderlens lets glibc keep freed memory at its first ``run_with_cache`` (hooks/cpu_memory.py). It is
    applied here, before anything is timed, so HF's runs and ours run under the same allocator from the
    first round; ``glibc_malloc_defaults`` opts out for the whole process instead.
    """
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    try:
        from encoderlens.hooks import cpu_memory
    except ImportError:  # an encoderlens without it
        cpu_memory = None  # type: ignore[assignment]
    if cpu_memory is not None:
        if glibc_malloc_defaults:
            os.environ[cpu_memory.OPT_OUT_ENV] = "0"
            print("CPU allocator: glibc's defaults (--glibc-malloc-defaults)")
        elif cpu_memory.user_tuned_malloc():
            print(
                "CPU allocator: as tuned by the environment (MALLOC_* / GLIBC_TUNABLES / ENCODERLENS_KEEP_FREED_MEMORY)"
            )
        else:
            kept = cpu_memory.keep_freed_cpu_memory()
            print(
                "CPU allocator: "
                + ("glibc keeps freed memory for reuse (encoderlens' default)" if kept else "not glibc: unchanged")
            )
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover - older transformers
        pass


def tmpdir(prefix: str) -> str:
    return tempfile.mkdtemp(prefix=f"encoderlens-bench-{prefix}-")


def has_encoderlens(attr: str) -> bool:
    """Whether ``encoderlens`` exports ``attr`` (families land in separate branches)."""
    try:
        mod = importlib.import_module("encoderlens")
    except ImportError:
        return False
    return hasattr(mod, attr)


@dataclass
class Ratio:
    """One row of a ratio table: ``ours / ref`` with an optional target (pass if ratio <= target)."""

    label: str
    ours: str
    ref: str | tuple[str, ...]
    target: float | None = None
    higher_is_better: bool = False


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int,
    clock: str = "wall",
    rows: Sequence[Ratio] = (),
) -> dict[str, list[float]]:
    """Seconds per call of each function, one call of each per round, rotating the order.

    The functions a targeted row compares (``rows``: ours and its references) run back to back in
    each round, their order rotating from round to round (ABBA for a pair), so the two sides of a
    targeted ratio are timed seconds apart rather than a whole round apart: a change of load between
    them is what makes a single round's ratio noisy.

    ``clock="wall"`` measures elapsed time; ``clock="cpu"`` the process's CPU time, which other
    processes on a loaded machine disturb less (use it with one thread: with several, threads
    spinning while they wait for each other count as work).
    """
    timer = time.perf_counter if clock == "wall" else time.process_time
    units = adjacent_groups(list(fns), rows)
    times: dict[str, list[float]] = {n: [] for n in fns}
    with torch.inference_mode():
        for r in range(warmup + repeats):
            for unit in _rotated(units, r):
                for n in _rotated(unit, r):
                    t0 = timer()
                    fns[n]()
                    dt = timer() - t0
                    if r >= warmup:
                        times[n].append(dt)
    return times


def time_cases(
    fns: dict[str, Callable[[], object]], rows: Sequence[Ratio], args: argparse.Namespace
) -> dict[str, list[float]]:
    """:func:`time_interleaved` with the command line's rounds and clock (one round, no warm-up with ``--quick``)."""
    return time_interleaved(
        fns,
        repeats=1 if args.quick else args.repeats,
        warmup=0 if args.quick else args.warmup,
        clock=args.clock,
        rows=rows,
    )


def _rotated(items: list, r: int) -> list:
    k = r % len(items)
    return items[k:] + items[:k]


def adjacent_groups(names: list[str], rows: Sequence[Ratio]) -> list[list[str]]:
    """``names`` split into the groups timed back to back: each targeted row's functions, then the rest alone.

    A function already placed by an earlier row stays there (each runs once per round).
    """
    placed: set[str] = set()
    groups: list[list[str]] = []
    for row in rows:
        if row.target is None:
            continue
        refs = (row.ref,) if isinstance(row.ref, str) else row.ref
        group = [n for n in (row.ours, *refs) if n in names and n not in placed]
        if group:
            groups.append(group)
            placed.update(group)
    return groups + [[n] for n in names if n not in placed]


def _ref_times(times: dict[str, list[float]], ref: str | tuple[str, ...]) -> list[float] | None:
    """The reference's time per round; for several references, the one with the lowest median.

    Why not the fastest of them in each round: with two implementations of equal speed, the smaller of two
    noisy timings is biased low (it picks whichever was lucky in that round), which on this kind of machine
    (5-10% spread per call) favours the reference by several percent. "HF's fastest implementation" is the
    one that is fastest over all rounds.
    """
    refs = (ref,) if isinstance(ref, str) else ref
    if not all(r in times for r in refs):
        return None
    return times[min(refs, key=lambda r: statistics.median(times[r]))]


def ratio_rows(times: dict[str, list[float]], rows: list[Ratio]) -> list[dict[str, object]]:
    out = []
    for row in rows:
        ref = _ref_times(times, row.ref)
        if row.ours not in times or ref is None:
            continue
        label = row.label
        if not isinstance(row.ref, str):  # say which implementation was the fastest
            label += f" [{next(r for r in row.ref if times[r] is ref)}]"
        per_round = [a / b for a, b in zip(times[row.ours], ref)]
        ratio = statistics.median(per_round)
        if row.higher_is_better:  # a throughput: reference time / our time
            per_round = [1 / r for r in per_round]
            ratio = statistics.median(per_round)
        ok = None if row.target is None else (ratio >= row.target if row.higher_is_better else ratio <= row.target)
        out.append(
            {
                "case": label,
                "ours_ms": 1e3 * statistics.median(times[row.ours]),
                "ref_ms": 1e3 * statistics.median(ref),
                "ratio": ratio,
                "min_ratio": (min(times[row.ours]) / min(ref)) ** (-1 if row.higher_is_better else 1),
                "spread": (min(per_round), max(per_round)),
                "target": row.target,
                "higher_is_better": row.higher_is_better,
                "ok": ok,
            }
        )
    return out


def print_table(title: str, rows: list[dict[str, object]]) -> None:
    print(f"\n## {title}\n")
    print(
        "| case | ours ms | ref ms | ratio (median of rounds) | ratio of fastest | rounds min..max | target | result |"
    )
    print("|---|---:|---:|---:|---:|---|---:|---|")
    for r in rows:
        lo, hi = r["spread"]  # type: ignore[misc]
        target = "" if r["target"] is None else f"{'>=' if r['higher_is_better'] else '<='} {r['target']:.2f}"
        ok = "" if r["ok"] is None else ("PASS" if r["ok"] else "FAIL")
        print(
            f"| {r['case']} | {r['ours_ms']:.1f} | {r['ref_ms']:.1f} | {r['ratio']:.3f} | {r['min_ratio']:.3f} | "
            f"{lo:.2f}..{hi:.2f} | {target} | {ok} |"
        )
    sys.stdout.flush()


def print_times(title: str, times: dict[str, list[float]]) -> None:
    print(f"\n{title}: median ms per call")
    for n, ts in times.items():
        print(f"  {n:<40} {1e3 * statistics.median(ts):9.1f}   (min {1e3 * min(ts):.1f}, n={len(ts)})")
    sys.stdout.flush()


def skipped(title: str, why: str) -> None:
    print(f"\n## {title}\n\nskipped: {why}")
    sys.stdout.flush()


def transformer_lens() -> object | None:
    """The ``transformer_lens`` module if installed, else None (its timings are then left out)."""
    try:
        return importlib.import_module("transformer_lens")
    except Exception:
        return None


def opt_in_hooks() -> tuple[str, ...]:
    """Hook points ``run_with_cache(names_filter=None)`` leaves out (none in older encoderlens)."""
    try:
        return tuple(getattr(importlib.import_module("encoderlens.hooks"), "OPT_IN_HOOKS", ()))
    except ImportError:
        return ()
