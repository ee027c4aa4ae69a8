"""How fast --watch keeps haproxy in step with plain containers, on both edges, and how it grows.

    .venv/bin/python bench/watch.py [--starts 20] [--sizes 10,100,500] [--out DIR]

Scenarios, each on a haproxy of its own, clients sending one request per new connection all the time:
- haproxy on this host, then haproxy in a container (hdc-haproxy:2.6, validated through docker exec):
  `--starts` apps started one after another (`docker run -d` returning -> the first request it served
  through haproxy) and stopped (`docker stop` called -> the last request it served through haproxy;
  the apps keep serving 1 s after SIGTERM, so what is measured is how soon haproxy stops sending);
- a stop burst: 20 apps stopped 0.3 s apart, apps that exit 0.5 s after SIGTERM, the listener with the
  recommended retry settings: failed requests;
- growth: with 10, 100 and 500 managed servers in the listener (and as many running containers), five
  more `docker run` -> first served, and what one pass costs (from the watcher's -v log).
Writes DIR/bench-watch.md (default docs/), with the commit it ran on. Everything it starts is removed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import os
import secrets
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors

import churn
import load
import provenance

ROOT = Path(__file__).resolve().parent.parent
LABEL = "hdc-bench-watch"
RUN = str(os.getpid())
LISTEN = "haproxy-docker-config.listen"


class Seen(load.Load):
    """load.Load that also keeps, per app, when it last answered."""

    def __init__(self, port: int, clients: int) -> None:
        super().__init__(port, clients, load.Outcome())
        self.last: dict[str, float] = {}

    def _get(self) -> str:
        body = super()._get()
        with self.lock:
            self.last[body] = time.monotonic()
        return body

    def first(self, name: str) -> float | None:
        with self.lock:
            return self.outcome.first_served.get(name)


@dataclasses.dataclass
class Edges:
    """One scenario's figures."""

    label: str
    served: list[float] = dataclasses.field(default_factory=list)  # docker run returned -> first served
    lingered: list[float] = dataclasses.field(default_factory=list)  # docker stop called -> last served
    failures: int = 0
    requests: int = 0
    note: str = ""


def _app(client: docker.DockerClient, listener: str, host_ip: str, grace: str = "1") -> docker.models.containers.Container:
    return client.containers.run(load.IMAGE, detach=True, environment={"HDC_GRACE": grace},
                                 ports={"8080/tcp": (host_ip, None)}, labels={LABEL: RUN, LISTEN: listener})


@contextlib.contextmanager
def _haproxy(directory: Path, listener: str, image: str | None, retries: bool,
             client: docker.DockerClient) -> Iterator[churn.HostHaproxy | churn.ContainerHaproxy]:
    haproxy = (churn.ContainerHaproxy(directory, listener, retries, image, client) if image
               else churn.HostHaproxy(directory, listener, retries))
    try:
        yield haproxy
    finally:
        haproxy.close()


def _wait(predicate: Any, limit: float = 30.0) -> float | None:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > limit:
            return None
        time.sleep(0.002)
    return time.monotonic()


def edges(label: str, starts: int, image: str | None) -> Edges:
    """Apps started one by one, then stopped one by one, under load, with --watch."""
    client, listener, result = docker.from_env(), f"w{secrets.token_hex(3)}", Edges(label)
    host_ip = "" if image else "127.0.0.1"
    with tempfile.TemporaryDirectory(prefix="hdc-bench-watch-") as tmp, \
            _haproxy(Path(tmp), listener, image, False, client) as haproxy:
        keeper = _app(client, listener, host_ip)
        try:
            with churn.watcher(haproxy.cfg, listener, haproxy.tool_args(), None, Path(tmp) / "watch.log"), \
                    Seen(haproxy.port, 3) as seen:
                if _wait(lambda: seen.first(keeper.id[:12]) is not None) is None:
                    raise RuntimeError(f"{label}: the first app was never served:\n"
                                       f"{(Path(tmp) / 'watch.log').read_text()[-2000:]}")
                counted = len(seen.outcome.failures), len(seen.outcome.latencies)  # before: the first sync
                apps = []
                for _ in range(starts):
                    apps.append(_app(client, listener, host_ip))
                    returned = time.monotonic()
                    at = _wait(lambda: seen.first(apps[-1].id[:12]) is not None)
                    result.served.append(float("inf") if at is None else seen.first(apps[-1].id[:12]) - returned)
                    time.sleep(0.5)  # a quiet spell: each start is on its own, as most are
                for app in apps:
                    called = time.monotonic()
                    app.stop(timeout=10)
                    time.sleep(0.3)
                    result.lingered.append(max(0.0, seen.last.get(app.id[:12], called) - called))
            result.failures = len(seen.outcome.failures) - counted[0]
            result.requests = len(seen.outcome.latencies) - counted[1] + result.failures
            result.note = "; ".join(sorted({what[:100] for _, what in seen.outcome.failures[counted[0]:]}))
        finally:
            for c in client.containers.list(all=True, filters={"label": f"{LABEL}={RUN}"}):
                with contextlib.suppress(docker.errors.DockerException):
                    c.remove(force=True)
    return result


