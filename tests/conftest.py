"""Fixtures and helpers for tests that drive real Docker containers and a real HAProxy.

Nothing is mocked: the tool's job is to glue docker-py, Augeas and HAProxy
together, so the tests need all three for real (scripts/setup.sh provides them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import docker
import docker.errors
import pytest
from docker.models.containers import Container

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))  # the load generator and the Docker proxy live there
from counting_proxy import CountingProxy  # noqa: E402
from private_engine import PrivateEngine  # noqa: E402
IMAGE = "hdc-test-httpd:latest"
LABEL = "hdc-test"
#: This run's value of LABEL: the final sweep removes only this run's containers, so that two
#: suites (two checkouts) can share one dockerd.
RUN = f"run-{os.getpid()}"
CLI = Path(sys.executable).parent / "haproxy-docker-config"
DEFAULT_TEMPLATE = "$id ${ip}:$port check inter 2000 rise 2 fall 5"
# Tests only talk to loopback; a proxy from the environment must never interfere.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


#: Test modules that set DOCKER = False need no engine: they run where only python-augeas installs.
_ENGINE: list[str] = []


def _engine_problem() -> str:
    """Why `docker info` fails ("" when it works); asked once per session."""
    if not _ENGINE:
        try:
            ok = subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        _ENGINE.append("" if ok else "`docker info` failed: Docker is not available; run scripts/setup.sh")
    return _ENGINE[0]


@pytest.fixture(autouse=True)
def _engine_required(request: pytest.FixtureRequest) -> None:
    """Fail (never skip: that would hide it) a test that needs Docker when no engine answers."""
    if getattr(request.module, "DOCKER", True) and _engine_problem():
        pytest.fail(_engine_problem(), pytrace=False)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Sweep containers left over by crashed or interrupted tests (they carry our label)."""
    try:
        client = docker.from_env()
        for c in client.containers.list(all=True, filters={"label": f"{LABEL}={RUN}"}):
            _remove(c)
    except docker.errors.DockerException:
        pass


def _remove(container: Container) -> None:
    """Force-remove a container, tolerating one that is already gone or going."""
    try:
        container.remove(force=True)
    except docker.errors.APIError:
        pass


def wait_until(predicate: Callable[[], object], timeout: float, explain: Callable[[], str] = lambda: "") -> float:
    """Seconds until predicate() held; fails after `timeout`, saying explain()."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, f"timed out; {explain()}"
        time.sleep(0.02)
    return time.monotonic() - started


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(port: int, timeout: float = 2.0) -> str:
    """GET http://127.0.0.1:port/ without any proxy; return the body stripped."""
    with _OPENER.open(f"http://127.0.0.1:{port}/", timeout=timeout) as resp:
        return resp.read().decode().strip()


def host_port(container: Container, private: int = 8080) -> int:
    """The host port Docker published for `private`/tcp (container must be reloaded)."""
    bindings = container.attrs["NetworkSettings"]["Ports"].get(f"{private}/tcp")
    if not bindings:
        raise KeyError(f"{container.short_id}: port {private}/tcp is not published")
    return int(bindings[0]["HostPort"])


def _wait_http_ok(port: int, deadline: float) -> None:
    """Wait for HTTP 200: docker-proxy accepts TCP before httpd in the container listens."""
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with _OPENER.open(f"http://127.0.0.1:{port}/", timeout=1.0) as resp:
                if resp.status == 200:
                    return
        except Exception as exc:  # connection reset/refused while starting up
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"port {port} never answered HTTP 200: {last!r}")


@pytest.fixture(scope="session")
def docker_client() -> docker.DockerClient:
    """Docker client; builds the local test image first if it is missing (no registry)."""
    if _engine_problem():
        pytest.fail(_engine_problem(), pytrace=False)
    client = docker.from_env()
    try:
        client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        subprocess.run([str(REPO / "scripts" / "build-test-image.sh")], check=True)
    return client


@pytest.fixture
def make_container(docker_client: docker.DockerClient) -> Iterator[Callable[..., Container]]:
    """Factory for running test containers; every one is force-removed at teardown."""
    made: list[Container] = []

    def make(
        name: str | None = None,
        ports: Sequence[int] = (8080,),
        host_ip: str = "127.0.0.1",
        labels: Mapping[str, str] | None = None,
    ) -> Container:
        """Run hdc-test-httpd publishing `ports` on host_ip ("" = all) at random host ports."""
        container = docker_client.containers.run(
            IMAGE,
            detach=True,
            name=name,
            ports={f"{p}/tcp": (host_ip, None) for p in ports},
            labels={**(labels or {}), LABEL: RUN},
        )
        made.append(container)
        container.reload()
        deadline = time.monotonic() + 10.0
        for p in ports:
            _wait_http_ok(host_port(container, p), deadline)
        container.reload()
        return container

    yield make
    for container in made:
        _remove(container)


@dataclasses.dataclass(frozen=True)
class Cfg:
    """A written HAProxy config plus the paths/port a test needs to drive it."""

    path: Path
    port: int
    pidfile: Path
    sock: Path


