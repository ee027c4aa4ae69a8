"""Swarm churn: this tool's --watch against HAProxy's own DNS discovery, side by side in one haproxy.

    .venv/bin/python bench/swarm.py [--nodes 2] [--rounds 3] [--dns-only] [--out DIR]

One haproxy (the hdc-haproxy image, in a container on the service's overlay
network) has three listeners on the same service: `tool`, kept by
`haproxy-docker-config --watch --service SERVICE`, and `dns` and `dns100`,
HAProxy's own discovery (`server-template` on `tasks.SERVICE`, a `resolvers`
section on Docker's embedded DNS 127.0.0.11:53 with `hold valid 1s`, and one
at its most aggressive setting that still works: `hold valid 100ms`, `timeout
resolve 100ms`, `timeout retry 100ms`). All have the same
health checks and `retries 3`, `option redispatch 1`, `retry-on
all-retryable-errors`. Two clients per listener send one request per
connection, all the time, while the service goes through rounds of: scale
3 -> 6, scale 6 -> 3, a rolling update (start-first). Measured per listener:
seconds from a task's `running` (its status timestamp in GET /tasks) to the
first request it served, and the failed requests and slowest answer of each
phase. Writes DIR/bench-swarm.md and DIR/bench-swarm.png (default docs/). Everything it
starts (a swarm, with a worker dockerd in a network namespace when --nodes 2)
is removed at the end, also on Ctrl-C or SIGTERM. `--dns-only` runs without
the tool (its listener stays empty), to try the harness on its own.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "tests"))  # the swarm fixture lives with the tests
import load  # noqa: E402  (bench/load.py: the load generator)
from bench import terminate_cleanly  # noqa: E402  (SIGTERM runs the swarm's teardown too)
import provenance  # noqa: E402
import swarm_support as ss  # noqa: E402

CLI = str(Path(sys.executable).parent / "haproxy-docker-config")
LISTENERS = {"tool": 8000, "dns": 8001, "dns100": 8002}
CHECK = "check inter 1s rise 1 fall 2"
RETRIES = "    retries 3\n    option redispatch 1\n    retry-on all-retryable-errors\n"
#: How long to wait for a new task to be served before calling it never served.
SERVE_DEADLINE = 20.0
#: Failures still counted after a phase has settled (late drains, late DNS answers).
TAIL = 2.0
_T0 = time.monotonic()


def progress(message: str) -> None:
    print(f"[{time.monotonic() - _T0:6.1f} s] {message}", file=sys.stderr, flush=True)


def haproxy_listeners(service: str) -> str:
    """Three listeners on one service: the tool's, and DNS discovery at `hold valid 1s` and at its most
    aggressive setting that still works (`hold valid 100ms`, `timeout resolve 100ms`)."""
    def dns(name: str, resolvers: str) -> str:
        return (f"listen {name}\n    bind :{LISTENERS[name]}\n    balance roundrobin\n{RETRIES}"
                f"    server-template task 10 tasks.{service}:8080 {CHECK} resolvers {resolvers} init-addr none "
                "resolve-prefer ipv4\n\n")
    return (
        "resolvers docker\n    nameserver dns 127.0.0.11:53\n    accepted_payload_size 8192\n"
        "    timeout resolve 1s\n    timeout retry 1s\n    hold valid 1s\n\n"
        "resolvers fast\n    nameserver dns 127.0.0.11:53\n    accepted_payload_size 8192\n"
        "    timeout resolve 100ms\n    timeout retry 100ms\n    hold valid 100ms\n\n"
        f"listen tool\n    bind :{LISTENERS['tool']}\n    balance roundrobin\n{RETRIES}"
        f"    #DOCKERSERVER $id ${{ip}}:$port {CHECK}\n\n" + dns("dns", "docker") + dns("dns100", "fast"))


class TimedLoad(load.Load):
    """load.Load that also keeps (time answered, latency, body) of every answer, to split them by phase."""

    def __init__(self, port: int, clients: int) -> None:
        super().__init__(port, clients, load.Outcome())
        self.answers: list[tuple[float, float, str]] = []

    def _get(self) -> str:
        started = time.monotonic()
        body = super()._get()
        done = time.monotonic()
        with self.lock:
            self.answers.append((done, done - started, body))
        return body

    def first_served(self, short_id: str) -> float | None:
        with self.lock:
            return self.outcome.first_served.get(short_id)


@dataclasses.dataclass
class Phase:
    """One change to the service, as each listener saw it."""

    kind: str  # "scale up", "scale down", "rolling update"
    label: str  # e.g. "scale 3 -> 6"
    seconds: float  # from the command to settled plus TAIL
    delays: dict[str, list[float]]  # listener -> running-to-first-served of each new task (inf: never)
    failures: dict[str, int]
    requests: dict[str, int]
    slowest: dict[str, float]  # listener -> slowest answer in the phase (s)
    errors: dict[str, list[str]]  # listener -> the first failures, as the client saw them
    lingering: dict[str, list[float]]  # listener -> per old task: leaving seen -> its last answer (0: none)


def wall_to_monotonic(stamp: str) -> float:
    """A task status timestamp (RFC 3339, nanoseconds, UTC) on this process's monotonic clock."""
    head, _, rest = stamp.rstrip("Z").partition(".")
    fraction = float(f"0.{rest}") if rest else 0.0
    wall = datetime.datetime.fromisoformat(head).replace(tzinfo=datetime.timezone.utc).timestamp() + fraction
    return wall - (time.time() - time.monotonic())


