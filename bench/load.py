"""Steady HTTP load through a real haproxy while containers come and go and haproxy reloads.

Run from the repo root: `.venv/bin/python bench/load.py [--seconds 30] [--clients 4]`.
Containers are added and deleted through the Runtime API and, every other round,
through a hot restart (-h with -x), again and again; then a --watch follows
labelled containers started and stopped one at a time. Writes docs/load.md:
requests, failures, latency percentiles, how soon each added container served
traffic and how soon the watcher's changes reached haproxy. tests/test_load.py
runs the same scenario and asserts zero failures.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import docker

import provenance

ROOT = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).parent / "haproxy-docker-config")
IMAGE = "hdc-test-httpd:latest"
LABEL = "hdc-load"
#: How long an added container may take to serve before it counts as never served (a generous limit:
#: the figure is the delay itself, reported, not this bound).
SERVE_DEADLINE = 30.0
RUN = str(os.getpid())  # this run's value of LABEL: another run on the same dockerd keeps its containers


@dataclasses.dataclass
class Outcome:
    """What the load saw: every request's latency, every failure, and time to first serve."""

    latencies: list[float] = dataclasses.field(default_factory=list)
    failures: list[tuple[float, str]] = dataclasses.field(default_factory=list)  # (monotonic time, what)
    first_served: dict[str, float] = dataclasses.field(default_factory=dict)
    serve_delays: list[float] = dataclasses.field(default_factory=list)
    never_served: list[str] = dataclasses.field(default_factory=list)
    rounds: int = 0
    reloads: int = 0

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else 0.0


class Clients:
    """Client threads (`threads`, told to end by `stop`) that run while the `with` block does."""

    threads: list[threading.Thread]
    stop: threading.Event

    def __enter__(self) -> Self:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


class Load(Clients):
    """Client threads, each sending one request per new connection (`Connection: close`)."""

    def __init__(self, port: int, clients: int, outcome: Outcome) -> None:
        self.port, self.outcome = port, outcome
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                body = self._get()
            except Exception as exc:  # every kind of failure counts, none is retried
                with self.lock:
                    self.outcome.failures.append((time.monotonic(), repr(exc)))
                continue
            done = time.monotonic()
            with self.lock:
                self.outcome.latencies.append(done - started)
                self.outcome.first_served.setdefault(body, done)

    def _get(self) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", "/", headers={"Connection": "close"})
            response = conn.getresponse()
            body = response.read().decode().strip()
        finally:
            conn.close()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {body[:60]}")
        return body


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(directory: Path, port: int) -> Path:
    """The recommended global settings: an admin stats socket that hands over the listeners."""
    path = directory / "haproxy.cfg"
    path.write_text(
        "global\n    maxconn 512\n"
        f"    stats socket {directory}/admin.sock mode 600 level admin expose-fd listeners\n\n"
        "defaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n\n"
        f"listen app\n    bind 127.0.0.1:{port}\n    balance roundrobin\n"
        "    #DOCKERSERVER $id ${ip}:$port check inter 1000 rise 2 fall 2\n")
    return path


