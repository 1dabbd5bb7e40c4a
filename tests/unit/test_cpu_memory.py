"""glibc keeps a dropped cache's memory for the next run (hooks/cpu_memory.py)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from encoderlens.hooks import HookedRootModule, HookPoint, cpu_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Allocates and frees 300 MB of 6 MB tensors (a cache's worth) three times and prints the page faults of
# the third round. {setup} runs first.
CHURN = """
import resource, torch
{setup}
def churn():
    kept = [torch.ones(6 << 18) for _ in range(50)]  # 6 MiB each; ones() touches every page
    del kept
churn(); churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _third_round_faults(setup: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHURN.format(setup=setup))],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=120,
    )
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="the setting exists for glibc's malloc only")
def test_dropped_memory_is_reused_instead_of_faulted_in_again() -> None:
    pages = (300 << 20) // 4096
    setting = "from encoderlens.hooks.cpu_memory import keep_freed_cpu_memory\nassert keep_freed_cpu_memory({})"
    kept = _third_round_faults(setting.format(True))
    # off: glibc's starting thresholds without its own adjustment, so every 6 MiB tensor is mapped and
    # unmapped and each round faults every page in again (glibc's adaptive default usually does the same,
    # but not always: it is left out of the assertions as it depends on what ran before)
    off = _third_round_faults(setting.format(False))
    assert off > 0.5 * pages, off
    assert kept < 0.05 * pages, kept


class _Tiny(HookedRootModule):
    def __init__(self) -> None:
        super().__init__()
        self.hook_x = HookPoint()
        self.setup()

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.hook_x(x) * 2


@pytest.fixture
def undecided(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bool, int]]:
    """Reset the once-per-process decision and record calls instead of changing this process's malloc."""
    calls: list[tuple[bool, int]] = []
    monkeypatch.setattr(cpu_memory, "_decided", False)
    monkeypatch.setattr(
        cpu_memory,
        "keep_freed_cpu_memory",
        lambda enabled=True, keep_bytes=cpu_memory.KEEP_BYTES: calls.append((enabled, keep_bytes)) or True,
    )
    for name in (*cpu_memory.USER_TUNING_ENV, cpu_memory.OPT_OUT_ENV, "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
    return calls


def test_first_cached_run_applies_it_once(undecided: list[tuple[bool, int]]) -> None:
    import torch

    model = _Tiny()
    model.run_with_cache(torch.ones(2))
    model.run_with_cache(torch.ones(2))
    assert undecided == [(True, cpu_memory.KEEP_BYTES)]


@pytest.mark.parametrize(
    "name, value",
    [
        (cpu_memory.OPT_OUT_ENV, "0"),
        (cpu_memory.OPT_OUT_ENV, "off"),
        ("MALLOC_TRIM_THRESHOLD_", "100000"),
        ("MALLOC_MMAP_THRESHOLD_", "100000"),
        ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1000"),
    ],
)
def test_opt_out_and_user_tuning_are_respected(
    undecided: list[tuple[bool, int]], monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    import torch

    monkeypatch.setenv(name, value)
    _Tiny().run_with_cache(torch.ones(2))
    assert undecided == []


def test_other_opt_out_values_do_not_opt_out(
    undecided: list[tuple[bool, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.setenv(cpu_memory.OPT_OUT_ENV, "1")
    _Tiny().run_with_cache(torch.ones(2))
    assert undecided == [(True, cpu_memory.KEEP_BYTES)]


@pytest.mark.parametrize("keep", [-1, 2**31])
def test_keep_bytes_out_of_range(keep: int) -> None:
    with pytest.raises(ValueError, match="keep_bytes must be between"):
        cpu_memory.keep_freed_cpu_memory(True, keep)
