"""How a run computes, as opposed to what it computes: settings in no cache key and no result.

`ExperimentConfig` holds everything that changes results (and keys the stage cache); a `Runtime`
holds what only changes speed or memory: torch's CPU threads, how many runs train at once in
worker processes, and how many users are scored per block. The device is not here: results
differ between a CPU and a GPU, so the device type is part of every stage's key.

Threads follow one rule (`Runtime.resolve_threads`), first match wins:

1. an explicit count (`twostage reproduce --threads N`, `Runtime(threads=N)`);
2. `$OMP_NUM_THREADS`, read when the run starts (its first entry, as OpenMP reads a list);
3. every CPU this process may run on (`os.sched_getaffinity`, else `os.cpu_count()`): both cores
   of a 2-core machine.

On a busy machine fewer threads are often faster: `benchmarks/README.md`, "The real table".

`jobs` > 1 trains that many (method, seed) runs at once, in forked worker processes that share
the stages' tensors; the threads are split between them (`threads_per_job`). A run's numbers
depend on its thread count, not on its neighbours: `--jobs 2 --threads 2` gives each run one
thread, and exactly the results of `--threads 1`.

`backend="ray"` trains the runs as Ray tasks instead (`twostage.pipeline.ray_backend`): on a
Ray instance started for the run with `threads` CPUs, or on the cluster at `address`; each task
pins `threads_per_job()` threads, so the results are again those of that thread count.
"""

from __future__ import annotations

import ctypes
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from twostage.errors import ConfigError

THREADS_FLAG = "--threads"
THREADS_ENV = "$OMP_NUM_THREADS"
THREADS_ALL = "all cores"
BACKENDS = ("local", "ray")
LARGE_BLOCK = 4 << 20  # bytes: blocks this large or larger get their own mapping (see below)
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)


def machine_cores() -> int:
    """The CPUs this process may run on, as OpenMP (and so torch) counts them by default."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def env_threads(environ: dict[str, str] | None = None) -> int | None:
    """`$OMP_NUM_THREADS` as a count, or None when it is unset, empty or not a positive integer
    (a value OpenMP would ignore too; the next rule applies)."""
    text = (os.environ if environ is None else environ).get("OMP_NUM_THREADS", "")
    first = text.split(",")[0].strip()
    return int(first) if first.isdigit() and int(first) > 0 else None


@dataclass(frozen=True)
class Runtime:
    """Threads and chunk sizes: never part of a cache key, never a reason to recompute."""

    threads: int = 0  # torch CPU threads; 0: $OMP_NUM_THREADS, else every core (module doc)
    chunk_users: int = 256  # users per block when the world scores every user × item pair
    jobs: int = 1  # (method, seed) runs trained at once, each in a worker process
    backend: str = "local"  # local: this process or forked workers; ray: Ray tasks
    address: str | None = None  # with backend ray: a running cluster's address (else a new one)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(
                f"runtime.backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}.",
                "runtime.backend",
            )
        if self.address is not None and self.backend != "ray":
            raise ConfigError(
                f"runtime.address {self.address!r} is for the ray backend; add --backend ray.",
                "runtime.address",
            )
        if self.threads < 0:
            raise ConfigError(
                f"runtime.threads must be ≥ 0, got {self.threads}.", "runtime.threads"
            )
        if self.jobs < 1:
            raise ConfigError(f"runtime.jobs must be ≥ 1, got {self.jobs}.", "runtime.jobs")
        if self.chunk_users < 1:
            raise ConfigError(
                f"runtime.chunk_users must be ≥ 1, got {self.chunk_users}.", "runtime.chunk_users"
            )

    def resolve_threads(self) -> tuple[int, str]:
        """(count, where it came from): `--threads`, `$OMP_NUM_THREADS` or `all cores`."""
        if self.threads > 0:
            return self.threads, THREADS_FLAG
        from_env = env_threads()
        if from_env is not None:
            return from_env, THREADS_ENV
        return machine_cores(), THREADS_ALL

    def threads_per_job(self) -> int:
        """Each worker's torch threads when `jobs` > 1: the threads split evenly, at least one."""
        return max(1, self.resolve_threads()[0] // self.jobs)

    def apply(self) -> tuple[int, str]:
        """Set torch's thread count by the rule above; return (count, where it came from)."""
        count, source = self.resolve_threads()
        if torch.get_num_threads() != count:
            torch.set_num_threads(count)
        return count, source


def cpu_model() -> str:
    """The CPU's model name (`/proc/cpuinfo`), else what `platform` knows: trained numbers move in
    their last digits between CPUs, so measurements and calibrations record it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


_forked = False  # set in a child process forked after this module was imported


def _mark_forked() -> None:
    global _forked
    _forked = True


os.register_at_fork(after_in_child=_mark_forked)


def compiled_loop_threads() -> int:
    """Threads for a compiled parallel loop (numba): torch's thread count, but one in a process
    forked from another (the `--jobs` workers). numba's usual threading layer, GNU OpenMP, hangs
    in a child forked after the parent used it, so a forked process runs such loops serially;
    torch itself does the same with its own OpenMP pool."""
    return 1 if _forked else torch.get_num_threads()


def pin_large_blocks(threshold: int = LARGE_BLOCK) -> bool:
    """Make glibc's malloc give every block of `threshold` bytes or more its own mapping,
    returned to the system when freed; True where that was set (glibc), False elsewhere.

    By default glibc raises that threshold (up to 32 MB) each time a mapped block is freed, after
    which large temporaries come from the heap. A loop that allocates a large temporary and keeps
    a small result each time (the on-demand bandit log: an 8 MB block of scores, a few drawn
    items) then leaves holes the next temporary cannot reuse: after the simulator's training in
    the same process, the log's memory grew 0.4 GB a thousand users at 1M items and the run
    stalled out of memory; with the threshold fixed it stayed flat (benchmarks/README.md). Fixing
    the threshold turns glibc's adjustment off for the rest of the process; it changes memory
    and speed, never a number.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):  # not glibc
        return False
