#!/usr/bin/env python3
"""Write the files the package installs beside its command, all derived from build_parser():

    man/haproxy-docker-config.1          the man page (argparse-manpage), the same content as --help
    completion/haproxy-docker-config     bash completion (argcomplete's shim: it asks the command itself)
    completion/_haproxy-docker-config    zsh completion (the same shim, zsh's #compdef form)

Run it after changing an option or its help (tests/test_ship.py fails until the man page is regenerated):
    .venv/bin/python scripts/build-shell-files.py
"""

from __future__ import annotations

import argparse
import datetime
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import haproxy_docker_config as hdc  # noqa: E402

PROG = "haproxy-docker-config"
MANPAGE = ROOT / "man" / f"{PROG}.1"
BASH = ROOT / "completion" / PROG
ZSH = ROOT / "completion" / f"_{PROG}"
SEE_ALSO = (r"\fBhaproxy\fR(1), \fBdocker\fR(1). The reference, one page per topic (usage, networks, Swarm, "
            r"sync and watch, zero\-downtime changes, ...), is docs/ in the source distribution.")


def _troff(text: str) -> str:
    """Plain text as troff: backslashes and minus signs escaped, no line starting with a control character."""
    text = text.replace("\\", r"\e").replace("-", r"\-")
    return "\n".join(rf"\&{line}" if line.startswith((".", "'")) else line for line in text.splitlines())


def manpage(date: str) -> str:
    """The man page of this checkout's parser, dated `date` (YYYY-MM-DD)."""
    from argparse_manpage.manpage import Manpage

    parser = hdc.build_parser()
    epilog, parser.epilog = parser.epilog, None  # argparse-manpage would refill it: it is a table
    page = Manpage(parser, format="pretty", _data={
        "project_name": PROG, "version": hdc.__version__, "date": date, "manual_title": "User Commands",
        "description": "keep HAProxy listen/backend sections in step with Docker containers"})
    text = str(page)
    helps = [a for a in parser._actions if isinstance(a, argparse._HelpAction)]  # noqa: SLF001
    help_entry = "".join(f".TP\n\\fB{_troff(a.option_strings[0])}\\fR\n{_troff(a.help)}\n\n" for a in helps)
    text = text.replace(".SH OPTIONS\n", ".SH OPTIONS\n" + help_entry, 1)  # argparse-manpage leaves --help out
    title, _, table = epilog.partition("\n")
    status = f".SH {title.rstrip(':').upper()}\n.nf\n{_troff(table)}\n.fi\n.SH SEE ALSO\n{SEE_ALSO}\n"
    return text + status


def completion(shell: str) -> str:
    import argcomplete

    return argcomplete.shellcode([PROG], shell=shell)


def manpage_date(page: str) -> str:
    """The date in the .TH line of a man page."""
    found = re.search(r'^\.TH \S+ "\d+" "([0-9\\-]+)"', page, re.MULTILINE)
    return found.group(1).replace("\\-", "-") if found else ""


def main() -> None:
    MANPAGE.parent.mkdir(exist_ok=True)
    BASH.parent.mkdir(exist_ok=True)
    old = MANPAGE.read_text() if MANPAGE.exists() else ""
    page = manpage(manpage_date(old) or datetime.date.today().isoformat())
    if page != old:  # dated today only when its content changes
        page = manpage(datetime.date.today().isoformat())
    MANPAGE.write_text(page)
    BASH.write_text(completion("bash"))
    ZSH.write_text(completion("zsh"))
    for path in (MANPAGE, BASH, ZSH):
        print(f"build-shell-files: wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
