"""Run one command; report its wall time, peak RSS and exit code on a given fd.

usage: python -I -S spawn.py FD COMMAND [ARG...]

Why a separate, minimal process: on Linux, exec records the RSS high-water
mark of the address space it replaces in the new program's `ru_maxrss`, and
after a (v)fork that address space is the parent's. A command started
straight from bench.py (tens of MB with docker, augeas, matplotlib loaded)
would therefore never report less than bench.py's own peak. This launcher
starts without site packages, so the floor it imposes is a few MB, and it
is measured (/bin/true) and shown in docs/bench.md.
"""

import os
import sys
import time


def main() -> None:
    fd, argv = int(sys.argv[1]), sys.argv[2:]
    start = time.perf_counter()
    pid = os.posix_spawnp(argv[0], argv, os.environ)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    os.write(fd, f"{wall!r} {usage.ru_maxrss} {os.waitstatus_to_exitcode(status)}".encode())


if __name__ == "__main__":
    main()
