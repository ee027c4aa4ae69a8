"""The floor: the least work one `--add` needs, done the plainest way, in a fresh process.

bench.py runs this with the same interpreter on the same config bytes as the
tool, so the tool's wall time can be judged against it: whatever the tool
spends above it is its own overhead (argument parsing, locking, the .bak,
fsync, its own imports).

Two variants:
  whole    Augeas loads the whole file through the tool's lens and saves it,
           as a straightforward Augeas program would. This is the floor the
           targets are judged against.
  section  Only the listener's section goes through the lens (text_store /
           text_retrieve) and is spliced back, as the tool itself does. Shown
           for reference: it is the floor of the tool's own approach.

usage: floor.py whole|section LENSDIR LENS CONFIG LISTENER CONTAINER DOCKER_URL HAPROXY
  CONFIG is edited in place: give a copy.
"""

from __future__ import annotations

import re
import subprocess
import sys

import augeas
import docker

PRIVATE_PORT = "8080/tcp"
OPTIONS = "check inter 2000 rise 2 fall 5"
#: The benchmark's generated configs start every section at column 0 with a keyword.
SECTION_START = re.compile(r"^[a-z]", re.MULTILINE)


def server_line(api: docker.APIClient, container: str) -> str:
    """`ID IP:PORT options` for the container, from one inspect."""
    attrs = api.inspect_container(container)
    binding = attrs["NetworkSettings"]["Ports"][PRIVATE_PORT][0]
    return f"{attrs['Id'][:12]} {binding['HostIp'] or '127.0.0.1'}:{binding['HostPort']} {OPTIONS}"


def _insert_after_template(aug: augeas.Augeas, section: str, line: str) -> None:
    template = f"{section}/#comment[. =~ regexp('DOCKERSERVER.*')]"
    aug.insert(template, "server", before=False)
    aug.set(f"{template}/following-sibling::*[1]", line)


def insert_whole(lensdir: str, lens: str, config: str, listener: str, line: str) -> None:
    """Load the whole file with the lens, put one server after the template, save it."""
    flags = augeas.Augeas.NO_MODL_AUTOLOAD | augeas.Augeas.NO_STDINC
    aug = augeas.Augeas(loadpath=lensdir, flags=flags)
    aug.set("/augeas/load/X/lens", lens)
    aug.set("/augeas/load/X/incl", config)
    aug.load()
    error = aug.get(f"/augeas/files{config}/error")
    if error is not None:
        raise SystemExit(f"floor: augeas cannot load {config}: {error}")
    _insert_after_template(aug, f"/files{config}/listen[. = '{listener}']", line)
    aug.save()


def insert_section(lensdir: str, lens: str, config: str, listener: str, line: str) -> None:
    """Send only the listener's section through the lens and splice it back."""
    with open(config, encoding="latin-1") as handle:
        text = handle.read()
    start = re.search(rf"^listen {re.escape(listener)}$", text, re.MULTILINE).start()  # type: ignore[union-attr]
    following = SECTION_START.search(text, text.index("\n", start) + 1)
    end = following.start() if following else len(text)
    flags = augeas.Augeas.NO_MODL_AUTOLOAD | augeas.Augeas.NO_STDINC | augeas.Augeas.NO_LOAD
    aug = augeas.Augeas(loadpath=lensdir, flags=flags)
    aug.set("/in", text[start:end])
    aug.text_store(lens, "/in", "/t")
    _insert_after_template(aug, "/t/listen", line)
    aug.text_retrieve(lens, "/in", "/t", "/out")
    with open(config, "w", encoding="latin-1") as handle:
        handle.write(text[:start] + (aug.get("/out") or "") + text[end:])


def main(argv: list[str]) -> int:
    mode, lensdir, lens, config, listener, container, docker_url, haproxy = argv
    line = server_line(docker.APIClient(base_url=docker_url), container)
    insert = {"whole": insert_whole, "section": insert_section}[mode]
    insert(lensdir, lens, config, listener, line)
    return subprocess.run([haproxy, "-c", "-f", config], stdout=subprocess.DEVNULL).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