def settled(tasks: list[dict[str, Any]], replicas: int, image: str) -> list[dict[str, Any]] | None:
    """The running tasks once the service has converged (count, image, no old task still running)."""
    wanted = [t for t in tasks if t["DesiredState"] == "running"]
    leaving = [t for t in tasks if t["DesiredState"] != "running"
               and t["Status"]["State"] in ("running", "starting", "preparing", "ready", "assigned")]
    ok = (len(wanted) == replicas and not leaving
          and all(t["Status"]["State"] == "running" and t["Spec"]["ContainerSpec"]["Image"] == image
                  for t in wanted))
    return wanted if ok else None


def run_phase(sw: ss.Swarm, service: str, loads: dict[str, TimedLoad], kind: str, label: str,
              command: Sequence[str], replicas: int, image: str, listeners: Sequence[str]) -> Phase:
    """Run one docker command on the service, wait until it settled and its new tasks served, measure.

    While it settles, GET /tasks every 0.1 s notes when each old task was first seen leaving
    (desired state no longer running): the reference for how long a listener still used it."""
    before = {ss.container_id(t) for t in sw.tasks(service)}
    started = time.monotonic()
    ss.docker_cli(*command)
    leaving: dict[str, float] = {}
    while True:
        tasks = sw.client.api.tasks(filters={"service": service})
        for t in tasks:
            if t["DesiredState"] != "running" and ss.container_id(t) in before:
                leaving.setdefault(ss.container_id(t)[:12], time.monotonic())
        if (running := settled(tasks, replicas, image)) is not None:
            break
        if time.monotonic() > started + 120:
            raise ss.SwarmSetupError(f"{label}: service {service} did not settle in 120 s")
        time.sleep(0.1)
    new = {ss.container_id(t)[:12]: wall_to_monotonic(t["Status"]["Timestamp"])
           for t in running if ss.container_id(t) not in before}
    _wait_served(loads, new, listeners)
    time.sleep(TAIL)
    return _measure(loads, kind, label, started, time.monotonic(), new, leaving)


def _wait_served(loads: dict[str, TimedLoad], new: dict[str, float], listeners: Sequence[str]) -> None:
    deadline = time.monotonic() + SERVE_DEADLINE
    while time.monotonic() < deadline and any(loads[name].first_served(short) is None
                                              for name in listeners for short in new):
        time.sleep(0.05)


def _measure(loads: dict[str, TimedLoad], kind: str, label: str, started: float, ended: float,
             new: dict[str, float], leaving: dict[str, float]) -> Phase:
    phase = Phase(kind, label, ended - started, {}, {}, {}, {}, {}, {})
    for name, lg in loads.items():
        with lg.lock:
            answers = [a for a in lg.answers if started <= a[0] <= ended]
            failures = [what for when, what in lg.outcome.failures if started <= when <= ended]
        served = [lg.first_served(short) for short in new]
        phase.delays[name] = [float("inf") if s is None else s - running
                              for s, running in zip(served, new.values())]
        phase.failures[name], phase.requests[name] = len(failures), len(answers) + len(failures)
        phase.slowest[name] = max((a[1] for a in answers), default=0.0)
        phase.errors[name] = failures[:3]
        last = {body: when for when, _, body in answers}
        phase.lingering[name] = [max(0.0, last.get(short, seen) - seen) for short, seen in leaving.items()]
    return phase


@contextlib.contextmanager
def watcher(box: ss.HaproxyBox, service: str, log: Path, enabled: bool) -> Iterator[None]:
    """haproxy-docker-config --watch on the `tool` listener, stopped with SIGTERM at the end."""
    if not enabled:
        yield
        return
    command = [CLI, "-f", str(box.config), "-l", "tool", "--service", service, "--watch", "-v",
               "--haproxy-container", box.name, "--runtime-socket", str(box.socket)]
    with load.background(command, log) as proc:
        yield
    if proc.returncode not in (0, -signal.SIGTERM):
        progress(f"the watcher exited {proc.returncode}; its log: {log}")