def tool(cfg: Path, *args: str) -> None:
    result = subprocess.run([CLI, "-f", str(cfg), "-l", "app", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"haproxy-docker-config {' '.join(args)} failed: {result.stderr.strip()}")


def pids(pidfile: Path) -> list[int]:
    try:
        return [int(p) for p in pidfile.read_text().split()]
    except FileNotFoundError:
        return []


def wait_gone(old: list[int], timeout: float = 10.0) -> None:
    """Wait for old haproxy processes to finish their connections and exit (-sf)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() and not _zombie(p) for p in old):
        time.sleep(0.05)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def start_container(client: docker.DockerClient,
                    labels: dict[str, str] | None = None) -> docker.models.containers.Container:
    container = client.containers.run(IMAGE, detach=True, ports={"8080/tcp": ("127.0.0.1", None)},
                                      labels={LABEL: RUN, **(labels or {})})
    container.reload()
    port = int(container.attrs["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/")
            if conn.getresponse().status == 200:
                return container
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"container {container.short_id} never answered")


def one_round(cfg: Path, pidfile: Path, client: docker.DockerClient, serving: list, outcome: Outcome,
              live: bool) -> None:
    """Add a fresh container, then take the oldest out and remove it: live or by hot restart."""
    new = start_container(client)
    how = () if live else ("--no-runtime", "-h", str(pidfile))
    old_pids = pids(pidfile)
    tool(cfg, "-a", new.short_id, *how)
    returned = time.monotonic()
    while new.short_id not in outcome.first_served and time.monotonic() - returned < SERVE_DEADLINE:
        time.sleep(0.01)
    if new.short_id in outcome.first_served:
        outcome.serve_delays.append(outcome.first_served[new.short_id] - returned)
    else:
        outcome.never_served.append(new.short_id)
    serving.append(new)
    gone = serving.pop(0)
    tool(cfg, "-d", gone.short_id, *how)
    if not live:
        outcome.reloads += 2
        wait_gone(old_pids)
    gone.remove(force=True)
    outcome.rounds += 1


def run_scenario(seconds: float, clients: int = 4, min_rounds: int = 0) -> Outcome:
    """The whole scenario on a private haproxy and fresh containers, for `seconds` and at least
    `min_rounds` rounds (however slow the machine); cleans up after itself."""
    client = docker.from_env()
    outcome = Outcome()
    serving: list = []
    with tempfile.TemporaryDirectory(prefix="hdc-load-") as tmp:
        directory = Path(tmp)
        port = free_port()
        cfg, pidfile = write_config(directory, port), directory / "haproxy.pid"
        try:
            serving = [start_container(client) for _ in range(2)]
            tool(cfg, "-a", ",".join(c.short_id for c in serving))
            subprocess.run(["haproxy", "-f", str(cfg), "-p", str(pidfile), "-D"], check=True)
            time.sleep(0.5)
            with Load(port, clients, outcome):
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline or outcome.rounds < min_rounds:
                    one_round(cfg, pidfile, client, serving, outcome, live=outcome.rounds % 2 == 0)
        finally:
            _clean_up(pidfile, client)
    return outcome


@dataclasses.dataclass
class WatchOutcome:
    """--watch: seconds from `docker run` returning to the container in haproxy (not in maintenance),
    and from `docker stop` being called to it out of haproxy's ready servers."""

    added: list[float] = dataclasses.field(default_factory=list)
    removed: list[float] = dataclasses.field(default_factory=list)
    failures: int = 0
    requests: int = 0


def ready_servers(sock: Path, backend: str) -> set[str]:
    """Servers the haproxy on `sock` sends traffic to (srv_admin_state 0), from `show servers state`."""
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(str(sock))
        conn.sendall(f"show servers state {backend}\n".encode())
        answer = b"".join(iter(lambda: conn.recv(65536), b"")).decode()
    rows = [line.split() for line in answer.splitlines()[2:]]
    return {row[3] for row in rows if len(row) > 6 and row[6] == "0"}


def _until(predicate: Any, started: float) -> float:
    """Seconds from `started` until predicate() holds (SERVE_DEADLINE at most: then inf)."""
    while not predicate():
        if time.monotonic() - started > SERVE_DEADLINE:
            return float("inf")
        time.sleep(0.01)
    return time.monotonic() - started


def watch_scenario(rounds: int, clients: int = 3) -> WatchOutcome:
    """A --watch on a private haproxy: `rounds` labelled containers started one at a time under load,
    then stopped one at a time; what tests/test_watch.py used to bound (1 s each way) is measured here."""
    client, outcome, load = docker.from_env(), WatchOutcome(), Outcome()
    listen = f"load-{RUN}"
    with tempfile.TemporaryDirectory(prefix="hdc-load-watch-") as tmp:
        directory, port = Path(tmp), free_port()
        cfg, pidfile = write_config(directory, port), directory / "haproxy.pid"
        cfg.write_text(cfg.read_text().replace("listen app", f"listen {listen}"))  # no other run's label
        sock, watcher = directory / "admin.sock", None

        def ready() -> set[str]:
            return ready_servers(sock, listen)
        try:
            keeper = start_container(client, {"haproxy-docker-config.listen": listen})
            subprocess.run(["haproxy", "-f", str(cfg), "-p", str(pidfile), "-D"], check=True)
            watcher = subprocess.Popen([CLI, "-f", str(cfg), "-l", listen, "--watch"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if _until(lambda: keeper.short_id in ready(), time.monotonic()) == float("inf"):
                raise RuntimeError("the watcher never put the first container in haproxy")
            with Load(port, clients, load):
                made = []
                for _ in range(rounds):
                    made.append(client.containers.run(IMAGE, detach=True, ports={"8080/tcp": ("127.0.0.1", None)},
                                                      labels={LABEL: RUN, "haproxy-docker-config.listen": listen}))
                    outcome.added.append(_until(lambda: made[-1].short_id in ready(),
                                                time.monotonic()))
                for gone in made:
                    started = time.monotonic()
                    stopper = threading.Thread(target=gone.stop, kwargs={"timeout": 5})
                    stopper.start()
                    outcome.removed.append(_until(lambda: gone.short_id not in ready(),
                                                  started))
                    stopper.join()
            outcome.failures, outcome.requests = len(load.failures), len(load.latencies) + len(load.failures)
        finally:
            if watcher is not None:
                watcher.terminate()
                watcher.wait(timeout=30)
            _clean_up(pidfile, client)
    return outcome


def _seconds(values: list[float]) -> str:
    """median / max of delays, in seconds."""
    ordered = sorted(values)
    return f"{ordered[len(ordered) // 2]:.2f} / {ordered[-1]:.2f} s" if ordered else "-"


def _clean_up(pidfile: Path, client: docker.DockerClient) -> None:
    """Kill this run's haproxy and remove its containers."""
    for pid in pids(pidfile):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    for container in client.containers.list(all=True, filters={"label": f"{LABEL}={RUN}"}):
        container.remove(force=True)


@contextlib.contextmanager
def background(command: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A command (a watcher) running while the block runs, its output in `log`; SIGTERM at the end,
    as systemd stops it, then SIGKILL after 30 s."""
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def report(outcome: Outcome, watched: WatchOutcome, seconds: float, command: str, measured_at: str) -> str:
    """docs/load.md: the figures docs/zero-downtime.md and docs/sync-and-watch.md quote."""
    ms = lambda v: f"{v * 1000:.1f} ms"  # noqa: E731
    return "\n".join([
        "# Load: no request lost while containers come and go", "",
        f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC with `{command}` on "
        f"{len(os.sched_getaffinity(0))} cores; tests/test_load.py and tests/test_watch.py run the same scenarios and "
        "assert the outcome (no failed request, every container served), this page the timing.", "",
        f"- measured at commit: {measured_at}", "",
        "## Add and delete, live and by hot restart", "",
        f"{seconds:.0f} s, 4 clients, each request on a new connection, no retries.", "",
        "| figure | value |", "| --- | --- |",
        f"| rounds (add + delete) | {outcome.rounds} |",
        f"| hot restarts | {outcome.reloads} |",
        f"| requests | {len(outcome.latencies) + len(outcome.failures):,} |",
        f"| failed requests | {len(outcome.failures)} |",
        f"| latency p50 / p99 / max | {ms(outcome.percentile(50))} / {ms(outcome.percentile(99))} / "
        f"{ms(max(outcome.latencies, default=0))} |",
        f"| added container: command returned -> first request served, median / max | "
        f"{_seconds(outcome.serve_delays)} (negative: served before the command returned) |",
        f"| added containers never served (within {SERVE_DEADLINE:.0f} s) | {len(outcome.never_served)} |", "",
        "## --watch", "",
        f"{len(watched.added)} labelled containers started one at a time, then stopped (`docker stop`) one at a "
        "time, under 3 clients; times until haproxy's `show servers state` shows the change.", "",
        "| figure | value |", "| --- | --- |",
        f"| `docker run` returned -> in haproxy, median / max | {_seconds(watched.added)} |",
        f"| `docker stop` called -> out of haproxy, median / max | {_seconds(watched.removed)} |",
        f"| requests / failed | {watched.requests:,} / {watched.failures} |", "",
    ]) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--watch-rounds", type=int, default=10, help="containers the --watch scenario starts and stops")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where load.md goes")
    provenance.add_argument(parser)
    args = parser.parse_args()
    try:
        measured_at = provenance.commit("load.py", args.allow_dirty)
    except provenance.DirtyTree as exc:
        print(f"load: {exc}", file=sys.stderr)
        return 1
    outcome = run_scenario(args.seconds, args.clients)
    watched = watch_scenario(args.watch_rounds)
    command = ".venv/bin/python bench/load.py" + "".join(
        f" {flag} {value}" for flag, value, default in (("--seconds", args.seconds, 30), ("--clients", args.clients, 4),
                                                       ("--watch-rounds", args.watch_rounds, 10)) if value != default)
    (args.out / "load.md").write_text(report(outcome, watched, args.seconds, command, measured_at))
    print(f"load: wrote {args.out / 'load.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
