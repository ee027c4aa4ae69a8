"""docs/bench.md and docs/bench.png from one benchmark run's results.

The targets are judged here, from the same medians the tables show, so the
verdicts cannot drift from the numbers printed next to them.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from measure import Stats

#: Keys of Results.timings: (nominal config lines, our running containers).
Scenario = tuple[int, int]

TOOL_COMMANDS = ("--add", "--check", "--check ID", "--verify", "--show")
FLOORS = ("floor", "floor (section only)")
PLOTTED = ("--add", "--check", "--show", "floor", "floor (section only)")
#: bench/status_bench.py's section of bench.md lies between these; write_report keeps it.
STATUS_BEGIN, STATUS_END = "<!-- status_bench.py -->", "<!-- /status_bench.py -->"


@dataclasses.dataclass
class Results:
    """Everything one run measured, keyed by nominal config size and container count."""

    reps: int
    command: str
    started: datetime.datetime
    environment: dict[str, str]
    duration: float = 0.0
    lines: dict[int, int] = dataclasses.field(default_factory=dict)
    timings: dict[Scenario, dict[str, Stats]] = dataclasses.field(default_factory=dict)
    requests: dict[int, dict[str, Traffic]] = dataclasses.field(default_factory=dict)
    components: dict[str, Stats] = dataclasses.field(default_factory=dict)
    engine_running: dict[int, int] = dataclasses.field(default_factory=dict)
    settled: dict[int, float] = dataclasses.field(default_factory=dict)
    others: dict[Scenario, float] = dataclasses.field(default_factory=dict)
    warnings: list[str] = dataclasses.field(default_factory=list)

    @property
    def sizes(self) -> list[int]:
        return sorted(self.lines)

    def label(self, scenario: Scenario) -> str:
        size, count = scenario
        return f"{self.lines[size]:,} lines, {count} ctr"


@dataclasses.dataclass(frozen=True)
class Traffic:
    """One invocation's Docker API requests (id and name redacted) and response bytes."""

    requests: list[str]
    response_bytes: int


@dataclasses.dataclass(frozen=True)
class Target:
    goal: str
    measured: str
    met: bool


###############################################################################
# Targets #####################################################################
###############################################################################


def targets(r: Results) -> list[Target]:
    return [_add_vs_floor(r), _add_on_largest(r), _add_vs_containers(r), _memory_on_largest(r)]


def _add_vs_floor(r: Results) -> Target:
    parts, met = [], True
    for size in r.sizes:
        t = r.timings[(size, 1)]
        ratio = t["--add"].wall / t["floor"].wall
        met &= ratio <= 1.3
        parts.append(f"{r.lines[size]:,} lines: {t['--add'].wall:.3f} / {t['floor'].wall:.3f} s = {ratio:.2f}x")
    return Target("`--add` within 1.3x of the floor at every config size", "; ".join(parts), met)


def _add_on_largest(r: Results) -> Target:
    largest = r.sizes[-1]
    wall = r.timings[(largest, 1)]["--add"].wall
    return Target(f"`--add` on the {r.lines[largest]:,}-line config under 1 s", f"{wall:.3f} s", wall < 1.0)


def _add_vs_containers(r: Results) -> Target:
    """The tool's ratio, next to the floor's: the floor shows what the machine alone does."""
    smallest = r.sizes[0]
    counts = sorted(c for s, c in r.timings if s == smallest)
    few, many = (r.timings[(smallest, c)] for c in (counts[0], counts[-1]))
    ratio = many["--add"].wall / few["--add"].wall
    control = many["floor"].wall / few["floor"].wall
    return Target(f"`--add` with {counts[-1]} containers running within 1.1x of {counts[0]} running "
                  f"({r.lines[smallest]}-line config)",
                  f"{many['--add'].wall:.3f} / {few['--add'].wall:.3f} s = {ratio:.2f}x "
                  f"(the floor, same change: {control:.2f}x)", ratio <= 1.1)


def _memory_on_largest(r: Results) -> Target:
    largest = r.sizes[-1]
    peaks = {(name, count): stats.rss_mb for (size, count), cmds in r.timings.items() if size == largest
             for name, stats in cmds.items() if name in TOOL_COMMANDS}
    (name, count), peak = max(peaks.items(), key=lambda item: item[1])
    return Target(f"peak memory under 100 MB on the {r.lines[largest]:,}-line config (any action)",
                  f"{peak:.1f} MB (largest: `{name}` with {count} containers)", peak < 100)