def churn(sw: ss.Swarm, service: str, loads: dict[str, TimedLoad], rounds: int,
          listeners: Sequence[str]) -> list[Phase]:
    """Rounds of scale up, scale down and a rolling update; the image alternates between two tags."""
    phases, image = [], ss.HTTPD
    for n in range(1, rounds + 1):
        progress(f"round {n}: scale 3 -> 6")
        phases.append(run_phase(sw, service, loads, "scale up", "scale 3 -> 6",
                                ["service", "scale", "--detach", f"{service}=6"], 6, image, listeners))
        progress(f"round {n}: scale 6 -> 3")
        phases.append(run_phase(sw, service, loads, "scale down", "scale 6 -> 3",
                                ["service", "scale", "--detach", f"{service}=3"], 3, image, listeners))
        image = ss.HTTPD_V2 if image == ss.HTTPD else ss.HTTPD
        progress(f"round {n}: rolling update to {image}")
        phases.append(run_phase(sw, service, loads, "rolling update", "rolling update, start-first",
                                ["service", "update", "--detach", "--image", image, "--update-order",
                                 "start-first", "--update-parallelism", "1", "--update-delay", "0s", service],
                                3, image, listeners))
    return phases


def wait_all_served(loads: dict[str, TimedLoad], tasks: list[dict[str, Any]], listeners: Sequence[str],
                    log: Path) -> None:
    """Before churning: every listener in use serves every first task."""
    shorts = [ss.container_id(t)[:12] for t in tasks]
    deadline = time.monotonic() + 30
    while any(loads[name].first_served(s) is None for name in listeners for s in shorts):
        if time.monotonic() > deadline:
            said = log.read_text()[-2000:] if log.exists() else ""
            raise ss.SwarmSetupError(f"the listeners did not serve the first tasks within 30 s; the watcher said:\n{said}")
        time.sleep(0.1)


def run_bench(nodes: int, rounds: int, with_tool: bool, tmp: Path) -> tuple[list[Phase], dict[str, str]]:
    listeners = ["tool", "dns", "dns100"] if with_tool else ["dns", "dns100"]
    load_at_start = os.getloadavg()[0]
    with ss.swarm(nodes=nodes) as sw:
        spread = ["--replicas-max-per-node", "3"] if nodes == 2 else []
        service = sw.service(replicas=3, labels={ss.PORT: "8080"}, options=spread)
        tasks = sw.wait_running(service, 3)
        config = ss.haproxy_config(haproxy_listeners(service))
        with ss.haproxy_box(sw.client, sw.network, tmp, config, list(LISTENERS.values())) as box, \
                watcher(box, service, tmp / "watch.log", with_tool):
            loads = {name: TimedLoad(box.ports[LISTENERS[name]], 2) for name in listeners}
            with contextlib.ExitStack() as running:
                for lg in loads.values():
                    running.enter_context(lg)
                wait_all_served(loads, tasks, listeners, tmp / "watch.log")
                progress(f"{nodes} node(s), service {service}: {len(tasks)} tasks served; churning")
                phases = churn(sw, service, loads, rounds, listeners)
        env = environment(sw, nodes)
    env["load average (1 min), start / end"] = f"{load_at_start:.1f} / {os.getloadavg()[0]:.1f} (other work on the machine)"
    return phases, env


def environment(sw: ss.Swarm, nodes: int) -> dict[str, str]:
    engine = sw.client.version()
    haproxy = subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.splitlines()[0]
    return {"nproc": str(len(os.sched_getaffinity(0))), "kernel": os.uname().release,
            "Docker Engine": f"{engine['Version']} (API {engine['ApiVersion']})",
            "haproxy": haproxy, "swarm": f"{nodes} node(s)" + (", the worker a dockerd in a network namespace"
                                                               " joined over a veth pair" if nodes == 2 else "")}


# --- report -------------------------------------------------------------------------------------

KINDS = ("scale up", "scale down", "rolling update")


def _fmt(values: list[float]) -> str:
    finite = [v for v in values if v != float("inf")]
    never = len(values) - len(finite)
    if not finite:
        return f"never ({never})" if never else "-"
    text = f"{statistics.median(finite):.2f} / {max(finite):.2f}"
    return text + (f", {never} never" if never else "")


def _worst(values: list[float]) -> str:
    return f"{max(values):.2f}" if values else "-"


def summary_rows(phases: list[Phase], listeners: Sequence[str]) -> list[list[str]]:
    rows = []
    for kind in KINDS:
        mine = [p for p in phases if p.kind == kind]
        for name in listeners:
            delays = [d for p in mine for d in p.delays[name]]
            rows.append([kind, name, str(len(delays)), _fmt(delays),
                         _worst([v for p in mine for v in p.lingering[name]]),
                         str(sum(p.failures[name] for p in mine)), str(sum(p.requests[name] for p in mine)),
                         f"{max((p.slowest[name] for p in mine), default=0) * 1000:.0f}"])
    return rows


