"""How fast --watch routes a new host name from its labels, and lets it go; reloads only for new backends.

    .venv/bin/python bench/routes.py [--starts 10] [--out DIR] [--log FILE] [--allow-dirty]

Debian's haproxy on this host, on a config whose frontend holds `#DOCKERROUTES` (a 404 default backend), a
hand-written backend `existing`, a template backend marked `#DOCKERBACKEND` (both with `check inter 500
rise 1 fall 2`) and an admin stats socket with `expose-fd listeners`; `haproxy-docker-config --watch -h
PIDFILE` runs without -l. Two keepers run all the time: one with a host label on `existing`, one whose
backend the tool made at its first pass; four clients send one request per new connection to their two
host names, all the time, and every request of theirs that does not get 200 from its keeper's backend
is a failed request. Then `--starts` times, one app at a time (hdc-test-httpd, serving 1 s after
SIGTERM): `docker run -d` of an app labelled with a new host name and the listen label `existing`
(a host added to a backend that exists: no reload expected), first request with that Host answered
by it (a probe through haproxy every 10 ms), a quiet 0.5 s, `docker stop` called, last request with
that Host answered by it; then the same `--starts` times for apps with a new host name and no listen
label (a backend made from the template, and removed again: a reload each way). Reloads are counted
from haproxy's pid, in the pidfile and in `show info`, read every 10 ms.
Writes DIR/bench-routes.md (default docs/), with the commit it ran on; --log keeps the watcher's -v log
(JSON lines). The watcher sees every labelled container of the engine: another run's are named on the page.
Everything it starts is removed, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import docker
import docker.errors

import churn
import load
import provenance
from bench import terminate_cleanly

ROOT = Path(__file__).resolve().parent.parent
LABEL = "hdc-bench-routes"
RUN = str(os.getpid())
HOST = "haproxy-docker-config.host"
LISTEN = "haproxy-docker-config.listen"
EXISTING = "existing"
CHECK = "check inter 500 rise 1 fall 2"
#: How long an app may take to be served, or its route to answer 404 after its stop, before it counts as
#: never (a generous bound: a reload takes a few 100 ms here; the figure is the delay itself).
DEADLINE = 5.0
PROBE_EVERY = 0.01
FOREIGN = "other runs' containers"
_T0 = time.monotonic()


def progress(message: str) -> None:
    stamp = time.strftime("%H:%M:%S", time.gmtime())
    print(f"[{time.monotonic() - _T0:6.1f} s, {stamp}] routes: {message}", file=sys.stderr, flush=True)


def config(port: int, sock: Path) -> str:
    return ("global\n    maxconn 512\n"
            f"    stats socket {sock} mode 600 level admin expose-fd listeners\n\n"
            "defaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n\n"
            f"frontend www\n    bind 127.0.0.1:{port}\n    #DOCKERROUTES\n    default_backend no-route\n\n"
            "backend no-route\n    http-request return status 404 content-type text/plain string \"no route\"\n\n"
            f"backend {EXISTING}\n    balance roundrobin\n    #DOCKERSERVER $id ${{ip}}:$port {CHECK}\n\n"
            f"backend docker-template\n    #DOCKERBACKEND\n    balance roundrobin\n"
            f"    #DOCKERSERVER $id ${{ip}}:$port {CHECK}\n")


def _get(port: int, host: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/", headers={"Host": host, "Connection": "close"})
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace").strip()
    finally:
        conn.close()


class Haproxy:
    """Debian's haproxy, daemonized on the routing config; every pid it ever had is killed at the end."""

    def __init__(self, directory: Path) -> None:
        self.port = load.free_port()
        self.cfg, self.sock = directory / "haproxy.cfg", directory / "admin.sock"
        self.pidfile = directory / "haproxy.pid"
        self.cfg.write_text(config(self.port, self.sock))
        self.pids: set[int] = set()
        subprocess.run(["haproxy", "-f", str(self.cfg), "-p", str(self.pidfile), "-D"], check=True)
        self.pids.update(load.pids(self.pidfile))
        self.version = subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.split()[2]

    def info_pid(self) -> int | None:
        try:
            found = re.search(r"^Pid: (\d+)", churn.ask(self.sock, "show info"), re.MULTILINE)
        except OSError:
            return None
        return int(found.group(1)) if found else None

    def file_pid(self) -> int | None:
        found = load.pids(self.pidfile) if self.pidfile.exists() else []
        return found[0] if found else None

    def close(self) -> None:
        self.pids.update(load.pids(self.pidfile))
        for pid in self.pids:
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == "haproxy":  # not a reused pid
                    os.kill(pid, signal.SIGKILL)