###############################################################################
# Markdown ####################################################################
###############################################################################


def md_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _scenario_table(r: Results, scenarios: Sequence[Scenario], headers: Sequence[str]) -> str:
    """Rows: commands; per scenario two columns, median wall s and median peak MB."""
    columns = [h for head in headers for h in (f"{head}: s", "MB")]
    rows = []
    for name in TOOL_COMMANDS + FLOORS:
        cells = [f"`{name}`" if name.startswith("-") else name]
        for s in scenarios:
            cells += [f"{r.timings[s][name].wall:.3f}", f"{r.timings[s][name].rss_mb:.1f}"]
        rows.append(cells)
    ratio_row = ["`--add` / floor"]
    for s in scenarios:
        ratio_row += [f"{r.timings[s]['--add'].wall / r.timings[s]['floor'].wall:.2f}x", ""]
    return md_table(["command", *columns], [*rows, ratio_row])


def size_section(r: Results) -> str:
    scenarios = [(size, 1) for size in r.sizes]
    table = _scenario_table(r, scenarios, [f"{r.lines[s]:,} lines" for s, _ in scenarios])
    return ("## By config size (1 running container)\n\n"
            "Median wall time (s) and median peak RSS (MB). For `--add` and the floors the peak is the "
            "larger of the Python process and the `haproxy -c` it runs (alone in \"Where the time goes\"); "
            "on the largest config that is haproxy.\n\n" + table)


def container_section(r: Results) -> str:
    counts_per_size = collections.Counter(size for size, _ in r.timings)
    scenarios = sorted(s for s in r.timings if counts_per_size[s[0]] > 1)
    table = _scenario_table(r, scenarios, [r.label(s) for s in scenarios])
    running = ", ".join(f"{n} of ours: {r.engine_running[n]}" for n in sorted(r.engine_running))
    return ("## By number of running containers\n\n"
            f"Median wall time (s) and median peak RSS (MB). Running containers on the whole engine "
            f"at each stage (ours plus anyone else's): {running}.\n\n" + table)


def noise_note(r: Results) -> str:
    """How busy the machine was with other work while each scenario was timed."""
    others = ", ".join(f"{r.label(s)}: {r.others[s]:.2f}" for s in r.timings)
    settled = ", ".join(f"{n}: {r.settled[n]:.0f} s" for n in sorted(r.settled))
    return (f"Machine noise: average cores ({r.environment['nproc']} in all) busy with work other than "
            f"the benchmark's own processes while each scenario ran (kernel threads, dockerd, any "
            f"concurrent test suite): {others}. After starting containers the run waited for the "
            f"machine to go quiet (at most 30 s) before timing: {settled}.\n")


def requests_section(r: Results) -> str:
    counts = sorted(r.requests)
    labels = list(r.requests[counts[0]])
    rows = []
    for label in labels:
        seen = [r.requests[c][label] for c in counts]
        same = all(collections.Counter(t.requests) == collections.Counter(seen[0].requests) for t in seen)
        rows.append([f"`{label}`" if label.startswith("-") else label,
                     *(f"{len(t.requests)} ({t.response_bytes:,} B)" for t in seen), "yes" if same else "**no**"])
    table = md_table(["action", *(f"{c} running" for c in counts), "same requests at every count"], rows)
    checks = md_table(["expectation", "measured", "verdict"],
                      [[t.goal, t.measured, "met" if t.met else "**not met**"] for t in request_expectations(r)])
    return ("## Docker API requests per invocation\n\n" + checks + "\n"
            "Counted by a loopback forwarder in bench.py (request lines client->engine; bytes of the "
            "engine's responses in brackets), the CLI run with `--docker-url tcp://127.0.0.1:PORT` on the "
            f"{r.lines[r.sizes[0]]}-line config; the actions run in this order on one file, so "
            "`--check`, `--verify`, `--show` and `--delete` see the server `--add` put in. "
            "`{id}`/`{name}` stand for the added container; `/version` is docker-py's API "
            "version negotiation.\n\n" + table + "\n" + _request_lines(r, counts, labels))


