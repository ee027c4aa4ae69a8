"""docs/soak.md and docs/soak.png from one soak run; the growth limits are judged here.

Kept apart from soak.py (which drives Docker and processes) so the verdicts are
pure functions of the samples they are printed next to.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Sequence
from pathlib import Path

from report import md_table

#: Growth from minute 2 to the end that the issue allows.
RSS_LIMIT_MB = 5.0
COUNT_LIMIT = 0
BASELINE_FROM, BASELINE_TO = 120.0, 180.0


@dataclasses.dataclass(frozen=True)
class Sample:
    """The watcher process at one moment: seconds since it started, RSS, open fds, threads, /healthz status."""

    t: float
    rss_kb: int
    fds: int
    threads: int
    healthz: int


@dataclasses.dataclass(frozen=True)
class Growth:
    """One resource: the lowest value of minute 2 against the value at the end."""

    name: str
    baseline: float
    end: float
    limit: float
    unit: str

    @property
    def growth(self) -> float:
        return self.end - self.baseline

    @property
    def ok(self) -> bool:
        return self.growth < self.limit if self.unit == "MB" else self.growth <= self.limit


@dataclasses.dataclass
class SoakRun:
    """What one run did and saw; filled in by soak.py as it goes."""

    command: str
    started: datetime.datetime
    environment: dict[str, str]
    samples: list[Sample] = dataclasses.field(default_factory=list)
    starts: int = 0
    stops: int = 0
    stopped_by_restart: int = 0
    restarts: list[tuple[float, float]] = dataclasses.field(default_factory=list)  # (t, seconds down)
    checks: list[tuple[str, bool]] = dataclasses.field(default_factory=list)
    watcher_lines: dict[str, int] = dataclasses.field(default_factory=dict)
    watcher_exit: int | None = None
    duration: float = 0.0
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)  # its /metrics at the end


def growths(samples: Sequence[Sample]) -> list[Growth]:
    """Growth of each resource from minute 2 to the last sample.

    The baseline is the lowest value seen from 2:00 to 3:00 (not one sample, which a
    pass in flight may have caught with an extra socket open), so a leak of even one
    fd or thread over the run shows.
    """
    window = [s for s in samples if BASELINE_FROM <= s.t < BASELINE_TO] or list(samples[-1:])
    last = samples[-1]
    return [
        Growth("RSS", min(s.rss_kb for s in window) / 1024, last.rss_kb / 1024, RSS_LIMIT_MB, "MB"),
        Growth("open file descriptors", min(s.fds for s in window), last.fds, COUNT_LIMIT, ""),
        Growth("threads", min(s.threads for s in window), last.threads, COUNT_LIMIT, ""),
    ]


def failures(run: SoakRun) -> list[str]:
    """Every limit exceeded and every failed check, one line each; empty when the run passed."""
    found = [f"{g.name} grew by {_amount(g)} from minute 2 to the end (limit: {_limit(g)})"
             for g in growths(run.samples) if not g.ok]
    found += [f"check failed: {what}" for what, ok in run.checks if not ok]
    if run.watcher_exit != 0:
        found.append(f"the watcher exited {run.watcher_exit} on SIGTERM, not 0")
    return found


def _amount(g: Growth) -> str:
    return f"{g.growth:+.2f} MB" if g.unit == "MB" else f"{g.growth:+.0f}"


def _limit(g: Growth) -> str:
    return f"under {g.limit:g} MB" if g.unit == "MB" else f"{g.limit:+d}"


def _value(g: Growth, value: float) -> str:
    return f"{value:.1f} MB" if g.unit == "MB" else f"{value:.0f}"


def summary_section(run: SoakRun) -> str:
    rows = [[g.name, _value(g, g.baseline), _value(g, g.end), _amount(g), _limit(g), "met" if g.ok else "**not met**"]
            for g in growths(run.samples)]
    return ("## Growth from minute 2 to the end\n\n"
            + md_table(["watcher", "minute 2 (lowest)", "end", "growth", "limit", "verdict"], rows))


def activity_section(run: SoakRun) -> str:
    restarts = "; ".join(f"at {t / 60:.1f} min, down {down:.1f} s" for t, down in run.restarts) or "none"
    lines = ", ".join(f"{kind} {n}" for kind, n in sorted(run.watcher_lines.items())) or "none"
    rows = [
        ["duration", f"{run.duration / 60:.1f} min"],
        ["containers started", str(run.starts)],
        ["containers stopped", f"{run.stops + run.stopped_by_restart} ({run.stops} by `docker stop` or "
                               f"`docker kill`, {run.stopped_by_restart} by their engine's restart)"],
        ["engine restarts", f"{len(run.restarts)} ({restarts})"],
        ["watcher log lines", lines],
        ["watcher exit on SIGTERM", str(run.watcher_exit)],
        ["its /metrics at the end", "<br>".join(f"`{k}` {v:g}" for k, v in sorted(run.metrics.items())) or "none"],
        *([what, "ok" if ok else "**failed**"] for what, ok in run.checks),
    ]
    return "## What the run did\n\n" + md_table(["", ""], rows)


def samples_section(run: SoakRun) -> str:
    rows = [[f"{s.t / 60:.2f}", f"{s.rss_kb / 1024:.2f}", str(s.fds), str(s.threads), str(s.healthz)]
            for s in run.samples]
    return ("## Every sample\n\n<details><summary>" + f"{len(run.samples)} samples, one every 10 s"
            + "</summary>\n\n" + md_table(["minute", "RSS MB", "fds", "threads", "/healthz"], rows)
            + "\n</details>\n")


def header_section(run: SoakRun) -> str:
    env = "\n".join(f"- {k}: {v}" for k, v in run.environment.items())
    verdict = "all limits met" if not failures(run) else "**limits not met**: " + "; ".join(failures(run))
    return (
        "# Soak: one watcher, 500 container starts and stops, two engine restarts\n\n"
        f"Run `{run.command}` on {run.started:%Y-%m-%d %H:%M} UTC: {verdict}.\n\n"
        "One `haproxy-docker-config --watch --metrics 127.0.0.1:PORT --log-format json` (the installed console "
        "script, no `-v`) follows a private "
        "dockerd of its own (own socket, data root and bridge, so the engine others use is never "
        "restarted) and keeps the listener of a real haproxy in step through its stats socket. Containers "
        "of the test image are started at a steady pace and stopped (`docker stop` and `docker kill` in "
        "turn) once more than a dozen run; the engine is stopped and started twice on the way, which stops "
        "its containers and breaks the watcher's event stream. Every 10 s the watcher's RSS (`VmRSS`), open "
        "file descriptors (`/proc/PID/fd`) and threads (`Threads`) are read from /proc, then its `/healthz` is "
        "asked (after the reading, so that request's socket and thread are not counted). Growth is the value "
        "after the last change and 30 quiet seconds, less the lowest value seen in minute 2 (from 2:00 to "
        "3:00, once imports and first connections are done). Plot: soak.png.\n\n" + env + "\n")


def write_report(run: SoakRun, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    text = "\n".join([header_section(run), summary_section(run), activity_section(run), samples_section(run)])
    (out / "soak.md").write_text(text)
    plot(run, out / "soak.png")


def plot(run: SoakRun, path: Path) -> None:
    """RSS, fds and threads over time; engine restarts as dashed lines, minute 2 marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [s.t / 60 for s in run.samples]
    series = [("RSS (MB)", [s.rss_kb / 1024 for s in run.samples]), ("open fds", [s.fds for s in run.samples]),
              ("threads", [s.threads for s in run.samples])]
    fig, axes = plt.subplots(len(series), 1, sharex=True, figsize=(8, 6.5))
    for ax, (label, values) in zip(axes, series):
        ax.plot(minutes, values, marker=".", linewidth=1)
        ax.set_ylabel(label)
        ax.axvspan(0, BASELINE_FROM / 60, color="0.9")
        for t, _ in run.restarts:
            ax.axvline(t / 60, color="tab:red", linestyle="--", linewidth=1)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylim(bottom=0)
    axes[-1].set_xlabel("minutes since the watcher started (grey: before minute 2; red: engine restarts)")
    fig.suptitle(f"--watch soak: {run.starts} container starts, {len(run.restarts)} engine restarts")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
