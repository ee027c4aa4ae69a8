"""Steady HTTP load through a real haproxy while containers come and go and haproxy reloads.

Run from the repo root: `.venv/bin/python bench/load.py [--seconds 30] [--clients 4]`.
Containers are added and deleted through the Runtime API and, every other round,
through a hot restart (-h with -x), again and again. Prints requests sent,
failures, latency percentiles and how soon each added container served traffic.
tests/test_load.py runs the same scenario and asserts zero failures.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import docker

ROOT = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).parent / "haproxy-docker-config")
IMAGE = "hdc-test-httpd:latest"
LABEL = "hdc-load"
RUN = str(os.getpid())  # this run's value of LABEL: another run on the same dockerd keeps its containers


@dataclasses.dataclass
class Outcome:
    """What the load saw: every request's latency, every failure, and time to first serve."""

    latencies: list[float] = dataclasses.field(default_factory=list)
    failures: list[tuple[float, str]] = dataclasses.field(default_factory=list)  # (monotonic time, what)
    first_served: dict[str, float] = dataclasses.field(default_factory=dict)
    serve_delays: list[float] = dataclasses.field(default_factory=list)
    rounds: int = 0
    reloads: int = 0

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else 0.0


class Load:
    """Client threads, each sending one request per new connection (`Connection: close`)."""

    def __init__(self, port: int, clients: int, outcome: Outcome) -> None:
        self.port, self.outcome = port, outcome
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()

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


def start_container(client: docker.DockerClient) -> docker.models.containers.Container:
    container = client.containers.run(IMAGE, detach=True, ports={"8080/tcp": ("127.0.0.1", None)},
                                      labels={LABEL: RUN})
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
    while new.short_id not in outcome.first_served and time.monotonic() - returned < 5:
        time.sleep(0.01)
    outcome.serve_delays.append(outcome.first_served.get(new.short_id, returned + 5) - returned)
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
            for pid in pids(pidfile):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            for container in client.containers.list(all=True, filters={"label": f"{LABEL}={RUN}"}):
                container.remove(force=True)
    return outcome


def report(outcome: Outcome, seconds: float) -> str:
    ms = lambda v: f"{v * 1000:.1f} ms"  # noqa: E731
    lines = [
        f"duration            {seconds:.0f} s, {outcome.rounds} rounds (add + delete), "
        f"{outcome.reloads} hot restarts",
        f"requests sent       {len(outcome.latencies) + len(outcome.failures)}",
        f"failures            {len(outcome.failures)}",
        f"latency p50/p90/p99 {ms(outcome.percentile(50))} / {ms(outcome.percentile(90))} / "
        f"{ms(outcome.percentile(99))}, max {ms(max(outcome.latencies, default=0))}",
        f"added -> serving    at most {ms(max(outcome.serve_delays, default=0))} after the command returned "
        "(negative: already before)",
    ]
    return "\n".join(lines + [what for _, what in outcome.failures[:10]]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    sys.stdout.write(report(run_scenario(args.seconds, args.clients), args.seconds))


if __name__ == "__main__":
    main()
