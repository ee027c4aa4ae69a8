"""Figures with provenance: every generated docs page names the commit it was measured on (one in this
history, from a clean tree), and every figure the README or another page quotes from it is the same."""

from __future__ import annotations

import re
import subprocess
import sys
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from provenance import COMMIT_LINE  # noqa: E402

#: No Docker needed (tests/conftest.py).
DOCKER = False

#: Each generated page and the scripts that write into it (one commit line each).
GENERATED = {"docs/bench.md": ("bench/bench.py", "bench/status_bench.py"), "docs/load.md": ("bench/load.py",),
             "docs/soak.md": ("bench/soak.py",), "docs/bench-swarm.md": ("bench/swarm.py",),
             "docs/churn.md": ("bench/churn.py",), "docs/bench-watch.md": ("bench/watch.py",),
             "docs/bench-routes.md": ("bench/routes.py",)}


def _read(page: str) -> str:
    path = REPO / page
    assert path.exists(), f"{page} is missing: run {GENERATED.get(page, ('its bench script',))[0]}"
    return path.read_text()


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)


@pytest.mark.parametrize("page, script", [(page, script) for page, scripts in GENERATED.items() for script in scripts])
def test_a_generated_page_names_a_commit_of_this_history(page: str, script: str) -> None:
    lines = [m for m in COMMIT_LINE.finditer(_read(page)) if m.group(3) == script]
    rerun = f"re-run `.venv/bin/python {script}` on a clean checkout and commit {page}"
    assert len(lines) == 1, f"{page} has {len(lines)} '- measured at commit: SHA ({script})' lines; {rerun}"
    sha, dirty = lines[0].group(1), lines[0].group(2)
    assert not dirty, f"{page}: {script} measured a tree with uncommitted changes; {rerun}"
    assert _git("merge-base", "--is-ancestor", sha, "HEAD").returncode == 0, (
        f"{page}: {script} ran on commit {sha}, which is not in this history; {rerun}")


