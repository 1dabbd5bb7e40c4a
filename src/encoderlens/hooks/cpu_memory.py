"""Keep freed CPU memory in the process between cached runs (glibc's malloc), instead of faulting it in again.

Why: a full ``run_with_cache`` keeps every activation alive until the cache is dropped, several times the
memory a forward without hooks touches (a T5-small cache at 8 x 128 holds about 7 times HF's hidden states
plus attentions). With glibc's default settings, dropping a cache hands its memory back to the operating
system (the top of the heap is trimmed once more than a few MB are free there), so the next run gets fresh
pages: one page fault, and the kernel zeroing the page, per 4 KiB. On CPU that cost up to 20% of a full-cache
run of BERT-base / T5-small / HuBERT-base against HF's ``output_hidden_states=True, output_attentions=True``
(``benchmarks/``, docs/performance.md). A forward without hooks reuses its few buffers and never pays it.

What is set: glibc keeps up to :data:`KEEP_BYTES` (1 GiB) of free memory at the top of its heap
(``M_TRIM_THRESHOLD``), and serves allocations below 32 MiB from the heap (``M_MMAP_THRESHOLD``, the
largest value glibc itself would reach), so a dropped cache's memory is reused by the next run. Larger
tensors are still mapped and unmapped one by one, as before. The cost: after a large cache is dropped the
process keeps up to 1 GiB (plus fragmentation) for reuse instead of returning it, as PyTorch's CUDA caching
allocator keeps GPU memory. This is what the PyTorch CPU tuning guides get by preloading jemalloc or
tcmalloc.

When: the first ``run_with_cache`` of the process applies it, only on Linux with glibc, and not when
``ENCODERLENS_KEEP_FREED_MEMORY=0`` or when the user already tuned glibc's malloc
(``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TOP_PAD_`` or ``glibc.malloc`` in
``GLIBC_TUNABLES``). :func:`keep_freed_cpu_memory` sets or resets it explicitly.
"""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Callable

#: Free bytes glibc may keep at the top of its heap before returning them to the OS.
KEEP_BYTES = 1 << 30
#: Allocations below this come from the heap (glibc accepts at most 32 MiB on 64-bit systems).
HEAP_BELOW = 32 << 20
#: glibc's own starting values (``malloc.h``), restored by ``keep_freed_cpu_memory(False)``.
GLIBC_DEFAULT = 128 * 1024

# mallopt parameter numbers from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

#: Environment variables by which a user has tuned glibc's malloc already (then we leave it alone).
USER_TUNING_ENV = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")
OPT_OUT_ENV = "ENCODERLENS_KEEP_FREED_MEMORY"

_decided = False


def _mallopt() -> Callable[[int, int], int] | None:
    """glibc's ``mallopt``, or None where the C library is not glibc (macOS, Windows, musl)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        fn = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int)
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


def keep_freed_cpu_memory(enabled: bool = True, keep_bytes: int = KEEP_BYTES) -> bool:
    """Let glibc keep freed memory for reuse (``enabled``), or go back to its starting thresholds.

    Args:
        enabled: True: keep up to ``keep_bytes`` free at the heap top and serve allocations below 32 MiB
            from the heap. False: glibc's starting values (128 KiB each); glibc's own adjustment of them
            stays off once any value was set.
        keep_bytes: Free bytes kept at the top of the heap when ``enabled``.

    Returns:
        Whether the setting took effect (False where the C library is not glibc).

    Raises:
        ValueError: ``keep_bytes`` is negative or does not fit a C int.
    """
    global _decided
    if not 0 <= keep_bytes < 2**31:
        raise ValueError(f"keep_bytes must be between 0 and 2**31 - 1, got {keep_bytes}")
    _decided = True
    fn = _mallopt()
    if fn is None:
        return False
    trim, heap_below = (keep_bytes, HEAP_BELOW) if enabled else (GLIBC_DEFAULT, GLIBC_DEFAULT)
    return bool(fn(_M_MMAP_THRESHOLD, heap_below)) and bool(fn(_M_TRIM_THRESHOLD, trim))


def user_tuned_malloc() -> bool:
    """Whether the environment already sets glibc's malloc thresholds (or opts out of ours)."""
    if os.environ.get(OPT_OUT_ENV, "").strip().lower() in ("0", "false", "no", "off"):
        return True
    if any(name in os.environ for name in USER_TUNING_ENV):
        return True
    return "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "")


def reuse_freed_cpu_memory() -> None:
    """Apply :func:`keep_freed_cpu_memory` once per process, unless the user opted out or tuned malloc."""
    global _decided
    if _decided:
        return
    _decided = True
    if not user_tuned_malloc():
        keep_freed_cpu_memory(True)