def write_config(
    tmp_path: Path,
    listener: str = "dockerha-app1",
    frontend_port: int | None = None,
    template: str = DEFAULT_TEMPLATE,
    extra_listener_lines: str = "",
    stats_socket: bool = True,
) -> Cfg:
    """Write tmp_path/haproxy.cfg with one `listen` section holding a #DOCKERSERVER template."""
    port = frontend_port if frontend_port is not None else free_port()
    sock = tmp_path / "admin.sock"
    if stats_socket and len(str(sock)) > 100:  # sun_path limit is 108 bytes
        raise ValueError(f"unix socket path too long for HAProxy: {sock}")
    glob = f"    stats socket {sock} mode 600 level admin\n" if stats_socket else ""
    extra = extra_listener_lines.rstrip("\n") + "\n" if extra_listener_lines else ""
    text = (
        f"global\n    maxconn 256\n{glob}\n"
        "defaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n\n"
        f"listen {listener}\n    bind 127.0.0.1:{port}\n    balance roundrobin\n"
        f"    #DOCKERSERVER   {template}\n{extra}"
    )
    path = tmp_path / "haproxy.cfg"
    path.write_text(text)
    return Cfg(path=path, port=port, pidfile=tmp_path / "haproxy.pid", sock=sock)


def ask_haproxy(sock_path: Path, command: str) -> str:
    """One command on haproxy's stats socket, its whole answer."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(sock_path))
        sock.sendall(command.encode() + b"\n")
        return b"".join(iter(lambda: sock.recv(65536), b"")).decode()


def haproxy_pids(cfg: Cfg) -> list[int]:
    """PIDs listed in cfg.pidfile (haproxy writes one per line); [] if there is none."""
    try:
        return [int(tok) for tok in cfg.pidfile.read_text().split()]
    except FileNotFoundError:
        return []


def _kill_haproxy(pid: int) -> None:
    """SIGKILL pid if it is still haproxy (guards against PID reuse) and wait until it is dead."""
    proc = Path(f"/proc/{pid}")
    try:
        if not (proc / "comm").read_text().startswith("haproxy"):
            return
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        # Gone or a zombie means its sockets are closed, so ports are free again.
        while (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            if time.monotonic() >= deadline:
                break
            time.sleep(0.02)
    except (FileNotFoundError, ProcessLookupError):
        pass


def kill_haproxy_running(config: Path) -> None:
    """SIGKILL every haproxy whose command line names `config`, as `pkill -f` would but through /proc
    (a minimal Debian has no procps): a master-worker's master and workers, pidfile written or not."""
    wanted = str(config).encode()
    for _ in range(10):  # a master killed mid-reload may have forked a worker the last scan missed
        pids = []
        for proc in Path("/proc").glob("[0-9]*"):
            with contextlib.suppress(OSError):  # exactly haproxy: the tool's own comm is "haproxy-docker-"
                argv = (proc / "cmdline").read_bytes().split(b"\0")
                if (proc / "comm").read_text() == "haproxy\n" and wanted in argv:
                    pids.append(int(proc.name))
        if not pids:
            return
        for pid in pids:
            _kill_haproxy(pid)


def _wait_tcp(port: int, timeout: float) -> None:
    """Wait until 127.0.0.1:port accepts a TCP connection."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"nothing accepts connections on 127.0.0.1:{port}") from None
            time.sleep(0.05)


@pytest.fixture
def haproxy() -> Iterator[Callable[[Cfg], list[int]]]:
    """Factory starting a daemonized haproxy on a Cfg; all its processes die at teardown."""
    started: list[tuple[Cfg, subprocess.Popen[bytes], list[int]]] = []

    def start_haproxy(cfg: Cfg) -> list[int]:
        """Run `haproxy -f cfg -p pidfile -D`, wait for the frontend port, return pids."""
        log = cfg.path.with_suffix(".log")
        # Output goes to a file: a daemon holding our pipe open would hang the wait.
        with log.open("wb") as out:
            proc = subprocess.Popen(
                ["haproxy", "-f", str(cfg.path), "-p", str(cfg.pidfile), "-D"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        entry: tuple[Cfg, subprocess.Popen[bytes], list[int]] = (cfg, proc, [])
        started.append(entry)
        rc = proc.wait(timeout=10)
        if rc != 0:
            raise RuntimeError(f"haproxy exited {rc}:\n{log.read_text()}")
        _wait_tcp(cfg.port, 5.0)
        entry[2].extend(haproxy_pids(cfg))
        return haproxy_pids(cfg)

    yield start_haproxy
    for cfg, proc, pids in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in {*pids, *haproxy_pids(cfg)}:
            _kill_haproxy(pid)


def run_cli(*args: str, env: Mapping[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the installed console script (tests the packaging too); env is layered over os.environ."""
    if not CLI.exists():
        pytest.fail(f"{CLI} is not installed; run scripts/setup.sh")
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([str(CLI), *args], text=True, capture_output=True, env=full_env, timeout=timeout)


