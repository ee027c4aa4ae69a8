"""Soak a --watch for leaks: 500 container starts and stops, two engine restarts, RSS/fds/threads every 10 s.

    .venv/bin/python bench/soak.py [--minutes 11] [--starts 500] [--out docs]

Starts a private dockerd (own socket, data root, exec root and bridge; ports
published on 127.0.0.3) so that the engine everyone else uses is never
restarted, a real haproxy with a stats socket on a temporary config, and the
installed `haproxy-docker-config --watch` on that engine. Then it starts the
test image's containers at a steady pace, stops or kills them once more than
POOL run, restarts the engine twice, and samples the watcher from /proc every
10 s. Writes docs/soak.md and docs/soak.png; exits 1 when the watcher's growth
from minute 2 to the end exceeds the limits (5 MB RSS, no fd, no thread) or a
consistency check fails. Everything it starts is removed at the end, also on
Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors

import provenance  # noqa: E402
from bench import environment, terminate_cleanly
from fleet import IMAGE
from load import free_port
from measure import BenchError
from private_engine import HOST_IP, EngineError, PrivateEngine
from soak_report import Sample, SoakRun, failures, write_report

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
CLI = str(Path(sys.executable).parent / "haproxy-docker-config")
LISTENER = "soak"
POOL = 12  # running containers kept before the oldest is stopped
SAMPLE_EVERY = 10.0
QUIET_END = 30.0
METRICS = "haproxy_docker_config_"
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, never a proxy
_T0 = time.monotonic()


def progress(message: str) -> None:
    print(f"[{time.monotonic() - _T0:6.1f} s] {message}", file=sys.stderr, flush=True)


###############################################################################
# haproxy and the watcher #####################################################
###############################################################################


def write_config(tmp: Path) -> Path:
    port = free_port()
    path = tmp / "haproxy.cfg"
    path.write_text(
        f"global\n    maxconn 1024\n    stats socket {tmp}/admin.sock mode 600 level admin\n\n"
        "defaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n\n"
        f"listen {LISTENER}\n    bind 127.0.0.1:{port}\n    balance roundrobin\n"
        "    #DOCKERSERVER $id ${ip}:$port check inter 2000 rise 2 fall 3\n")
    return path


@contextlib.contextmanager
def running_haproxy(config: Path) -> Iterator[None]:
    pidfile = config.with_name("haproxy.pid")
    subprocess.run(["haproxy", "-f", str(config), "-p", str(pidfile), "-D"], check=True,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, timeout=30)
    try:
        yield
    finally:
        for pid in (int(tok) for tok in pidfile.read_text().split()):
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().startswith("haproxy"):
                    os.kill(pid, signal.SIGKILL)


def ask(config: Path, command: str) -> str:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(config.with_name("admin.sock")))
        sock.sendall(command.encode() + b"\n")
        return b"".join(iter(lambda: sock.recv(65536), b"")).decode()


def runtime_servers(config: Path) -> set[str]:
    """Every server of the listener in the running haproxy, in maintenance or not."""
    rows = [line.split() for line in ask(config, f"show servers state {LISTENER}").splitlines()[2:]]
    return {row[3] for row in rows if len(row) > 3}


def file_servers(config: Path) -> set[str]:
    return {ln.split()[1] for ln in config.read_text().splitlines() if ln.strip().startswith("server ")}


@contextlib.contextmanager
def watcher(config: Path, engine: PrivateEngine) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """The installed console script as an operator runs it, with metrics on a loopback port and JSON
    lines (to watch.log); yields the process and the metrics port."""
    port = free_port()
    with config.with_name("watch.log").open("wb") as log:
        proc = subprocess.Popen([CLI, "-f", str(config), "-l", LISTENER, "--watch", "--docker-url", engine.url,
                                 "--metrics", f"127.0.0.1:{port}", "--log-format", "json"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
    try:
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


###############################################################################
# Sampling ####################################################################
###############################################################################


def get(port: int, path: str) -> tuple[int, str]:
    """GET http://127.0.0.1:port/path: (status, body); (0, reason) when nothing answers."""
    try:
        with OPENER.open(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def sample(pid: int, since: float, port: int) -> Sample:
    """/proc first, then /healthz: the request's own socket and thread are not counted."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    rss, fds, threads = int(status["VmRSS"].split()[0]), len(os.listdir(f"/proc/{pid}/fd")), int(status["Threads"])
    return Sample(time.monotonic() - since, rss, fds, threads, get(port, "/healthz")[0])


def final_metrics(port: int) -> dict[str, float]:
    """The watcher's own counters at the end (`_created` timestamps left out)."""
    _, text = get(port, "/metrics")
    pairs = (line.rsplit(" ", 1) for line in text.splitlines() if line.startswith(METRICS) and "_created" not in line)
    return {name.removeprefix(METRICS): float(number) for name, number in pairs
            if not name.startswith(METRICS + "process_")}


class Sampler(threading.Thread):
    """Samples the watcher every SAMPLE_EVERY seconds until stopped."""

    def __init__(self, pid: int, port: int, run: SoakRun) -> None:
        super().__init__(daemon=True)
        self.pid, self.port, self.record, self.since = pid, port, run, time.monotonic()
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(SAMPLE_EVERY):
            self.record.samples.append(sample(self.pid, self.since, self.port))

    def stop(self) -> None:
        """Stop, then take the final sample now, so the end value is this quiet moment's."""
        self.halt.set()
        self.join()
        self.record.samples.append(sample(self.pid, self.since, self.port))


###############################################################################
# The churn ###################################################################
###############################################################################


class Churn:
    """Starts containers on the private engine at a steady pace; stops the oldest beyond POOL."""

    def __init__(self, engine: PrivateEngine, run: SoakRun) -> None:
        self.engine, self.run = engine, run
        self.client = engine.client()
        self.pool: collections.deque[str] = collections.deque()
        self.stoppers = concurrent.futures.ThreadPoolExecutor(2)
        self.pending: list[concurrent.futures.Future[None]] = []

    def start_one(self) -> None:
        api = self.client.api
        container = api.create_container(
            IMAGE, ports=[8080], host_config=api.create_host_config(port_bindings={8080: (HOST_IP, None)}),
            labels={"haproxy-docker-config.listen": LISTENER, "hdc-soak": "1"}, stop_timeout=1)
        api.start(container["Id"])
        self.pool.append(container["Id"])
        self.run.starts += 1
        while len(self.pool) > POOL:
            self.stop_oldest()

    def stop_oldest(self) -> None:
        """`docker stop` and `docker kill` in turn; the container is removed after it stopped."""
        cid, gentle = self.pool.popleft(), self.run.stops % 2 == 0
        self.run.stops += 1
        self.pending.append(self.stoppers.submit(self._stop, cid, gentle))

    def _stop(self, cid: str, gentle: bool) -> None:
        api = self.client.api
        with contextlib.suppress(docker.errors.NotFound):
            api.stop(cid, timeout=1) if gentle else api.kill(cid)
            api.remove_container(cid, force=True)

    def settle(self) -> None:
        """Wait for the stops in flight (their errors are the run's errors)."""
        for future in self.pending:
            future.result()
        self.pending.clear()

    def restart_engine(self, t: float) -> None:
        """Stop and start the engine: its containers stop with it and are removed after."""
        self.settle()
        down = time.monotonic()
        self.engine.stop()
        self.engine.start()
        self.run.restarts.append((t, time.monotonic() - down))
        self.client = self.engine.client()
        for container in self.client.containers.list(all=True, filters={"label": "hdc-soak=1"}):
            container.remove(force=True)
        self.run.stopped_by_restart += len(self.pool)
        self.pool.clear()

    def stop_all(self) -> None:
        while self.pool:
            self.stop_oldest()
        self.settle()


def wait_consistent(run: SoakRun, config: Path, want: set[str], what: str, timeout: float = 30.0) -> None:
    """Record whether file and haproxy both hold exactly `want` (short ids) within timeout."""
    deadline = time.monotonic() + timeout
    while not (ok := file_servers(config) == want == runtime_servers(config)) and time.monotonic() < deadline:
        time.sleep(0.2)
    run.checks.append((what, ok))
    progress(f"{what}: {'ok' if ok else 'FAILED'}")


def churn(run: SoakRun, engine: PrivateEngine, config: Path, starts: int, span: float, since: float) -> None:
    """`starts` starts spread over `span` seconds, the engine restarted after a third and two thirds;
    restart times are recorded in seconds from `since` (the watcher's start, as the samples are)."""
    work = Churn(engine, run)
    t0 = time.monotonic()
    restart_at = {starts // 3, 2 * starts // 3}
    for i in range(starts):
        time.sleep(max(0.0, t0 + i * span / starts - time.monotonic()))
        if i in restart_at:
            work.settle()
            wait_consistent(run, config, {cid[:12] for cid in work.pool},
                            f"file and haproxy hold exactly the running containers before restart {len(run.restarts) + 1}")
            progress(f"restarting the engine after {i} starts")
            work.restart_engine(time.monotonic() - since)
        work.start_one()
    work.stop_all()
    wait_consistent(run, config, set(), "file and haproxy empty after the last stop")


###############################################################################
# Running it ##################################################################
###############################################################################


def watcher_lines(log: Path) -> dict[str, int]:
    """The watcher's JSON lines by kind: the change (added, updated, removed), else the level."""
    counts: collections.Counter[str] = collections.Counter()
    for line in log.read_text(errors="replace").splitlines():
        entry = json.loads(line)
        counts[entry["action"] or entry["level"]] += 1
    return dict(counts)


def soak(run: SoakRun, tmp: Path, minutes: float, starts: int) -> None:
    with PrivateEngine(tmp / "engine") as engine:
        engine.load_image(IMAGE)
        run.environment.update(environment(engine.client(), shutil.which("haproxy") or "haproxy"))
        config = write_config(tmp)
        with running_haproxy(config), watcher(config, engine) as (proc, port):
            sampler = Sampler(proc.pid, port, run)
            sampler.start()
            end = time.monotonic() + minutes * 60
            time.sleep(20)
            churn(run, engine, config, starts, minutes * 60 - 20 - 60 - QUIET_END, sampler.since)
            time.sleep(max(QUIET_END, end - time.monotonic()))
            sampler.stop()
            run.duration = run.samples[-1].t
            run.metrics = final_metrics(port)
            healthy = all(s.healthz == 200 for s in run.samples if s.t >= 30)
            run.checks.append(("/healthz answered 200 at every sample from 0:30 on", healthy))
            proc.send_signal(signal.SIGTERM)
            run.watcher_exit = proc.wait(timeout=60)
        run.watcher_lines = watcher_lines(config.with_name("watch.log"))
        for entry in map(json.loads, config.with_name("watch.log").read_text(errors="replace").splitlines()):
            if not entry["action"]:
                progress(f"watcher said: {entry['level']}: {entry['message']}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--minutes", type=float, default=11.0, help="length of the run (at least 10 for the record)")
    parser.add_argument("--starts", type=int, default=500, help="containers started (and stopped)")
    parser.add_argument("--out", type=Path, default=REPO / "docs", help="where soak.md and soak.png go")
    provenance.add_argument(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("soak: needs root (it runs its own dockerd and bridge)", file=sys.stderr)
        return 2
    command = ".venv/bin/python bench/soak.py" + "".join(
        f" {flag} {value}" for flag, value in (("--minutes", args.minutes), ("--starts", args.starts))
        if value != parse_args([]).__dict__[flag[2:]])
    try:
        run = SoakRun(command, datetime.datetime.now(datetime.timezone.utc),
                      {"measured at commit": provenance.commit("soak.py", args.allow_dirty)})
    except provenance.DirtyTree as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 1
    try:
        with terminate_cleanly(), tempfile.TemporaryDirectory(prefix="hdc-soak-") as tmp:
            soak(run, Path(tmp), args.minutes, args.starts)
    except (BenchError, EngineError, docker.errors.DockerException, subprocess.SubprocessError) as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 1
    write_report(run, args.out)
    progress(f"wrote {args.out / 'soak.md'} and {args.out / 'soak.png'}")
    for line in failures(run):
        print(f"soak: {line}", file=sys.stderr)
    return 1 if failures(run) else 0


if __name__ == "__main__":
    sys.exit(main())
