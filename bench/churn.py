"""Apps that exit at once on SIGTERM, stopped one after another under load while `--watch` keeps
haproxy in step: does haproxy survive, and how many requests fail per stop?

Run from the repo root, as root:

    .venv/bin/python bench/churn.py [--stops 100] [--retries] [--image hdc-haproxy:3.0] [--tool PATH]

--retries gives the listener the recommended retry settings (`retries 3`, `option redispatch 1`,
`retry-on all-retryable-errors`); without it the listener has haproxy's defaults (`retries 3`, no
redispatch). --image runs haproxy in a container of that image instead of the host's haproxy.
--tool runs another copy of the module (say, the 0.1.0 release's, whose live delete crashed Debian's
haproxy 2.6). `--matrix` runs the table of docs/churn.md and writes it. Four clients send one
request per connection all the time; the apps are hdc-test-httpd with HDC_GRACE=0 (busybox httpd
killed at once on SIGTERM). tests/test_churn.py runs the same scenario.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import ipaddress
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors

import provenance
from load import CLI, IMAGE, Load, Outcome, background, free_port

ROOT = Path(__file__).resolve().parent.parent
LABEL = "hdc-churn"
RUN = str(os.getpid())
LISTEN = "haproxy-docker-config.listen"
RETRIES = "    retries 3\n    option redispatch 1\n    retry-on all-retryable-errors\n"
POOL = 4  # apps running at any time, besides the one being stopped


@dataclasses.dataclass
class Result:
    """What one churn run saw."""

    haproxy: str  # "host 2.6.12-1+deb12u4" or the image
    retries: bool
    tool: str
    stops: int = 0
    requests: int = 0
    failures: int = 0
    died_after: int | None = None  # stops until haproxy died; None: it survived
    same_process: bool = True
    reasons: list[str] = dataclasses.field(default_factory=list)  # the kinds of failure seen
    final_config: str = ""
    apps_running: set[str] = dataclasses.field(default_factory=set)
    servers_in_file: set[str] = dataclasses.field(default_factory=set)  # once the watcher caught up
    servers_live: set[str] = dataclasses.field(default_factory=set)
    watcher_log: str = ""

    @property
    def per_stop(self) -> float:
        return self.failures / self.stops if self.stops else 0.0


def config(bind: str, listener: str, retries: bool, socket_path: str) -> str:
    """The README's kind of listener: checks every 500 ms, an admin stats socket."""
    return ("global\n    maxconn 512\n"
            f"    stats socket {socket_path} mode 600 level admin expose-fd listeners\n\n"
            "defaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n\n"
            f"listen {listener}\n    bind {bind}\n"
            f"    balance roundrobin\n{RETRIES if retries else ''}"
            "    #DOCKERSERVER $id ${ip}:$port check inter 500 rise 1 fall 2\n")


class HostHaproxy:
    """Debian's haproxy on this host, daemonized on a temporary config."""

    def __init__(self, directory: Path, listener: str, retries: bool) -> None:
        self.port = free_port()
        self.cfg = directory / "haproxy.cfg"
        self.sock = directory / "admin.sock"
        self.cfg.write_text(config(f"127.0.0.1:{self.port}", listener, retries, str(self.sock)))
        self.pidfile = directory / "haproxy.pid"
        subprocess.run(["haproxy", "-f", str(self.cfg), "-p", str(self.pidfile), "-D"], check=True)
        self.pid = int(self.pidfile.read_text().split()[0])
        version = subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.split()[2]
        self.name = f"host {version}"

    def tool_args(self) -> list[str]:
        return []

    def alive(self) -> bool:
        return Path(f"/proc/{self.pid}").exists() and not _zombie(self.pid)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGKILL)


class ContainerHaproxy:
    """haproxy -W as PID 1 of an image (hdc-haproxy:VERSION), its config directory and socket mounted."""

    def __init__(self, directory: Path, listener: str, retries: bool, image: str, client: docker.DockerClient) -> None:
        self.port = free_port()
        (directory / "conf").mkdir()
        (directory / "run").mkdir()
        self.cfg = directory / "conf" / "haproxy.cfg"
        self.sock = directory / "run" / "admin.sock"
        self.cfg.write_text(config(":8080", listener, retries, "/run/haproxy/admin.sock"))
        self.container = client.containers.run(
            image, detach=True, labels={LABEL: RUN}, ports={"8080/tcp": ("127.0.0.1", self.port)},
            volumes={str(directory / "conf"): {"bind": "/usr/local/etc/haproxy", "mode": "ro"},
                     str(directory / "run"): {"bind": "/run/haproxy", "mode": "rw"}})
        deadline = time.monotonic() + 20
        while not self.sock.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"haproxy in {image} made no stats socket:\n{self.container.logs().decode()}")
            time.sleep(0.05)
        self.container.reload()
        self.started = self.container.attrs["State"]["StartedAt"]
        ipam = client.networks.get("bridge").attrs["IPAM"]["Config"][0]
        gateway = ipam.get("Gateway") or str(next(ipaddress.ip_network(ipam["Subnet"]).hosts()))
        self.args = ["--haproxy-container", self.container.name, "--runtime-socket", str(self.sock),
                     "--host-ip", gateway]
        self.name = image

    def tool_args(self) -> list[str]:
        return self.args

    def alive(self) -> bool:
        self.container.reload()
        state = self.container.attrs["State"]
        return state["Running"] and state["StartedAt"] == self.started

    def close(self) -> None:
        with contextlib.suppress(docker.errors.DockerException):
            self.container.remove(force=True)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def start_app(client: docker.DockerClient, listener: str, host_ip: str) -> docker.models.containers.Container:
    """An app that exits at once on SIGTERM, labelled for the listener, its port published on host_ip
    (all interfaces for a haproxy in a container, which reaches it through the bridge's gateway)."""
    return client.containers.run(IMAGE, detach=True, environment={"HDC_GRACE": "0"},
                                 ports={"8080/tcp": (host_ip, None)},
                                 labels={LABEL: RUN, LISTEN: listener})