def request_expectations(r: Results) -> list[Target]:
    """What each action should cost the engine, judged from the counted traffic."""
    counts = sorted(r.requests)
    first, last = r.requests[counts[0]], r.requests[counts[-1]]

    def flat(label: str) -> tuple[bool, str]:
        same = all(collections.Counter(r.requests[c][label].requests) == collections.Counter(first[label].requests)
                   for c in counts)
        grows = last[label].response_bytes > 1.1 * first[label].response_bytes + 1024
        sizes = " -> ".join(f"{r.requests[c][label].response_bytes:,} B" for c in counts)
        return same, not grows, f"`{label}`: {len(first[label].requests)} -> {len(last[label].requests)} requests, {sizes}"

    flats = [flat(label) for label in ("--add", "--delete ID", "--check ID", "--check NAME")]
    verify = collections.Counter(_kind(line) for line in last["--verify"].requests)
    silent = {label: len(last[label].requests) for label in ("--show", "--check")}
    return [
        Target(f"`--add`, `--delete`, `--check ID/NAME` make the same requests with more running containers "
               f"({counts[0]} -> {counts[-1]})",
               "; ".join(text for _, _, text in flats), all(same for same, _, _ in flats)),
        Target("... and receive no more bytes (beyond the issue's criterion: a write lists the running "
               "containers once to find one that bind-mounts the config, about 0.9 KB per container)",
               "see the line above", all(flat_bytes for _, flat_bytes, _ in flats)),
        Target("`--verify` makes one list call (plus `/version`)",
               ", ".join(f"{kind} x{n}" for kind, n in verify.items()), verify == {"version": 1, "list": 1}),
        Target("`--show` and `--check` without ids make no request",
               ", ".join(f"`{label}`: {n}" for label, n in silent.items()), not any(silent.values())),
    ]


def _kind(request: str) -> str:
    path = request.split()[1].split("?")[0]
    return "version" if path.endswith("/version") else "list" if path.endswith("/containers/json") else path


def _request_lines(r: Results, counts: Sequence[int], labels: Sequence[str]) -> str:
    """The distinct request lines of each action, with how often they occur."""
    out = []
    for label in labels:
        seen: collections.Counter[str] = collections.Counter()
        for c in counts:
            seen |= collections.Counter(r.requests[c][label].requests)
        text = ", ".join(f"`{line}`" + (f" x{n}" if n > 1 else "") for line, n in seen.items()) or "none"
        out.append(f"- `{label}`: {text}" if label.startswith("-") else f"- {label}: {text}")
    return "\n".join(out) + "\n"


def components_section(r: Results) -> str:
    rows = [[f"`{name}`", f"{s.wall:.3f}", f"{s.rss_mb:.1f}"] for name, s in r.components.items()]
    return ("## Where the time goes\n\n"
            "The building blocks of one invocation, each timed alone as a fresh process "
            "(median s, median peak MB):\n\n" + md_table(["building block", "s", "MB"], rows))


def raw_section(r: Results) -> str:
    rows = []
    for scenario in sorted(r.timings):
        size, count = scenario
        for name, s in r.timings[scenario].items():
            rows.append([f"{r.lines[size]:,}", str(count), name, f"{s.wall:.4f}", f"{s.wall_min:.4f}",
                         f"{s.wall_max:.4f}", f"{s.rss_mb:.1f}"])
    return ("## Raw medians\n\n" + md_table(
        ["lines", "containers", "command", "median s", "min s", "max s", "median MB"], rows))


def header_section(r: Results) -> str:
    env = "\n".join(f"- {key}: {value}" for key, value in r.environment.items())
    minutes, seconds = divmod(round(r.duration), 60)
    return (f"# Benchmark\n\n"
            f"Run {r.started:%Y-%m-%d %H:%M} UTC; reproduce from the repository root with\n\n"
            f"```\n{r.command}\n```\n\n"
            f"It starts everything it needs (containers of `hdc-test-httpd` labelled `hdc-bench=1`, "
            f"generated configs in a temp directory) and removes it all at the end. "
            f"This run took {minutes} min {seconds} s, {r.reps} timed runs per number.\n\n"
            + "".join(f"**Warning: {w}.**\n\n" for w in r.warnings)
            + f"Machine and versions:\n\n{env}\n")


def targets_section(r: Results) -> str:
    rows = [[t.goal, t.measured, "met" if t.met else "**not met**"] for t in targets(r)]
    return "## Targets\n\n" + md_table(["target", "measured (medians)", "verdict"], rows)