def md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def write_report(phases: list[Phase], env: dict[str, str], args: argparse.Namespace, seconds: float) -> None:
    listeners = ["tool", "dns", "dns100"] if not args.dns_only else ["dns", "dns100"]
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    command = ".venv/bin/python bench/swarm.py" + "".join(
        f" {flag}" for flag, on in ((f"--nodes {args.nodes}", args.nodes != 2),
                                    (f"--rounds {args.rounds}", args.rounds != 3), ("--dns-only", args.dns_only)) if on)
    started = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=seconds)
    headers = ["change", "listener", "new tasks", "running -> first served, s (median / max)",
               "old task served after leaving, s (max)", "failed requests", "requests", "slowest answer, ms"]
    per_phase = [[p.label, name, _fmt(p.delays[name]), _worst(p.lingering[name]), str(p.failures[name]),
                  str(p.requests[name]), f"{p.slowest[name] * 1000:.0f}"] for p in phases for name in listeners]
    failures = [f"- {p.label}, {name}: {e}" for p in phases for name in listeners for e in p.errors[name]]
    text = "\n".join([
        "# Swarm: --watch against HAProxy's DNS discovery\n",
        f"Run {started:%Y-%m-%d %H:%M} UTC, {seconds:.0f} s; reproduce from the repository root with\n",
        f"```\n{command}\n```\n",
        (__doc__ or "").split("\n\n", 2)[2].replace("\n", " ").strip() + "\n",
        "Machine and versions:\n", "\n".join(f"- {k}: {v}" for k, v in env.items()) + "\n",
        f"## Summary ({args.rounds} rounds)\n", md_table(headers, summary_rows(phases, listeners)),
        "![running to first served, per new task](bench-swarm.png)\n",
        "## Every phase\n", md_table([h for h in headers if h != "new tasks"], per_phase),
        "## Failed requests as the clients saw them (first 3 per phase)\n", "\n".join(failures) or "none",
    ])
    (out / "bench-swarm.md").write_text(text + "\n")
    plot(phases, listeners, out / "bench-swarm.png")


def plot(phases: list[Phase], listeners: Sequence[str], path: Path) -> None:
    """Left: each new task's running -> first served. Right: how long each old task still served."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.5), dpi=120, sharey=True)
    _strips(left, phases, listeners, ("scale up", "rolling update"), "delays")
    _strips(right, phases, listeners, ("scale down", "rolling update"), "lingering")
    left.set_ylabel("seconds")
    left.set_title("new task: running -> first request served")
    right.set_title("old task: seen leaving -> last request served")
    left.legend()
    fig.suptitle("Swarm churn: haproxy-docker-config --watch vs server-template + resolvers")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _strips(ax: Any, phases: list[Phase], listeners: Sequence[str], kinds: Sequence[str], field: str) -> None:
    """One strip of dots per (change, listener); the change's failed requests under its name."""
    for i, name in enumerate(listeners):
        for j, kind in enumerate(kinds):
            ys = [v for p in phases if p.kind == kind for v in getattr(p, field)[name] if v != float("inf")]
            xs = [j + (i - (len(listeners) - 1) / 2) * 0.3 + (k % 5 - 2) * 0.02 for k in range(len(ys))]
            ax.scatter(xs, ys, s=14, color=f"C{i}", label=name if j == 0 else None)
    ticks = []
    for kind in kinds:
        lost = ", ".join(f"{name} {sum(p.failures[name] for p in phases if p.kind == kind)}" for name in listeners)
        ticks.append(f"{kind}\nfailed: {lost}")
    ax.set_xticks(range(len(kinds)), ticks, fontsize=8)
    ax.set_xlim(-0.6, len(kinds) - 0.4)
    ax.grid(True, axis="y", alpha=0.3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--nodes", type=int, choices=(1, 2), default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dns-only", action="store_true", help="without the tool: try the harness alone")
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    provenance.add_argument(parser)
    args = parser.parse_args(argv)
    try:
        measured_at = provenance.commit("swarm.py", args.allow_dirty)
        with terminate_cleanly(), tempfile.TemporaryDirectory(prefix="hdc-swarm-bench-") as tmp:
            phases, env = run_bench(args.nodes, args.rounds, not args.dns_only, Path(tmp))
    except (ss.SwarmSetupError, provenance.DirtyTree) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    env["measured at commit"] = measured_at
    write_report(phases, env, args, time.monotonic() - _T0)
    progress(f"wrote {args.out / 'bench-swarm.md'} and {args.out / 'bench-swarm.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