@contextlib.contextmanager
def watcher(cfg: Path, listener: str, extra: list[str], tool: str | None, log: Path) -> Iterator[None]:
    """`--watch -l LISTENER` in the background until the block ends (SIGTERM, as systemd stops it)."""
    command = [sys.executable, tool] if tool else [CLI]
    with background([*command, "--watch", "-f", str(cfg), "-l", listener, *extra], log):
        yield


def served(outcome: Outcome, name: str, haproxy: HostHaproxy | ContainerHaproxy, timeout: float = 15.0) -> bool:
    """Wait until the app has answered a request through haproxy; False when haproxy died meanwhile."""
    deadline = time.monotonic() + timeout
    while name not in outcome.first_served:
        if not haproxy.alive():
            return False
        if time.monotonic() > deadline:
            raise RuntimeError(f"app {name} was never served through haproxy")
        time.sleep(0.02)
    return True


def run(stops: int, retries: bool, image: str | None = None, tool: str | None = None,
        interval: float = 0.3, clients: int = 4, parallel: int = 1, reload: bool = False) -> Result:
    """One churn run on a haproxy of its own (with `reload`, changes reach it by -h where the Runtime API
    cannot make them); everything it starts is removed again."""
    client = docker.from_env()
    listener = f"churn{secrets.token_hex(3)}"
    with tempfile.TemporaryDirectory(prefix="hdc-churn-") as tmp:
        directory = Path(tmp)
        haproxy = (ContainerHaproxy(directory, listener, retries, image, client) if image
                   else HostHaproxy(directory, listener, retries))
        result = Result(haproxy.name, retries, tool or "this checkout")
        host_ip = "" if image else "127.0.0.1"
        outcome = Outcome()
        try:
            apps = [start_app(client, listener, host_ip) for _ in range(POOL + parallel - 1)]
            extra = [*haproxy.tool_args(), *(["-h"] if reload else [])]  # -h: haproxy without dynamic servers
            with watcher(haproxy.cfg, listener, extra, tool, directory / "watch.log"), \
                    Load(haproxy.port, clients, outcome):
                alive = all(served(outcome, app.id[:12], haproxy) for app in apps)
                counted = len(outcome.latencies), len(outcome.failures)  # before this: the first sync
                while alive and result.stops < stops:
                    batch = min(parallel, stops - result.stops)
                    with concurrent.futures.ThreadPoolExecutor(batch) as pool:
                        apps += pool.map(lambda _: start_app(client, listener, host_ip), range(batch))
                        list(pool.map(lambda app: app.stop(timeout=10), apps[:batch]))
                    del apps[:batch]
                    result.stops += batch
                    time.sleep(interval)
                    alive = haproxy.alive()
                if alive:  # the watcher catches up: the apps still running are served again
                    alive = all(served(outcome, app.id[:12], haproxy, timeout=60) for app in apps)
                    time.sleep(2)  # the last stop's retries come back within a second
                    result.apps_running = {app.id[:12] for app in apps}
                    caught_up(haproxy, result)
                if not alive:
                    result.died_after = result.stops
            result.same_process = haproxy.alive()
            result.requests = len(outcome.latencies) + len(outcome.failures) - sum(counted)
            result.failures = len(outcome.failures) - counted[1]
            result.reasons = sorted({what[:300] for _, what in outcome.failures[counted[1]:]})
            result.watcher_log = (directory / "watch.log").read_text(errors="replace")
        finally:
            haproxy.close()
            for container in client.containers.list(all=True, filters={"label": f"{LABEL}={RUN}"}):
                with contextlib.suppress(docker.errors.DockerException):
                    container.remove(force=True)
    return result