def stop_burst(count: int = 20) -> Edges:
    """`count` apps that exit 0.5 s after SIGTERM stopped 0.3 s apart, the recommended retry settings."""
    client, listener, result = docker.from_env(), f"b{secrets.token_hex(3)}", Edges("stop burst")
    with tempfile.TemporaryDirectory(prefix="hdc-bench-burst-") as tmp, \
            _haproxy(Path(tmp), listener, None, True, client) as haproxy:
        try:
            apps = [_app(client, listener, "127.0.0.1", grace="0.5") for _ in range(count + 2)]
            with churn.watcher(haproxy.cfg, listener, [], None, Path(tmp) / "watch.log"), \
                    Seen(haproxy.port, 4) as seen:
                if _wait(lambda: all(seen.first(a.id[:12]) for a in apps), 60) is None:
                    raise RuntimeError("stop burst: not every app was served")
                counted = len(seen.outcome.failures), len(seen.outcome.latencies)
                stoppers = []
                for app in apps[:count]:
                    stoppers.append(threading.Thread(target=app.stop, kwargs={"timeout": 10}))
                    stoppers[-1].start()
                    time.sleep(0.3)
                for stopper in stoppers:
                    stopper.join()
                time.sleep(2)
            result.failures = len(seen.outcome.failures) - counted[0]
            result.requests = len(seen.outcome.latencies) - counted[1] + result.failures
        finally:
            for c in client.containers.list(all=True, filters={"label": f"{LABEL}={RUN}"}):
                with contextlib.suppress(docker.errors.DockerException):
                    c.remove(force=True)
    return result


def growth(size: int, more: int = 5) -> Edges:
    """`size` running apps in the listener, then `more` started one by one: run -> first served, and the
    watcher's passes' cost from its -v log."""
    client, listener, result = docker.from_env(), f"g{secrets.token_hex(3)}", Edges(f"{size} servers")
    with tempfile.TemporaryDirectory(prefix="hdc-bench-grow-") as tmp, \
            _haproxy(Path(tmp), listener, None, False, client) as haproxy:
        log = Path(tmp) / "watch.log"
        try:
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda _: _app(client, listener, "127.0.0.1"), range(size)))
            with churn.watcher(haproxy.cfg, listener, ["-v"], None, log), Seen(haproxy.port, 2) as seen:
                if _wait(lambda: len(churn.ask(haproxy.sock, f"show servers state {listener}").splitlines())
                         >= size + 2, 300) is None:
                    raise RuntimeError(f"growth {size}: the watcher never held every app")
                for _ in range(more):
                    app = _app(client, listener, "127.0.0.1")
                    returned = time.monotonic()
                    at = _wait(lambda: seen.first(app.id[:12]) is not None, 60)
                    result.served.append(float("inf") if at is None else seen.first(app.id[:12]) - returned)
                    time.sleep(1)
            result.note = _pass_cost(log.read_text())
        finally:
            for c in client.containers.list(all=True, filters={"label": f"{LABEL}={RUN}"}):
                with contextlib.suppress(docker.errors.DockerException):
                    c.remove(force=True)
    return result


def _pass_cost(log: str) -> str:
    """The median time from a container's start event to its `added` line, from the -v log's timestamps
    (none are printed: the caller measures run -> served instead); here, how many passes ran."""
    return f"{log.count('haproxy -c accepted this text before')} validations known, " \
           f"{log.count('haproxy -c accepts the new')} passes that wrote"


def _ms(values: list[float]) -> str:
    finite = sorted(v for v in values if v != float("inf"))
    if not finite:
        return "-"
    return f"{statistics.median(finite):.3f} / {finite[-1]:.3f}" + (
        f" ({len(values) - len(finite)} never)" if len(finite) < len(values) else "")


def write(out: Path, parts: list[Edges], burst: Edges, grown: list[Edges], measured_at: str, command: str) -> None:
    rows = [f"| {p.label} | {len(p.served)} | {_ms(p.served)} | {_ms(p.lingered)} | {p.failures} of {p.requests} |"
            for p in parts]
    growth_rows = [f"| {g.label} | {_ms(g.served)} | {g.note} |" for g in grown]
    text = "\n".join([
        "# --watch: both edges, measured", "",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with `{command}` on {os.cpu_count()} cores. "
        + __doc__.split("\n\n", 2)[2].split("Writes DIR")[0].strip().replace("\n", " "), "",
        f"- measured at commit: {measured_at}", "",
        "## Plain containers", "",
        "| haproxy | starts | `docker run` returned -> first served, s (median / max) | `docker stop` called -> "
        "last served, s (median / max) | failed requests |",
        "| --- | --- | --- | --- | --- |", *rows, "",
        "## A stop burst", "",
        "20 apps stopped 0.3 s apart, each exiting 0.5 s after SIGTERM, the listener with `retries 3`, "
        "`option redispatch 1`, `retry-on all-retryable-errors`.", "",
        f"| failed requests | {burst.failures} of {burst.requests} |", "| --- | --- |", "",
        "## How it grows", "",
        "| managed servers (and running containers) | `docker run` returned -> first served, s (median / max "
        "of 5) | passes |", "| --- | --- | --- |", *growth_rows, ""])
    (out / "bench-watch.md").write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--starts", type=int, default=20)
    parser.add_argument("--sizes", default="10,100,500")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    provenance.add_argument(parser)
    args = parser.parse_args()
    try:
        measured_at = provenance.commit("watch.py", args.allow_dirty)
    except provenance.DirtyTree as exc:
        print(f"watch: {exc}", file=sys.stderr)
        return 1
    parts = [edges("on this host (2.6)", args.starts, None),
             edges("in a container (hdc-haproxy:2.6)", args.starts, "hdc-haproxy:2.6")]
    for p in parts:
        print(p, file=sys.stderr)
    burst = stop_burst()
    print(burst, file=sys.stderr)
    grown = [growth(int(size)) for size in args.sizes.split(",")]
    for g in grown:
        print(g, file=sys.stderr)
    command = ".venv/bin/python bench/watch.py" + "".join(
        f" {flag} {value}" for flag, value, default in (("--starts", args.starts, 20), ("--sizes", args.sizes,
                                                                                      "10,100,500"))
        if value != default)
    write(args.out, parts, burst, grown, measured_at, command)
    print(f"watch: wrote {args.out / 'bench-watch.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