class Pids(threading.Thread):
    """haproxy's pid from the pidfile and from `show info`, every 10 ms: each change is a reload."""

    def __init__(self, haproxy: Haproxy) -> None:
        super().__init__(daemon=True)
        self.haproxy, self.stop = haproxy, threading.Event()
        self.changes: dict[str, list[tuple[float, int]]] = {"pidfile": [], "show info": []}
        self.current: dict[str, int | None] = {"pidfile": haproxy.file_pid(), "show info": haproxy.info_pid()}

    def run(self) -> None:
        while not self.stop.wait(0.01):
            for source, read in (("pidfile", self.haproxy.file_pid), ("show info", self.haproxy.info_pid)):
                try:
                    pid = read()
                except (OSError, ValueError, UnicodeDecodeError):  # a pidfile being rewritten, a socket going
                    continue
                if pid is not None and pid != self.current[source]:
                    if self.current[source] is not None:
                        self.changes[source].append((time.monotonic(), pid))
                    self.current[source] = pid
                    self.haproxy.pids.add(pid)

    def between(self, start: float, end: float) -> tuple[int, int]:
        """Reloads seen (pidfile, show info) in [start, end)."""
        return tuple(sum(start <= t < end for t, _ in self.changes[s])  # type: ignore[return-value]
                     for s in ("pidfile", "show info"))

    def __enter__(self) -> Pids:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join()


class Others(load.Clients):
    """Client threads sending one request per new connection to the keepers' host names, all the time;
    a request fails unless it gets 200 from a container of its host's backend."""

    def __init__(self, port: int, allowed: dict[str, set[str]], clients: int = 4) -> None:
        self.port, self.allowed, self.hosts = port, allowed, sorted(allowed)
        self.stop, self.lock = threading.Event(), threading.Lock()
        self.answered: list[float] = []
        self.failures: list[tuple[float, str, str]] = []  # (time, host, what)
        self.strays: list[tuple[float, str, str]] = []  # 200 from a container not known (yet) to be in its backend
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def _run(self, index: int) -> None:
        host = self.hosts[index % len(self.hosts)]
        while not self.stop.is_set():
            try:
                status, body = _get(self.port, host)
            except Exception as exc:  # every kind of failure counts, none is retried
                status, body = 0, repr(exc)
            done = time.monotonic()
            with self.lock:
                if status != 200:
                    self.failures.append((done, host, f"HTTP {status}: {body[:80]}" if status else body[:100]))
                elif body not in self.allowed[host]:
                    self.strays.append((done, host, body))
                else:
                    self.answered.append(done)

    def settle(self) -> None:
        """Strays that were an app of the backend after all (answered before its id was known here) count as
        answered; the others as failures."""
        with self.lock:
            for at, host, body in self.strays:
                if body in self.allowed[host]:
                    self.answered.append(at)
                else:
                    self.failures.append((at, host, f"answered by {body[:40]}, not by its backend"))
            self.strays = []

    def between(self, start: float, end: float) -> tuple[int, int, list[str]]:
        """(failed, requests, what failed) in [start, end)."""
        with self.lock:
            failed = [(h, w) for t, h, w in self.failures if start <= t < end]
            answered = sum(start <= t < end for t in self.answered)
        return len(failed), len(failed) + answered, sorted({f"{h}: {w}" for h, w in failed})