METHOD = """\
## Method

- Every number is the median of the timed runs, each a fresh process started by bench.py, after
  one untimed warm-up round; the commands of a scenario run interleaved round-robin so that any
  drift of the machine hits them alike.
- Each child is started by bench/spawn.py, a launcher without site packages, and timed there from
  `posix_spawn` to reaping: interpreter start-up and imports count, as they do for an operator.
  Peak memory is `ru_maxrss` from `os.wait4`, which on Linux is the largest of the child and the
  children it reaped itself, so the tool's peak includes its `haproxy -c` (the largest single
  process, not a sum). exec carries the RSS high-water mark of the replaced address space into
  `ru_maxrss`, so no child can report less than its launcher: that floor is the `/bin/true` row
  of "Where the time goes" (bench.py itself, at tens of MB, would have floored every number).
- The children cache bytecode as an installed tool does (`PYTHONDONTWRITEBYTECODE` is dropped and
  `PYTHONPYCACHEPREFIX` points into the run's temp directory, so the repository is not touched);
  the warm-up round fills that cache.
- `--add` gets the generated config's bytes restored before every run, so every run is a real
  change: lock, read, parse, the Docker lookups (see the request table), render, `haproxy -c` on
  the candidate, `.bak`, fsync, rename. `--check`, `--check ID`, `--verify` and `--show` run on a copy to which the same
  container was added once, so the listener holds one server; `--check ID` is given its short
  id, so it is answered from the file alone.
- The floor (bench/floor.py, same interpreter, same bytes, its own copy restored before every run):
  import docker and augeas, `APIClient.inspect_container` of the container, load the file with
  Augeas using the tool's own lens (`LENS` written to a temp dir; `NO_MODL_AUTOLOAD|NO_STDINC`,
  `/augeas/load/X`), insert one server node after the template comment, `save()`,
  `haproxy -c -f` on the saved file. "floor (section only)" does the same but sends only the
  listener's section through the lens (`text_store`/`text_retrieve`) and splices it back, as the
  tool does; it is shown for reference, the targets use "floor".
- Configs are generated by bench/configs.py: global, defaults, a stats listener, frontends with
  acls routing to three backends of five servers each, comments and blank lines, with the
  `listen dockerha-app1` (`bind 127.0.0.1:<free port>`, `balance roundrobin`, the
  `#DOCKERSERVER` template) in the middle. Each passes `haproxy -c`.
- Containers: `hdc-test-httpd`, published with `-p 127.0.0.1::8080`, started 8 at a time. The 200
  are not in the config; they only exist on the engine.
"""


def write_report(r: Results, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    sections = [header_section(r), targets_section(r), "![wall time against config size](bench.png)\n",
                size_section(r), container_section(r), noise_note(r), requests_section(r), components_section(r),
                METHOD, raw_section(r)]
    path = out / "bench.md"
    kept = path.read_text().partition(STATUS_BEGIN) if path.exists() else ("", "", "")
    (out / "bench.md").write_text("\n".join(sections) + ("\n" + kept[1] + kept[2] if kept[1] else ""))
    plot(r, out / "bench.png")


###############################################################################
# Plot ########################################################################
###############################################################################


def plot(r: Results, path: Path) -> None:
    """Median wall time against config size, log-log: the floor spans 10x, the tool does not."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    xs = [r.lines[s] for s in r.sizes]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for name in PLOTTED:
        ys = [r.timings[(s, 1)][name].wall for s in r.sizes]
        style: dict[str, Any] = {"linestyle": "--", "color": "grey"} if name == "floor (section only)" else {}
        line, = ax.plot(xs, ys, marker="o", label=name, **style)
        offset = {"--add": (8, -12), "floor": (8, 4)}.get(name)
        if offset is not None:
            for x, y in zip(xs, ys):
                ax.annotate(f"{y:.2f} s", (x, y), textcoords="offset points", xytext=offset, fontsize=8,
                            color=line.get_color())
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_yticks([0.1, 0.2, 0.3, 0.5, 1, 2, 3, 5])
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(xs)
    ax.set_xlabel("config size (lines, log scale)")
    ax.set_ylabel("median wall time per invocation (s, log scale)")
    ax.set_title(f"haproxy-docker-config vs floor, 1 running container (median of {r.reps})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
