"""A ``python -m encoderlens.harvest`` worker that is SIGKILLed when it starts writing shard N + 1.

Used by test_harvest_torchrun.py as the torchrun script: ``KILL_AFTER_SHARDS=N`` in the environment.
Each rank commits N shards (file and progress), then dies by a real SIGKILL, as an OOM killer or a
preempted node would kill it: no cleanup, no exception handler runs.
"""

from __future__ import annotations

import os
import signal
import sys

from encoderlens.harvest import command, writer


def main() -> int:
    keep = int(os.environ["KILL_AFTER_SHARDS"])
    save = writer.save_shard_atomic
    saved: list[object] = []

    def save_or_die(*args: object, **kwargs: object) -> None:
        if len(saved) >= keep:
            os.kill(os.getpid(), signal.SIGKILL)
        save(*args, **kwargs)  # type: ignore[arg-type]
        saved.append(args[0])

    writer.save_shard_atomic = save_or_die  # type: ignore[assignment]
    return command.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
