"""Who may write into a harvest folder: one process per rank, all of one run.

Each rank holds an exclusive advisory lock (``fcntl.flock``) on ``_progress/rankNNN.lock`` for the
whole harvest; the kernel releases it when the process exits, however it dies. The lock file records
the holder (pid, host, run id). A second writer is refused, naming the holder:

- the same rank held by a live process: refused;
- another rank held by a live process of *another run* (two harvests with different world sizes,
  or a second torchrun job): refused, since their item shares would overlap;
- a lock file left by a dead process (the file is there, nobody holds it): taken over, with a warning
  naming the dead holder (never silently).

Under torchrun (``TORCHELASTIC_RUN_ID`` set), the run id is torchrun's, shared by the ranks of one job;
each rank also remembers its parent (the torchrun agent) and :meth:`FolderLock.check_alive` refuses to
commit a shard once the agent is gone, so ranks of a killed agent stop instead of writing on.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
import warnings
from pathlib import Path
from typing import IO, Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks
    fcntl = None  # type: ignore[assignment]


class HarvestLockedError(RuntimeError):
    """Another live process is writing into the harvest folder."""


def _run_id(world_size: int) -> str:
    """Shared by the ranks of one run: torchrun's run id; ranks started by hand share their world size."""
    run = os.environ.get("TORCHELASTIC_RUN_ID")
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if run:
        return f"torchrun:{run}:{restart}"
    if world_size > 1:
        return f"world-size-{world_size}"
    return f"pid:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _try_lock(f: IO[str]) -> bool:
    if fcntl is None:
        return True
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _read_holder(path: Path, wait_s: float = 2.0) -> dict[str, Any]:
    """The holder a lock file records (waiting briefly for a peer that has locked but not written yet)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            text = path.read_text()
            if text.strip():
                return dict(json.loads(text))
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            return {}
        time.sleep(0.05)


def _parse(text: str) -> dict[str, Any]:
    try:
        return dict(json.loads(text))
    except (ValueError, TypeError):
        return {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "an unknown process"
    return f"pid {holder.get('pid')} on {holder.get('host')} (run {holder.get('run')}, since {holder.get('since')})"


class FolderLock:
    """This process's right to write rank ``rank`` of the harvest in ``out`` (see the module docs)."""

    def __init__(self, out: Path, rank: int, world_size: int = 1) -> None:
        self.out = out
        self.rank = rank
        self.run = _run_id(world_size)
        self.parent = os.getppid() if os.environ.get("TORCHELASTIC_RUN_ID") else None
        self.path = out / "_progress" / f"rank{rank:03d}.lock"
        self._file: IO[str] | None = None

    def acquire(self) -> FolderLock:
        """Take the lock, or raise :class:`HarvestLockedError` naming the live holder."""
        f = open(self.path, "a+")  # noqa: SIM115 - held open for the harvest's lifetime
        # another process may probe this file for a moment (is_free, _check_other_ranks): retry briefly
        deadline = time.monotonic() + 1.0
        while not _try_lock(f) and time.monotonic() < deadline:
            time.sleep(0.02)
        if not _try_lock(f):
            holder = _read_holder(self.path)
            f.close()
            raise HarvestLockedError(
                f"{self.out} is being written by another harvest ({_describe(holder)}, rank {self.rank}); wait for it "
                "to finish, stop it, or use another out_dir"
            )
        f.seek(0)
        previous = f.read()
        if previous.strip():
            warnings.warn(
                f"{self.path.name}: found the lock of a harvest that ended without releasing it "
                f"({_describe(_parse(previous))}, no longer running); taking it over and resuming its work",
                stacklevel=3,
            )
        me = {"pid": os.getpid(), "host": socket.gethostname(), "run": self.run, "since": time.strftime("%FT%T")}
        f.seek(0)
        f.truncate()
        f.write(json.dumps(me))
        f.flush()
        self._file = f
        self._check_other_ranks()
        return self

    def _check_other_ranks(self) -> None:
        for p in sorted(self.path.parent.glob("rank*.lock")):
            if p == self.path:
                continue
            with open(p, "a+") as g:
                if _try_lock(g):  # nobody holds it (the flock is released with g)
                    g.seek(0)
                    stale = g.read()
                    if stale.strip():
                        warnings.warn(
                            f"{p.name}: found the lock of a harvest that ended without releasing it "
                            f"({_describe(_parse(stale))}, no longer running); clearing it",
                            stacklevel=4,
                        )
                        g.truncate(0)
                    continue
            holder = _read_holder(p)
            if holder.get("run") != self.run:
                self.release()
                raise HarvestLockedError(
                    f"{self.out} is being written by another harvest ({_describe(holder)}, {p.stem}); two runs "
                    "would store items twice. Wait for it to finish, stop it, or use another out_dir"
                )

    def is_free(self, rank: int) -> bool:
        """Whether nobody holds rank ``rank``'s lock (its temporary files are then debris)."""
        if rank == self.rank:
            return False
        p = self.path.parent / f"rank{rank:03d}.lock"
        if not p.exists():
            return True
        with open(p, "a+") as g:
            return _try_lock(g)

    def check_alive(self) -> None:
        """Raise before committing a shard when the torchrun agent that started this rank is gone."""
        if self.parent is not None and os.getppid() != self.parent:
            raise HarvestLockedError(
                f"rank {self.rank}: the torchrun agent (pid {self.parent}) that started this process is gone; "
                "stopping without committing more shards (rerun the harvest to resume)"
            )

    def release(self) -> None:
        """Clear the holder record and release the lock."""
        if self._file is None:
            return
        try:
            self._file.seek(0)
            self._file.truncate()
            self._file.flush()
        finally:
            self._file.close()  # closing releases the flock
            self._file = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
