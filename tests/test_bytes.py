"""Any byte but NUL, through the real write path: the installed CLI on a real file, a real container,
haproxy -c validating. Add then delete gives the file back byte for byte (LF, CRLF, no final newline,
latin-1 and UTF-8, every control byte); --show prints the lines' own bytes; a line the lens cannot hold
is one error line naming file and line, exit 3."""

from __future__ import annotations

import subprocess

import pytest
from conftest import CLI, free_port, host_port

#: Every byte a comment may hold: 1-255 but LF and CR, which end lines (a lone CR is there, between bytes).
EVERY_BYTE = bytes(b for b in range(1, 256) if b not in (10, 13))


def config(eol: bytes, final: bool) -> bytes:
    port = free_port()
    lines = [b"global", b"  maxconn 64  # caf\xe9 \xc3\xa9 \x01\x04", b"",
             b"defaults", b"  mode http", b"  timeout connect 2s", b"  timeout client 5s", b"  timeout server 5s",
             b"listen app", b"  bind 127.0.0.1:%d" % port, b"  #DOCKERSERVER $id ${ip}:$port check",
             b"  # every byte: " + EVERY_BYTE, b"  # a lone CR: a\rb \x02\x03",
             b"  server hand 127.0.0.1:1 check  # \x01\x02\x03\x04\x7f\xff",
             b"backend other", b"  # " + EVERY_BYTE]
    return eol.join(lines) + (eol if final else b"")


def tool(path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(CLI), "-f", str(path), "-l", "app", *args], capture_output=True, timeout=60)


@pytest.mark.parametrize("eol, final", [(b"\n", True), (b"\n", False), (b"\r\n", True), (b"\r\n", False)])
def test_add_then_delete_gives_any_bytes_back_and_show_prints_them(tmp_path, make_container, eol, final) -> None:
    path = tmp_path / "haproxy.cfg"
    original = config(eol, final)
    path.write_bytes(original)
    # haproxy 2.6 refuses a last line without LF ("file might have been truncated"): written unvalidated
    validate = () if final else ("--no-validate",)
    warning = b"" if final else b"warning: --no-validate: %s is replaced without haproxy -c\n" % str(path).encode()
    assert subprocess.run(["haproxy", "-c", "-q", "-f", str(path)]).returncode == (0 if final else 1)
    c = make_container()
    added = tool(path, "-a", c.short_id, *validate)
    assert (added.returncode, added.stderr) == (0, warning), added.stderr
    new_line = b"  server %s 127.0.0.1:%d check" % (c.short_id.encode(), host_port(c))
    hand = b"  server hand 127.0.0.1:1 check  # \x01\x02\x03\x04\x7f\xff"
    assert path.read_bytes() == original.replace(hand + eol, hand + eol + new_line + eol)
    shown = tool(path, "-s")
    assert (shown.returncode, shown.stdout) == (0, hand.strip()[len(b"server "):] + b"\n" +
                                                new_line.strip()[len(b"server "):] + b"\n")
    deleted = tool(path, "-d", c.short_id, *validate)
    assert (deleted.returncode, deleted.stderr) == (0, warning)
    assert path.read_bytes() == original


def test_a_line_the_lens_cannot_hold_is_one_error_line_naming_it(tmp_path, make_container) -> None:
    path = tmp_path / "haproxy.cfg"
    original = config(b"\n", True).replace(b"  # a lone CR", b"  bad/word \x01\x04\n  # a lone CR")
    path.write_bytes(original)
    result = tool(path, "-a", make_container().short_id)
    assert (result.returncode, result.stdout) == (3, b"")
    assert result.stderr == (b"ERROR: %s:13: cannot parse 'bad/word \\x01\\x04' (Get did not match entire input); "
                             b"fix this line\n" % str(path).encode())
    assert path.read_bytes() == original