def _cell(page: str, table_row: str, column: int) -> str:
    """Column `column` (0: the first) of the table row of `page` whose first cell is `table_row`."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in _read(page).splitlines()
            if line.startswith("|")]
    found = [row for row in rows if row[0] == table_row]
    assert found, f"{page} has no table row {table_row!r}"
    return found[0][column]


def _match(page: str, pattern: str) -> re.Match[str]:
    found = re.search(pattern, _read(page))
    assert found, f"{page} no longer says /{pattern}/; quote the generated page again"
    return found


def _round(value: str, like: str) -> str:
    """A source figure rounded (half up, as a person rounds 0.595) to the decimals of its quote."""
    decimals = len(like.split(".")[1]) if "." in like else 0
    return str(Decimal(value).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP))


#: (quoting page, regex over it with one group per figure, [(source page, row, column)] per group).
BENCH_ROWS = [("docs/performance.md", r"\| `--add` \| ([\d.]+) s \| ([\d.]+) s \| ([\d.]+) s \|",
               [("docs/bench.md", "`--add`", c) for c in (1, 3, 5)]),
              ("docs/performance.md", r"\| floor \| ([\d.]+) s \([\d.]+x\) \| ([\d.]+) s \([\d.]+x\) \| ([\d.]+) s",
               [("docs/bench.md", "floor", c) for c in (1, 3, 5)]),
              ("docs/performance.md", r"\| floor \| [\d.]+ s \(([\d.]+x)\) \| [\d.]+ s \(([\d.]+x)\) \| [\d.]+ s \(([\d.]+x)\)",
               [("docs/bench.md", "`--add` / floor", c) for c in (1, 3, 5)]),
              ("docs/performance.md", r"\| `--check` \(no Docker code imported\) \| ([\d.]+) s \| ([\d.]+) s \| ([\d.]+) s",
               [("docs/bench.md", "`--check`", c) for c in (1, 3, 5)]),
              ("docs/performance.md", r"\| `--show` \(no Docker code imported\) \| ([\d.]+) s \| ([\d.]+) s \| ([\d.]+) s",
               [("docs/bench.md", "`--show`", c) for c in (1, 3, 5)]),
              ("docs/performance.md", r"\| `--verify` \(one list call\) \| ([\d.]+) s \| ([\d.]+) s \| ([\d.]+) s",
               [("docs/bench.md", "`--verify`", c) for c in (1, 3, 5)])]


@pytest.mark.parametrize("page, pattern, sources", BENCH_ROWS, ids=[f"{p}:{s[0][1]}" for p, _, s in BENCH_ROWS])
def test_quoted_table_figures_are_the_generated_ones(page: str, pattern: str, sources: list) -> None:
    quoted = _match(page, pattern).groups()
    for figure, (source, row, column) in zip(quoted, sources):
        generated = _cell(source, row, column)
        if figure.endswith("x"):
            assert figure == generated, f"{page} quotes {figure} for {row}; {source} says {generated}"
        else:
            assert figure == _round(generated, figure), f"{page} quotes {figure} s for {row}; {source} says {generated}"


#: The start of status_bench.py's section of docs/bench.md, for figures of that section only.
STATUS = r"## `--status` on 500 servers[\s\S]*?"
#: (quoting page, regex over it, source page, regex over it): the groups of both must be equal.
SENTENCES = [
    ("docs/performance.md", r"`--add` with 200 containers running: ([\d.]+x) of with 1",
     "docs/bench.md", r"200 containers running within 1\.1x of 1 running \(30-line config\) \| [\d.]+ / [\d.]+ s = ([\d.]+x)"),
    ("docs/performance.md", r"Peak memory ([\d.]+ MB) on\s+the largest config",
     "docs/bench.md", r"on the 15,002-line config \(any action\) \| ([\d.]+ MB)"),
    ("docs/performance.md", r"`--add` 3\s+\(`/version`", "docs/bench.md", r"\| `--add` \| (3) \("),
    ("docs/status-and-metrics.md", r"`--status` takes ([\d.]+) s of CPU", "docs/bench.md",
     STATUS + r"\| `--status` \| [\d.]+ \| [\d.]+ \| ([\d.]+) \|"),
    ("docs/status-and-metrics.md", r"\(`--show` of the same file: ([\d.]+) s\)", "docs/bench.md",
     STATUS + r"\| `--show` \| [\d.]+ \| [\d.]+ \| ([\d.]+) \|"),
    ("docs/status-and-metrics.md", r"wall time was ([\d.]+) s at\s+best", "docs/bench.md",
     STATUS + r"\| `--status` \| [\d.]+ \| ([\d.]+) \|"),
    ("docs/zero-downtime.md", r"A run here: ([\d,]+) requests, (\d+) failures", "docs/load.md",
     r"\| requests \| ([\d,]+) \|\n\| failed requests \| (\d+) \|"),
    ("docs/zero-downtime.md", r"latency p50 ([\d.]+ ms),\s+p99 ([\d.]+ ms)", "docs/load.md",
     r"\| latency p50 / p99 / max \| ([\d.]+ ms) / ([\d.]+ ms) /"),
    ("docs/zero-downtime.md", r"(\d+) rounds, (\d+) hot restarts", "docs/load.md",
     r"\| rounds \(add \+ delete\) \| (\d+) \|\n\| hot restarts \| (\d+) \|"),
    ("docs/sync-and-watch.md", r"first request ([\d.]+ / [\d.]+) s \(median / max\)\s+after `docker run` returned, "
     r"and a stopped one its last ([\d.]+ / [\d.]+) s after", "docs/bench-watch.md",
     r"\| on this host \(2\.6\) \| \d+ \| ([\d.]+ / [\d.]+) \| ([\d.]+ / [\d.]+) \|"),
    ("docs/routes.md", r"bench-routes\.md\), ([\d.]+ / [\d.]+) s\s+\(median / max\)[^,]+,[^,]+,\s+and\s+([\d.]+ / [\d.]+) s",
     "docs/bench-routes.md", r"\| host added on `existing` [^|]+\| \d+ \| ([\d.]+ / [\d.]+) \|[^\n]*\n"
     r"\| host on a backend made for it \| \d+ \| ([\d.]+ / [\d.]+) \|"),
    ("docs/status-and-metrics.md", r"RSS grew by ([\d.]+ MB)", "docs/soak.md", r"\| RSS \| [^|]+ \| [^|]+ \| \+?([\d.]+ MB)"),
    ("docs/swarm.md", r"scale up: task running -> its first request served, median / max \| ([\d.]+ / [\d.]+) s \| "
     r"([\d.]+ / [\d.]+) s", "docs/bench-swarm.md", r"\| scale up \| tool \| \d+ \| ([\d.]+ / [\d.]+) \|[^\n]*\n"
     r"\| scale up \| dns \| \d+ \| ([\d.]+ / [\d.]+) \|"),
]


@pytest.mark.parametrize("page, pattern, source, source_pattern", SENTENCES,
                         ids=[f"{p}:{pat[:30]}" for p, pat, _, _ in SENTENCES])
def test_quoted_figures_are_the_generated_ones(page: str, pattern: str, source: str, source_pattern: str) -> None:
    """Equal as written, or a plain number rounded to the quote's decimals."""
    quoted, generated = _match(page, pattern).groups(), _match(source, source_pattern).groups()
    same = [q == g or (re.fullmatch(r"[\d.]+", q + g) is not None and q == _round(g, q))
            for q, g in zip(quoted, generated)]
    assert all(same), f"{page} quotes {quoted}; {source} says {generated}"