def caught_up(haproxy: HostHaproxy | ContainerHaproxy, result: Result, timeout: float = 60) -> None:
    """Wait (bounded) until the file and the running haproxy hold exactly the running apps; record both."""
    deadline = time.monotonic() + timeout
    while True:
        result.final_config = haproxy.cfg.read_text()
        result.servers_in_file = set(re.findall(r"^[ \t]*server[ \t]+(\S+)", result.final_config, re.MULTILINE))
        state = ask(haproxy.sock, "show servers state")
        result.servers_live = {row.split()[3] for row in state.splitlines()[2:] if len(row.split()) > 3}
        if result.servers_in_file == result.servers_live == result.apps_running or time.monotonic() > deadline:
            return
        time.sleep(0.2)


def ask(sock: Path, command: str) -> str:
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(str(sock))
        conn.sendall(command.encode() + b"\n")
        return b"".join(iter(lambda: conn.recv(65536), b"")).decode()


def line(result: Result) -> str:
    died = "survived" if result.died_after is None else f"died after stop {result.died_after}"
    return (f"{result.haproxy:<28} retries={'yes' if result.retries else 'no ':<4} tool={result.tool}: "
            f"{result.stops} stops, haproxy {died}, {result.failures} of {result.requests} requests failed "
            f"({result.per_stop:.2f} per stop)")


#: The rows of docs/churn.md: (haproxy image or None for the host's, retry settings, stops, the old release?).
MATRIX = [(None, False, 60, True), (None, False, 100, False), (None, True, 100, False),
          ("hdc-haproxy:2.6", False, 100, False), ("hdc-haproxy:2.8", False, 100, False),
          ("hdc-haproxy:3.0", False, 100, False), ("hdc-haproxy:3.2", False, 100, False),
          ("hdc-haproxy:3.2", True, 100, False)]


def write_matrix(out: Path, old_tool: str, measured_at: str) -> None:
    """Run every row of MATRIX (one app stopped at a time) and write out/churn.md."""
    rows = []
    for image, retries, stops, old in MATRIX:
        result = run(stops, retries, image, old_tool if old else None)
        print(line(result), flush=True)
        died = "no" if result.died_after is None else f"**yes, after stop {result.died_after}**"
        rows.append(f"| {result.haproxy} | {'recommended' if retries else 'defaults'} | "
                    f"{'0.1.0 (old delete)' if old else 'this one'} | {result.stops} | {died} | "
                    f"{result.failures} of {result.requests} | {result.per_stop:.2f} |")
    text = (f"Churn: apps that exit at once on SIGTERM\n========================================\n\n"
            f"`.venv/bin/python bench/churn.py --matrix OLD_MODULE` ({time.strftime('%Y-%m-%d')}, "
            f"{os.cpu_count()} cores): {' '.join(__doc__.split(chr(10) * 2)[0].split())}\n\n- measured at commit: {measured_at}\n\n"
            "Each row: a haproxy of its own, `--watch -l LISTENER`, 4 apps (hdc-test-httpd with HDC_GRACE=0) "
            "serving, four clients sending one request per new connection all the time; each stop starts a "
            "new app and stops the oldest (`docker stop`), 0.3 s apart. Failed requests are counted from the "
            "moment the first apps are served. Retry settings: `defaults` is haproxy's (`retries 3`, no "
            "redispatch); `recommended` adds `option redispatch 1` and `retry-on all-retryable-errors`.\n\n"
            "| haproxy | retry settings | tool | stops | haproxy died | failed requests | failed per stop |\n"
            "| --- | --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows) + "\n")
    (out / "churn.md").write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stops", type=int, default=100)
    parser.add_argument("--retries", action="store_true", help="the recommended retry settings in the listener")
    parser.add_argument("--image", help="haproxy in a container of this image (default: the host's haproxy)")
    parser.add_argument("--tool", help="the module file to run instead of the installed console script")
    parser.add_argument("--interval", type=float, default=0.3, help="seconds between rounds of stops (default 0.3)")
    parser.add_argument("--parallel", type=int, default=1, help="apps stopped (and started) at once per round")
    parser.add_argument("--matrix", metavar="OLD_MODULE",
                        help="run every row of docs/churn.md (OLD_MODULE: the 0.1.0 release's module file, "
                             "e.g. from git show 333a238:haproxy_docker_config.py) and write it")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where --matrix writes churn.md")
    provenance.add_argument(parser)
    args = parser.parse_args()
    if args.matrix:
        try:
            measured_at = provenance.commit("churn.py", args.allow_dirty)
        except provenance.DirtyTree as exc:
            raise SystemExit(f"churn: {exc}") from None
        write_matrix(args.out, args.matrix, measured_at)
        return
    result = run(args.stops, args.retries, args.image, args.tool, args.interval, parallel=args.parallel)
    print(line(result))
    print("\n".join(result.reasons))
    if result.died_after is not None or not result.same_process:
        print(result.watcher_log[-3000:])


if __name__ == "__main__":
    main()
