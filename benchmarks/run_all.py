"""Run every benchmark (each in its own process) and print their tables: ``make bench``.

Arguments are passed on to each script, e.g. ``python benchmarks/run_all.py --threads 1 --clock cpu``
or ``--quick`` (tiny sizes: checks that the scripts run). Families this encoderlens lacks print
``skipped: not available``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

SCRIPTS = ("bench_encoder.py", "bench_encdec.py", "bench_audio.py", "bench_whisper.py", "bench_harvest.py", "gpu.py")


def main() -> int:
    here = Path(__file__).resolve().parent
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    failed = []
    targets: list[str] = []
    for script in SCRIPTS:
        t0 = time.perf_counter()
        print(f"\n# {script}", flush=True)
        proc = subprocess.Popen(
            [sys.executable, str(here / script), *sys.argv[1:]], env=env, stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line, end="", flush=True)
            if line.rstrip().endswith(("| PASS |", "| FAIL |")):
                targets.append(f"| {script} {line.strip()[1:]}")
        rc = proc.wait()
        print(f"\n({script}: {time.perf_counter() - t0:.0f} s, exit {rc})", flush=True)
        if rc != 0:
            failed.append(script)
    print("\n# Targets (every row with a target, as measured above)\n")
    print(
        "| script / case | ours ms | ref ms | ratio (median of rounds) | ratio of fastest | rounds min..max | target | result |"
    )
    print("|---|---:|---:|---:|---:|---|---:|---|")
    print("\n".join(targets) if targets else "(no target rows: scripts skipped or failed)")
    n_fail = sum(t.endswith("| FAIL |") for t in targets)
    print(f"\n{len(targets) - n_fail} of {len(targets)} targets met")
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
