"""The commit a benchmark ran on: every generated page (docs/bench.md, soak.md, bench-swarm.md, load.md)
carries one line `- measured at commit: SHA (bench/SCRIPT.py)` per script that wrote into it, and
tests/test_docs.py fails when that commit is not in the history or figures quoted elsewhere differ."""

from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: `- measured at commit: SHA (bench/x.py)`, with " uncommitted changes" marked when allowed.
COMMIT_LINE = re.compile(r"^- measured at commit: ([0-9a-f]{40})( with uncommitted changes)? \((bench/[\w.]+\.py)\)$",
                         re.MULTILINE)


class DirtyTree(RuntimeError):
    """The checkout differs from its commit: figures measured on it could not be traced to a commit."""


def _git(*args: str) -> str:
    try:
        proc = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise DirtyTree("git is not installed: the figures could not name their commit") from None
    if proc.returncode != 0:
        raise DirtyTree(f"git {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def commit(script: str, allow_dirty: bool) -> str:
    """What follows `- measured at commit: ` on the page: HEAD and the script. A tree with changes outside
    docs/ is refused (or, when allowed, marked: tests/test_docs.py fails on such a page)."""
    head = _git("rev-parse", "HEAD").strip()
    changed = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)docs").strip()
    if changed and not allow_dirty:
        raise DirtyTree(f"uncommitted changes ({', '.join(ln[3:] for ln in changed.splitlines()[:5])}): commit "
                        f"first, so that the figures name the commit they were measured on, or give --allow-dirty")
    return f"{head}{' with uncommitted changes' if changed else ''} (bench/{script})"


def add_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-dirty", action="store_true",
                        help="measure a checkout with uncommitted changes (the page says so; the docs check fails on it)")
