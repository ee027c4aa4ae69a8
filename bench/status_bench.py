"""Time --status on a listener of 500 servers with a real haproxy running; write its section of docs/bench.md.

    .venv/bin/python bench/status_bench.py [--reps 7] [--out docs]

The config is bench/configs.py's 1,500-line config with a stats socket and 500
managed server lines (`check`, on closed loopback ports, so haproxy has them
DOWN and there is no drift) in the `dockerha-app1` listener. haproxy runs on it
for real, so `--status` asks the stats socket (`show servers state`, `show stat`)
and Docker (one list call) as an operator's cron job would. `--show` and
`--verify` on the same file are timed alongside for scale. The section goes
between markers at the end of docs/bench.md; bench.py keeps it when it rewrites
the file.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import docker

import configs
from counting_proxy import CountingProxy
from load import free_port
import provenance
from measure import CpuSnapshot, Sample, run_child
from report import STATUS_BEGIN, STATUS_END, md_table
from soak import running_haproxy

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
CLI = str(Path(sys.executable).parent / "haproxy-docker-config")
SERVERS = 500
LINES = 1_500


def config_text(tmp: Path) -> str:
    """The generated config, a stats socket in global, and SERVERS server lines after the template."""
    port = free_port()
    text = configs.generate(LINES, port).replace("global\n", f"global\n    stats socket {tmp}/admin.sock mode 600 "
                                                             f"level admin\n", 1)
    template = f"    #DOCKERSERVER {configs.TEMPLATE}\n"
    servers = "".join(f"    server {hashlib.sha256(str(i).encode()).hexdigest()[:12]} 127.0.0.1:{20000 + i} "
                      f"check inter 2000 rise 2 fall 5\n" for i in range(SERVERS))
    return text.replace(template, template + servers, 1)


def timed(argv: list[str], expect: int = 0) -> tuple[Sample, float]:
    """One run: wall time and peak RSS (measure.run_child), and the CPU seconds it used.

    CPU time does not grow when other work shares the machine, wall time does; both are shown."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    sample, _ = run_child(argv, expect)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return sample, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def time_all(commands: dict[str, tuple[list[str], int]], reps: int) -> dict[str, list[tuple[Sample, float]]]:
    """Every command `reps` times, interleaved, after one untimed round."""
    runs: dict[str, list[tuple[Sample, float]]] = {name: [] for name in commands}
    for rep in range(reps + 1):
        for name, (argv, expect) in commands.items():
            result = timed(argv, expect)
            if rep:
                runs[name].append(result)
    return runs


def tool(config: Path, *args: str) -> list[str]:
    return [CLI, "-f", str(config), "-l", configs.LISTENER, *args]


def section(runs: dict[str, list[tuple[Sample, float]]], requests: list[str], running: int, reps: int,
            rows: int, others: float, measured_at: str) -> str:
    def median(values: list[float]) -> float:
        return statistics.median(values)

    table = md_table(["command", "median wall s", "min wall s", "median CPU s", "peak MB"],
                     [[f"`{name}`" if name.startswith("-") else name, f"{median([s.wall for s, _ in r]):.3f}",
                       f"{min(s.wall for s, _ in r):.3f}", f"{median([c for _, c in r]):.3f}",
                       f"{median([s.rss_mb for s, _ in r]):.1f}"] for name, r in runs.items()])
    return (f"{STATUS_BEGIN}\n## `--status` on 500 servers\n\n"
            f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC with "
            f"`.venv/bin/python bench/status_bench.py` ({reps} timed runs per number, one untimed first): the "
            f"{LINES:,}-line generated config with {SERVERS} managed servers in `{configs.LISTENER}` and a real "
            f"haproxy running on it (servers on closed loopback ports, so DOWN: no drift, exit 0). `--status` "
            f"printed {rows} rows. It asks haproxy two commands on the stats socket and Docker "
            f"{len(requests)} requests ({', '.join(f'`{r}`' for r in requests)}); {running} containers were "
            f"on the engine. CPU s is user plus system time of the command and the children it waited for "
            f"(the `/bin/true` row is the launcher's own share); other work kept {others:.1f} cores of 2 busy "
            f"on average while this ran, which stretches wall times, not CPU times.\n\n"
            f"- measured at commit: {measured_at}\n\n" + table + f"\n{STATUS_END}\n")


def write_section(text: str, path: Path) -> None:
    """Replace this script's section of docs/bench.md (or add it at the end)."""
    old = path.read_text() if path.exists() else ""
    before, _, rest = old.partition(STATUS_BEGIN)
    after = rest.partition(STATUS_END)[2].lstrip("\n") if rest else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(before.rstrip("\n") + "\n\n" + text + after)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    provenance.add_argument(parser)
    args = parser.parse_args(argv)
    try:
        measured_at = provenance.commit("status_bench.py", args.allow_dirty)
    except provenance.DirtyTree as exc:
        print(f"status_bench: {exc}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="hdc-status-") as tmp, contextlib.closing(CountingProxy()) as proxy:
        config = Path(tmp) / "haproxy.cfg"
        config.write_text(config_text(Path(tmp)))
        with running_haproxy(config):
            time.sleep(3)  # the first round of checks: servers settle from the initial state to DOWN
            _, output = run_child(tool(config, "--status"))
            rows = len(output.splitlines()) - 1
            before = CpuSnapshot.take()
            runs = time_all({"--status": (tool(config, "--status"), 0),
                             "--status --json": (tool(config, "--status", "--json"), 0),
                             "--show": (tool(config, "--show"), 0),
                             "--verify": (tool(config, "--verify"), 1),
                             "/bin/true (launcher)": (["/bin/true"], 0)}, args.reps)
            others = CpuSnapshot.take().others_since(before)
            proxy.take()
            run_child(tool(config, "--status", "--docker-url", proxy.url))
            requests = proxy.take()[0]
        running = len(docker.from_env().api.containers(quiet=True, all=True))
    write_section(section(runs, requests, running, args.reps, rows, others, measured_at), args.out / "bench.md")
    wall = statistics.median(s.wall for s, _ in runs["--status"])
    print(f"--status on {SERVERS} servers: median {wall:.3f} s wall; wrote {args.out / 'bench.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