@pytest.fixture
def cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """run_cli as a fixture, for tests that prefer injection over import."""
    return run_cli


@pytest.fixture
def docker_tcp_url() -> Iterator[str]:
    """tcp:// URL of the local engine, reached through 127.0.0.2 (so its host is visible)."""
    proxy = CountingProxy(host="127.0.0.2")
    yield proxy.url
    proxy.close()


@pytest.fixture
def read_only_engine() -> Iterator[CountingProxy]:
    """The local engine behind a proxy that lets only GET and HEAD through."""
    proxy = CountingProxy(read_only=True)
    yield proxy
    proxy.close()


@pytest.fixture(scope="session")
def second_engine(docker_client: docker.DockerClient, tmp_path_factory) -> Iterator[PrivateEngine]:
    """A second dockerd of this run (bench/private_engine.py: own socket, data root and a bridge with a
    free subnet), started once per session; the test image is copied into it (no registry). Whatever
    fails, the engine, its containers and the bridge go."""
    with PrivateEngine(tmp_path_factory.mktemp("dockerd2") / "engine") as engine:
        engine.load_image(IMAGE)
        yield engine


class Watcher:
    """The installed CLI running `-f CONFIG --watch ARGS...`, stderr in `log`, stdout in log + ".out"."""

    def __init__(self, config: Path, *args: str, log: Path | None = None) -> None:
        self.log = log or config.with_name("watch.log")
        self.out = self.log.with_name(self.log.name + ".out")
        with self.log.open("w") as err, self.out.open("w") as out:
            self.proc = subprocess.Popen([str(CLI), "-f", str(config), "--watch", *args],
                                         stdout=out, stderr=err, stdin=subprocess.DEVNULL)

    def text(self) -> str:
        """Everything it said on stderr so far."""
        return self.log.read_text()

    def tail(self) -> str:
        """The end of its stderr, for an assertion message."""
        return self.text()[-3000:]

    def stdout(self) -> str:
        return self.out.read_text()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send `sig` (SIGTERM: a clean stop) and return its exit status; SIGKILL after 30 s fails the test."""
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the watcher did not stop within 30 s of signal {sig}; it logged:\n{self.tail()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def watcher() -> Iterator[Callable[..., Watcher]]:
    """Factory of Watchers (same arguments); every one still running is killed at teardown."""
    started: list[Watcher] = []

    def start(config: Path, *args: str, log: Path | None = None) -> Watcher:
        started.append(Watcher(config, *args, log=log))
        return started[-1]

    yield start
    for w in started:
        w.kill()


class FileWrites:
    """Counts, through the kernel's inotify, the writes that replace or rewrite one file: renames onto
    its name (the atomic write) and writes closed on it (in place). Evidence from the file system, not
    from the tool's log. Use as a context manager; `count()` reads the events so far."""

    _IN_CLOSE_WRITE, _IN_MOVED_TO = 0x008, 0x080

    def __init__(self, path: Path) -> None:
        import ctypes

        self._libc = ctypes.CDLL(None, use_errno=True)
        self.path, self.writes = path, 0
        self._fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0 or self._libc.inotify_add_watch(
                self._fd, str(path.parent).encode(), self._IN_CLOSE_WRITE | self._IN_MOVED_TO) < 0:
            raise OSError(ctypes.get_errno(), f"inotify on {path.parent}")

    def count(self) -> int:
        """Writes of the file seen since the start."""
        import struct

        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                return self.writes
            offset = 0
            while offset < len(data):
                _, mask, _, length = struct.unpack_from("iIII", data, offset)
                name = data[offset + 16:offset + 16 + length].rstrip(b"\0").decode()
                self.writes += name == self.path.name and bool(mask & (self._IN_CLOSE_WRITE | self._IN_MOVED_TO))
                offset += 16 + length

    def __enter__(self) -> FileWrites:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self._fd)


def counting_haproxy(directory: Path, before_check: str = "") -> tuple[Path, Path]:
    """A --haproxy-bin wrapper that appends one line per `haproxy -c` it runs to a calls file, runs the
    shell code `before_check` first (a sleep, a marker; "$3" is the candidate), and is haproxy otherwise.
    Returns (wrapper, calls file): validations are counted where they happen."""
    wrapper, calls = directory / "counting-haproxy", directory / "haproxy-checks"
    calls.write_text("")
    wrapper.write_text(f'#!/bin/sh\nif [ "$1" = "-c" ]; then\n  echo "$*" >> {calls}\n  {before_check or ":"}\n'
                       f'fi\nexec {shutil.which("haproxy") or "/usr/sbin/haproxy"} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper, calls


def serve_more(outcome: object, count: int, timeout: float = 60) -> None:
    """Wait until the load (bench/load.py's Outcome) had `count` more requests answered: what a fixed
    sleep under load was for, as a condition."""
    answered = len(outcome.latencies)  # type: ignore[attr-defined]
    wait_until(lambda: len(outcome.latencies) >= answered + count, timeout,  # type: ignore[attr-defined]
               lambda: f"{len(outcome.latencies) - answered} of {count} more requests answered")
