"""Run a service under cProfile, counting the main thread's CPU time (not time spent waiting).

    python -m bench.profiled_service ingest ingest.prof

The profile is written when the service stops. uvicorn re-raises the SIGTERM it
caught once it has shut down, which with Python's default handler would kill the
process before the profile is written; here SIGTERM raises SystemExit instead.
Time spent in other threads (anyio's worker threads, for FastAPI's sync dependencies)
is not counted: compare the total with the process's CPU time.
"""

from __future__ import annotations

import cProfile
import runpy
import signal
import sys
import time
from types import FrameType


def _exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main() -> None:
    service, output = sys.argv[1], sys.argv[2]
    sys.argv = [f"services.{service}"]
    signal.signal(signal.SIGTERM, _exit)
    profiler = cProfile.Profile(time.thread_time)
    try:
        profiler.runcall(runpy.run_module, f"services.{service}", run_name="__main__")
    except SystemExit:
        pass
    finally:
        profiler.dump_stats(output)


if __name__ == "__main__":
    main()
