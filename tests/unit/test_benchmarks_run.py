"""The benchmark scripts run (tiny sizes, no timing assertions), so they do not rot as the API moves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def test_run_all_quick_prints_a_table_per_family():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--quick", "--tl-off"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,  # a ceiling for loaded CI machines; about a minute when idle
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    for title in (
        "BERT-base encoder", "T5-small encoder-decoder", "HuBERT-base audio encoder", "Harvest BERT-base", "Whisper-tiny"
    ):  # fmt: skip
        assert f"## {title}" in r.stdout
    # each family either prints its ratio table or says it is not available in this encoderlens
    assert r.stdout.count("| case |") + r.stdout.count("skipped: not available") == 5
    # run_all ends with every target row, each PASS or FAIL
    assert "# Targets" in r.stdout and " targets met" in r.stdout
    summary = r.stdout.split("# Targets", 1)[1]
    rows = [line for line in summary.splitlines() if line.startswith("| bench_")]
    assert rows and all(line.endswith(("| PASS |", "| FAIL |")) for line in rows)
    assert "## GPU" in r.stdout  # its table on a CUDA machine, else "skipped: no CUDA device"
    assert ("skipped: no CUDA device" in r.stdout) != torch.cuda.is_available()


def test_gpu_script_runs_its_cases_on_the_cpu():
    """``gpu.py`` only runs where a GPU is; ``--device cpu`` runs its cases here so the script cannot rot."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--quick", "--device", "cpu", "--dtype", "fp32"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    for case in ("BERT forward", "T5 run_with_cache", "T5 greedy generate", "HuBERT run_with_cache(device='cpu')"):
        assert f"| {case}" in r.stdout, r.stdout[-3000:]


def test_targeted_ratios_are_timed_back_to_back():
    """Each targeted row's two sides run next to each other in every round, in alternating order."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import common
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    calls: list[str] = []
    names = ["hf_eager", "ours_cache", "extra", "ours", "hf_full", "hf_sdpa"]
    fns = {n: (lambda n=n: calls.append(n)) for n in names}
    rows = [
        common.Ratio("forward", "ours", ("hf_eager", "hf_sdpa"), 1.0),
        common.Ratio("info", "ours", "hf_eager"),
        common.Ratio("cache", "ours_cache", "hf_full", 1.05),
    ]
    times = common.time_interleaved(fns, repeats=4, warmup=1, clock="cpu", rows=rows)
    assert all(len(times[n]) == 4 for n in names)
    rounds = [calls[i : i + len(names)] for i in range(0, len(calls), len(names))]
    assert len(rounds) == 5 and all(sorted(r) == sorted(names) for r in rounds)
    for r in rounds:
        cache = r.index("ours_cache")
        assert abs(cache - r.index("hf_full")) == 1
        forward = sorted(r.index(n) for n in ("ours", "hf_eager", "hf_sdpa"))
        assert forward == list(range(forward[0], forward[0] + 3))
    # a pair alternates which side goes first
    assert {r.index("ours_cache") < r.index("hf_full") for r in rounds} == {True, False}
