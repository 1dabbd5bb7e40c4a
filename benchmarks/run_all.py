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
    for script in SCRIPTS:
        t0 = time.perf_counter()
        print(f"\n# {script}", flush=True)
        rc = subprocess.call([sys.executable, str(here / script), *sys.argv[1:]], env=env)
        print(f"\n({script}: {time.perf_counter() - t0:.0f} s, exit {rc})", flush=True)
        if rc != 0:
            failed.append(script)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