class Probe(threading.Thread):
    """One request with `Host: HOST` through haproxy every 10 ms while aimed at HOST; keeps, per host and
    answering container, the first and last 200, and counts the answers that were neither 200 nor 404."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port, self.stop, self.lock = port, threading.Event(), threading.Lock()
        self.host: str | None = None
        self.seen: dict[tuple[str, str], list[float]] = {}  # (host, body) -> [first, last]
        self.status: dict[str, int] = {}  # host -> the last status
        self.odd: list[tuple[float, str, str]] = []  # (time, host, what): not 200, not 404

    def aim(self, host: str | None) -> None:
        self.host = host

    def run(self) -> None:
        while not self.stop.is_set():
            host = self.host
            if host is None:
                time.sleep(PROBE_EVERY)
                continue
            begun = time.monotonic()
            try:
                status, body = _get(self.port, host)
            except Exception as exc:
                status, body = 0, repr(exc)
            done = time.monotonic()
            with self.lock:
                self.status[host] = status
                if status == 200:
                    self.seen.setdefault((host, body), [done, done])[1] = done
                elif status != 404:
                    self.odd.append((done, host, f"HTTP {status}: {body[:80]}" if status else body[:100]))
            time.sleep(max(0.0, PROBE_EVERY - (time.monotonic() - begun)))

    def first(self, host: str, cid: str) -> float | None:
        with self.lock:
            return self.seen.get((host, cid), [None])[0]

    def last(self, host: str, cid: str) -> float | None:
        with self.lock:
            return self.seen.get((host, cid), [None, None])[1]

    def __enter__(self) -> Probe:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join()


@dataclasses.dataclass
class Step:
    """One app: started, served, stopped."""

    kind: str  # EXISTING or "created"
    host: str
    served: float = float("inf")  # docker run returned -> first 200 by it with its Host
    lingered: float | None = None  # docker stop called -> last 200 by it with its Host; None: never served
    gone: bool = False  # its route answered 404 within DEADLINE of the stop
    returned: float = 0.0  # when docker run returned (monotonic)
    start_window: tuple[float, float] = (0.0, 0.0)
    stop_window: tuple[float, float] = (0.0, 0.0)


@dataclasses.dataclass
class Row:
    """One line of the table."""

    label: str
    times: list[float]
    reloads: tuple[int, int]  # seen in the pidfile, in show info
    expected: str
    failed: int
    requests: int
    note: str = ""


def _wait(predicate: object, limit: float = DEADLINE) -> bool:
    deadline = time.monotonic() + limit
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def _app(client: docker.DockerClient, labels: dict[str, str]) -> docker.models.containers.Container:
    return client.containers.run(load.IMAGE, detach=True, environment={"HDC_GRACE": "1"},
                                 ports={"8080/tcp": ("127.0.0.1", None)}, labels={LABEL: RUN, **labels})


def _remove_ours(client: docker.DockerClient) -> None:
    for c in client.containers.list(all=True, filters={"label": f"{LABEL}={RUN}"}):
        with contextlib.suppress(docker.errors.DockerException):
            c.remove(force=True)


def one_app(client: docker.DockerClient, probe: Probe, others: Others, kind: str, host: str, keep: str) -> Step:
    """Start an app for `host` (on `existing`, or on a backend of its own), wait for it to be served with
    its Host, then stop it and wait for its route to be gone (404)."""
    step = Step(kind, host)
    labels = {HOST: host, **({LISTEN: EXISTING} if kind == EXISTING else {})}
    probe.aim(host)
    begun = time.monotonic()
    app = _app(client, labels)
    returned, cid = time.monotonic(), app.id[:12]
    step.returned = returned
    if kind == EXISTING:
        others.allowed[keep].add(cid)  # the keeper's host is on `existing` too: the app may answer it
    if _wait(lambda: probe.first(host, cid) is not None):
        step.served = probe.first(host, cid) - returned  # type: ignore[operator]
    time.sleep(0.5)  # a quiet spell: each change on its own, as most are
    step.start_window = (begun, time.monotonic())
    called = time.monotonic()
    app.stop(timeout=10)
    step.gone = _wait(lambda: probe.status.get(host) == 404)
    if step.served != float("inf"):
        step.lingered = max(0.0, probe.last(host, cid) - called)  # type: ignore[operator]
    time.sleep(0.3)
    step.stop_window = (called, time.monotonic())
    probe.aim(None)
    return step


def bench(starts: int, directory: Path, keep_log: Path | None = None) -> tuple[list[Row], dict[str, str]]:
    """Both scenarios on one haproxy and one watcher; the rows of the table and the lines under it."""
    client, token = docker.from_env(), secrets.token_hex(3)
    keep, other = f"keep-{token}.example.com", f"other-{token}.example.com"
    steps: list[Step] = []
    log = directory / "watch.log"
    with contextlib.ExitStack() as stack:
        stack.callback(_remove_ours, client)
        if keep_log is not None:
            stack.callback(lambda: log.exists() and keep_log.write_bytes(log.read_bytes()))
        haproxy = Haproxy(directory)
        stack.callback(haproxy.close)
        busy = [c.name for c in client.containers.list()
                if any(k.startswith("haproxy-docker-config.") for k in c.labels)]
        if busy:
            progress(f"warning: {len(busy)} containers of others carry the tool's labels ({', '.join(busy[:5])}...): "
                     "the watcher (no -l) serves them too")
        keepers = {keep: _app(client, {HOST: keep, LISTEN: EXISTING}), other: _app(client, {HOST: other})}
        stack.enter_context(load.background([load.CLI, "--watch", "-f", str(haproxy.cfg), "-h", str(haproxy.pidfile),
                                             "-v", "--log-format", "json"], log))
        pids = stack.enter_context(Pids(haproxy))
        others = stack.enter_context(Others(haproxy.port, {h: {c.id[:12]} for h, c in keepers.items()}))
        probe = stack.enter_context(Probe(haproxy.port))
        if not _wait(lambda: all(_answers(haproxy.port, h) == {c.id[:12]} for h, c in keepers.items()), 60):
            raise RuntimeError(f"the keepers were never served:\n{log.read_text()[-3000:]}")
        time.sleep(1)
        ready = time.monotonic()
        progress(f"haproxy {haproxy.version} (pid {haproxy.file_pid()}) routes {keep} and {other}; "
                 f"{starts} apps on {EXISTING}, then {starts} on backends of their own")
        for kind in (EXISTING, "created"):
            for _ in range(starts):
                s = one_app(client, probe, others, kind, f"h{len(steps) + 1}-{token}.example.com", keep)
                steps.append(s)
                progress(f"{s.host} ({kind}): served {_one(s.served)} after docker run returned, last served "
                         f"{_one(s.lingered)} after docker stop{'' if s.gone else ', route still there'}; reloads "
                         f"{pids.between(*s.start_window)} / {pids.between(*s.stop_window)}; other hosts failed "
                         f"{others.between(*s.start_window)[0]} / {others.between(*s.stop_window)[0]}"
                         + _when_failed(others, s))
        time.sleep(1)
        done = time.monotonic()
        others.settle()
        with probe.lock:
            odd = list(probe.odd)
        ours = {EXISTING, *(s.host for s in steps), *keepers}
        foreign = _foreign(log.read_text(errors="replace"), ours)
        rows = [_row(f"host added on `{EXISTING}` (a backend that exists)", [s for s in steps if s.kind == EXISTING],
                     "start", pids, others, odd, "0"),
                _row("host on a backend made for it", [s for s in steps if s.kind == "created"], "start", pids,
                     others, odd, "1 per app"),
                _row(f"leaving: host of `{EXISTING}`", [s for s in steps if s.kind == EXISTING], "stop", pids,
                     others, odd, "0"),
                _row("leaving: host of a backend made for it (removed)", [s for s in steps if s.kind == "created"],
                     "stop", pids, others, odd, "1 per app")]
        total, reloads = others.between(ready, done), pids.between(ready, done)
        env = {"haproxy": f"{haproxy.version} on this host",
               "whole run": f"{total[0]} of {total[1]} requests to the keepers' hosts failed; {reloads[0]} reloads "
                            f"({reloads[1]} in `show info`); the watcher's -v log says `haproxy hot-restarted` "
                            f"{log.read_text().count('haproxy hot-restarted')} times, its first pass included",
               "afterwards": _final(haproxy, token, other)}
        if total[2]:
            env["what failed"] = _cell("; ".join(total[2]), 600)
        if foreign:
            env[FOREIGN] = (
                f"the watcher (no -l: every labelled container of the engine) also served {', '.join(foreign)}; "
                "their passes and reloads are in the figures: run on a quiet engine")
            progress(f"warning: {env[FOREIGN]}")
    return rows, env


def _when_failed(others: Others, step: Step) -> str:
    """When the other hosts' failed requests of an app's spells came, from `docker run` returning."""
    with others.lock:
        times = [t - step.returned for t, _, _ in others.failures if step.start_window[0] <= t < step.stop_window[1]]
    return f" (at {', '.join(f'{t:+.3f}' for t in times[:20])} s from docker run returned)" if times else ""


def _one(value: float | None) -> str:
    return "never" if value is None or value == float("inf") else f"{value:.3f} s"


def _answers(port: int, host: str) -> set[str]:
    try:
        status, body = _get(port, host)
    except OSError:
        return set()
    return {body} if status == 200 else set()


def _foreign(log: str, ours: set[str]) -> list[str]:
    """Backends the watcher added servers to, routed or made that are not this run's (another test's or
    bench's containers on the same engine: a watcher without -l takes every labelled one)."""
    named = set(re.findall(r'"message": "(?:added|removed|routed www|unrouted www|created backend|removed backend)/'
                           r'([^/" ]+)', log))
    return sorted(named - ours)


