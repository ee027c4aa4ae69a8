"""Timing one child process: wall time and peak memory, and medians over runs.

Each run is one fresh process, as an operator's (or a cron job's) invocation
is: interpreter start-up and imports are part of what the tool costs.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

SPAWN = str(Path(__file__).resolve().with_name("spawn.py"))


class BenchError(Exception):
    """A child did not do what the benchmark needs; the numbers would be meaningless."""


@dataclasses.dataclass(frozen=True)
class Sample:
    """One run: wall seconds and max RSS in MB."""

    wall: float
    rss_mb: float


@dataclasses.dataclass(frozen=True)
class Stats:
    """The runs of one command in one scenario."""

    samples: tuple[Sample, ...]

    @property
    def wall(self) -> float:
        return statistics.median(s.wall for s in self.samples)

    @property
    def rss_mb(self) -> float:
        return statistics.median(s.rss_mb for s in self.samples)

    @property
    def wall_min(self) -> float:
        return min(s.wall for s in self.samples)

    @property
    def wall_max(self) -> float:
        return max(s.wall for s in self.samples)


@dataclasses.dataclass(frozen=True)
class Command:
    """A child to time; `prepare` runs untimed before every run (e.g. restore a file)."""

    name: str
    argv: Sequence[str]
    prepare: Callable[[], None] | None = None
    expect: int = 0


def run_child(argv: Sequence[str], expect: int = 0) -> tuple[Sample, str]:
    """Run argv to completion through spawn.py; wall from spawn to reaping, RSS from wait4.

    ru_maxrss of a reaped child is the largest of the child and every
    descendant it reaped itself, so a tool's peak includes its `haproxy -c`.
    spawn.py explains why the child is not started from this process directly.
    """
    read_end, write_end = os.pipe()
    try:
        with tempfile.TemporaryFile() as out:
            subprocess.run([sys.executable, "-I", "-S", SPAWN, str(write_end), *argv], check=True,
                           stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, pass_fds=(write_end,))
            os.close(write_end)
            write_end = -1
            wall, maxrss_kb, code = os.read(read_end, 256).decode().split()
            out.seek(0)
            output = out.read().decode(errors="replace")
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    if int(code) != expect:
        raise BenchError(f"{' '.join(argv)} exited {code}, expected {expect}:\n{output}")
    return Sample(float(wall), int(maxrss_kb) / 1024), output


def measure(commands: Sequence[Command], reps: int) -> dict[str, Stats]:
    """Median-ready samples of every command, runs interleaved round-robin.

    Interleaving spreads any drift of the machine (page cache, dockerd, other
    tenants) over all commands alike, so ratios between them stay fair. One
    untimed warm-up round first fills the page cache and the .pyc files.
    """
    samples: dict[str, list[Sample]] = {c.name: [] for c in commands}
    for rep in range(reps + 1):
        for command in commands:
            if command.prepare is not None:
                command.prepare()
            sample, _ = run_child(command.argv, command.expect)
            if rep > 0:
                samples[command.name].append(sample)
    return {name: Stats(tuple(runs)) for name, runs in samples.items()}


@dataclasses.dataclass(frozen=True)
class CpuSnapshot:
    """Machine-wide busy CPU time next to the CPU time of this process and its reaped children.

    The difference over a scenario is CPU used by others (a test suite, dockerd
    catching up after starting containers): the numbers' noise, made visible.
    """

    wall: float
    machine: float
    ours: float

    @classmethod
    def take(cls) -> "CpuSnapshot":
        with open("/proc/stat") as handle:
            fields = [int(v) for v in handle.readline().split()[1:]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
        busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
        ours = sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                       resource.getrusage(resource.RUSAGE_CHILDREN)))
        return cls(time.monotonic(), busy, ours)

    def others_since(self, earlier: "CpuSnapshot") -> float:
        """Average cores busy with work other than ours between the two snapshots."""
        others = (self.machine - earlier.machine) - (self.ours - earlier.ours)
        return max(0.0, others / (self.wall - earlier.wall))


def runnable_tasks() -> int:
    with open("/proc/stat") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("procs_running"))


def wait_until_quiet(limit: float = 30.0, window: float = 2.0) -> float:
    """Wait (at most `limit` s) until the machine is idle but for us; return the seconds waited.

    Starting 200 containers keeps dockerd, containerd and the kernel busy for a
    while after the last `start` returns; timing during that would charge their
    work to the next scenario.
    """
    start = time.monotonic()
    while time.monotonic() - start < limit:
        samples = []
        for _ in range(int(window / 0.1)):
            samples.append(runnable_tasks())
            time.sleep(0.1)
        if statistics.mean(samples) <= 1.2:  # the sampler itself is one runnable task
            break
    return time.monotonic() - start