def _final(haproxy: Haproxy, token: str, other: str) -> str:
    """What the map file, the config and haproxy's map hold once every app is gone (the keepers stay)."""
    text = haproxy.cfg.read_text()
    created = re.findall(r"^backend (\S+)\n    #DOCKERCREATED", text, re.MULTILINE)
    on_disk = [line.split()[0] for line in (haproxy.cfg.parent / "docker-routes.map").read_text().splitlines()
               if line and not line.startswith("#")]
    try:
        live = sorted(row.split()[1] for row in churn.ask(haproxy.sock, f"show map {haproxy.cfg.parent}/"
                                                                        "docker-routes.map").splitlines() if row)
    except OSError as exc:
        live = [f"? ({exc})"]
    said = (f"map file {', '.join(sorted(on_disk))}; haproxy's map {', '.join(live)}; backends made by the tool "
            f"{', '.join(created) or 'none'} (expected: the keepers' two routes, and backend {other})")
    return said.replace(token, "T")


def _cell(text: str, limit: int) -> str:
    """Text that fits a table cell: one line, no '|', at most `limit` characters."""
    text = " ".join(text.replace("|", "/").split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _row(label: str, steps: list[Step], edge: str, pids: Pids, others: Others,
         odd: list[tuple[float, str, str]], expected: str) -> Row:
    windows = [s.start_window if edge == "start" else s.stop_window for s in steps]
    reloads = [pids.between(*w) for w in windows]
    counted = [others.between(*w) for w in windows]
    hosts = {s.host for s in steps}
    kinds = [w.split(":")[0] for t, h, w in odd if h in hosts and any(a <= t < b for a, b in windows)]
    strange = [f"{kind} ({kinds.count(kind)} time{'s' if kinds.count(kind) > 1 else ''})"
               for kind in sorted(set(kinds))]
    note = [f"{sum(r[0] > 0 for r in reloads)} of {len(steps)} apps saw a reload"]
    if edge == "stop" and (late := sum(not s.gone for s in steps)):
        note += [f"{late} routes still answered {DEADLINE:.0f} s after the stop"]
    if strange:
        note += [f"its own host also answered {', '.join(strange)} (the probe's answers, 10 ms apart)"]
    if any(c[0] for c in counted):
        note += [f"failed: {_cell('; '.join(sorted({w for c in counted for w in c[2]})), 300)}"]
    times = [s.served if edge == "start" else float("inf") if s.lingered is None else s.lingered for s in steps]
    return Row(label, times, (sum(r[0] for r in reloads), sum(r[1] for r in reloads)), expected,
               sum(c[0] for c in counted), sum(c[1] for c in counted), "; ".join(note))


def _s(values: list[float]) -> str:
    finite = sorted(v for v in values if v != float("inf"))
    never = f"{len(values) - len(finite)} never" if len(finite) < len(values) else ""
    if not finite:
        return never or "-"
    return f"{statistics.median(finite):.3f} / {finite[-1]:.3f}" + (f" ({never})" if never else "")


def write(out: Path, rows: list[Row], env: dict[str, str], measured_at: str, command: str, seconds: float) -> None:
    table = [f"| {r.label} | {len(r.times)} | {_s(r.times)} | {r.reloads[0]} ({r.reloads[1]}) | {r.expected} | "
             f"{r.failed} of {r.requests} | {r.note} |" for r in rows]
    intro = " ".join(__doc__.split("\n\n", 2)[2].split("Writes DIR")[0].split())
    text = "\n".join([
        "# Routes: a host's leading and leaving edge under --watch, measured", "",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with `{command}` on {os.cpu_count()} cores, "
        f"in {seconds:.0f} s. {intro}", "",
        f"- measured at commit: {measured_at}", "",
        "Leading edge: `docker run -d` returned -> the first request with the app's Host answered by it. "
        "Leaving edge: `docker stop` called -> the last request with its Host answered by it (the app serves "
        "1 s after SIGTERM, so what is measured is how soon haproxy stops sending to it); an app never "
        f"served has none. Never: not within {DEADLINE:.0f} s. On `{EXISTING}` the keeper's server shares the "
        "backend, so a request with the new Host goes to the keeper one time in two: both edges include a "
        "poll or so of that. Reloads: changes of haproxy's pid in the pidfile (in `show info`) while an app "
        "starts (from just before `docker run` to 0.5 s after it was first served) or stops (from `docker "
        "stop` to 0.3 s after its Host answered 404). Failed requests: of the clients sending to the keepers' "
        "host names, in those same spells.", "",
        "| scenario | apps | seconds, median / max | reloads seen (show info) | reloads expected | "
        "failed requests, other hosts | notes |",
        "| --- | --- | --- | --- | --- | --- | --- |", *table, "",
        *[f"- {k}: {v}" for k, v in env.items()], ""])
    (out / "bench-routes.md").write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--starts", type=int, default=10, help="apps per scenario (default 10)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where bench-routes.md goes")
    parser.add_argument("--log", type=Path, help="keep the watcher's -v log in this file")
    provenance.add_argument(parser)
    args = parser.parse_args()
    try:
        measured_at = provenance.commit("routes.py", args.allow_dirty)
        with terminate_cleanly(), tempfile.TemporaryDirectory(prefix="hdc-bench-routes-") as tmp:
            rows, env = bench(args.starts, Path(tmp), args.log)
    except provenance.DirtyTree as exc:
        print(f"routes: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("routes: interrupted; everything it started is removed", file=sys.stderr)
        return 130
    for row in rows:
        print(row, file=sys.stderr)
    command = ".venv/bin/python bench/routes.py" + (f" --starts {args.starts}" if args.starts != 10 else "")
    args.out.mkdir(parents=True, exist_ok=True)
    write(args.out, rows, env, measured_at, command, time.monotonic() - _T0)
    print(f"routes: wrote {args.out / 'bench-routes.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
