"""End to end: the installed console script, real containers, a real haproxy serving HTTP."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import free_port, haproxy_pids, http_get, kill_haproxy_running, run_cli, write_config

SYSTEM_CFG = Path("/etc/haproxy/haproxy.cfg")


def answers(port: int, n: int = 24) -> Counter:
    """Which containers answer n requests through haproxy (each page names its container)."""
    return Counter(http_get(port) for _ in range(n))


def wait_answers(port: int, expected: set[str], timeout: float) -> Counter:
    """Requests until exactly `expected` answer (or `timeout`, then what answered last)."""
    deadline = time.monotonic() + timeout
    while True:
        seen = answers(port)
        if set(seen) == expected or time.monotonic() > deadline:
            return seen
        time.sleep(0.1)


def test_the_seed_example_session(tmp_path, make_container, haproxy) -> None:
    c1, c2, c3, c4 = (make_container() for _ in range(4))
    # As in the original: no stats socket, so every change goes through a hot restart.
    cfg = write_config(tmp_path, template="<%= id %> <%= ip %>:<%= port %> check inter 2000 rise 2 fall 5",
                       stats_socket=False)
    haproxy(cfg)
    base = ["-f", str(cfg.path), "-l", "dockerha-app1"]

    added = run_cli(*base, "--add", f"{c1.short_id},{c2.short_id},{c3.short_id}", "-h", str(cfg.pidfile))
    assert (added.returncode, added.stderr) == (0, "")
    assert [ln.split("\t")[1] for ln in added.stdout.splitlines()] == ["balanced"] * 3
    assert set(wait_answers(cfg.port, {c1.short_id, c2.short_id, c3.short_id}, 30)) == {
        c1.short_id, c2.short_id, c3.short_id}

    checked = run_cli(*base, "-c", "-v")
    assert (checked.returncode, checked.stdout) == (
        0, "".join(f"{c.short_id}        \tbalanced\n" for c in (c1, c2, c3)))
    not_balanced = run_cli(*base, "-c", c4.short_id)
    assert (not_balanced.returncode, not_balanced.stdout) == (1, f"{c4.short_id}        \tnot_balanced\n")

    deleted = run_cli(*base, "--delete", c3.short_id, "--show", "-h", str(cfg.pidfile))
    assert deleted.returncode == 0
    assert [ln.split()[0] for ln in deleted.stdout.splitlines()] == [c1.short_id, c2.short_id]
    assert set(wait_answers(cfg.port, {c1.short_id, c2.short_id}, 30)) == {c1.short_id, c2.short_id}
    assert set(answers(cfg.port, 40)) == {c1.short_id, c2.short_id}

    verified = run_cli(*base, "--verify")
    assert (verified.returncode, verified.stdout) == (
        0, f"{c1.short_id}        \tfound\n{c2.short_id}        \tfound\n")
    c2.kill()
    verified = run_cli(*base, "--verify")
    assert (verified.returncode, verified.stdout) == (
        1, f"{c1.short_id}        \tfound\n{c2.short_id}        \tnot_found\n")


def test_hot_restart_replaces_the_old_processes(tmp_path, make_container, haproxy) -> None:
    cfg = write_config(tmp_path)
    old = set(haproxy(cfg))
    c = make_container()
    result = run_cli("-f", str(cfg.path), "-l", "dockerha-app1", "-a", c.short_id, "-h", str(cfg.pidfile),
                     "--no-runtime")
    assert result.returncode == 0, result.stderr
    new = set(haproxy_pids(cfg))
    assert new and not new & old
    assert http_get(cfg.port) == c.short_id


def test_second_add_does_not_restart(tmp_path, make_container, haproxy) -> None:
    cfg = write_config(tmp_path)
    haproxy(cfg)
    c = make_container()
    args = ["-f", str(cfg.path), "-l", "dockerha-app1", "-a", c.short_id, "-h", str(cfg.pidfile), "--json"]
    assert run_cli(*args).returncode == 0
    pids = haproxy_pids(cfg)
    again = run_cli(*args)
    assert again.returncode == 0 and '"restarted": false' in again.stdout and '"changed": false' in again.stdout
    assert haproxy_pids(cfg) == pids


def test_stale_pidfile_is_a_clear_error_and_keeps_the_validated_change(tmp_path, make_container) -> None:
    cfg = write_config(tmp_path)
    cfg.pidfile.write_text("999999\n")
    c = make_container()
    result = run_cli("-f", str(cfg.path), "-l", "dockerha-app1", "-a", c.short_id, "-h", str(cfg.pidfile))
    assert result.returncode == 5
    assert result.stderr == f"ERROR: pidfile {cfg.pidfile} names no running haproxy; start haproxy or use -r\n"
    assert f"server {c.short_id} " in cfg.path.read_text()


def test_failed_action_never_restarts(tmp_path, haproxy) -> None:
    cfg = write_config(tmp_path)
    pids = haproxy(cfg)
    result = run_cli("-f", str(cfg.path), "-l", "dockerha-app1", "-a", "nosuchcontainer", "-h", str(cfg.pidfile))
    assert result.returncode == 4
    assert haproxy_pids(cfg) == pids


def test_python_dash_m_and_help() -> None:
    result = subprocess.run([sys.executable, "-m", "haproxy_docker_config", "--help"],
                            capture_output=True, text=True)
    assert result.returncode == 0
    assert "-h [PIDFILE], --hot-restart [PIDFILE]" in result.stdout
    assert "5  haproxy rejected the change, or its restart failed" in result.stdout


@pytest.fixture
def system_haproxy():
    """Debian's own haproxy service on its own config, restored and stopped afterwards."""
    assert subprocess.run(["service", "haproxy", "status"], capture_output=True).returncode != 0, \
        "a system haproxy is running; this test restarts it, so stop it first"
    backup = SYSTEM_CFG.read_bytes()
    port = free_port()
    SYSTEM_CFG.write_bytes(backup + (
        f"\nlisten hdc-system-test\n    bind 127.0.0.1:{port}\n    mode http\n    balance roundrobin\n"
        "    #DOCKERSERVER $id ${ip}:$port\n").encode())
    try:
        yield port
        subprocess.run(["service", "haproxy", "stop"], capture_output=True)
    finally:  # even when `service` is missing or fails: no haproxy left on it, the system's config back
        kill_haproxy_running(SYSTEM_CFG)
        SYSTEM_CFG.write_bytes(backup)
        for leftover in SYSTEM_CFG.parent.glob("haproxy.cfg.bak"):
            leftover.unlink()


def test_restart_goes_through_the_service_manager(system_haproxy, make_container) -> None:
    c = make_container()
    result = run_cli("-l", "hdc-system-test", "-a", c.short_id, "-r")
    assert result.returncode == 0, result.stderr
    assert "haproxy" in result.stderr  # the service manager's own words, on stderr
    assert http_get(system_haproxy) == c.short_id


def test_failed_service_restart_is_exit_5(system_haproxy, make_container) -> None:
    c = make_container()
    with socket.socket() as blocker:  # the listener's port is taken: haproxy cannot start
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        blocker.bind(("127.0.0.1", system_haproxy))
        blocker.listen()
        result = run_cli("-l", "hdc-system-test", "-a", c.short_id, "-r")
    assert result.returncode == 5
    assert re.fullmatch(r"ERROR: service haproxy restart failed with exit \d+; see the lines above",
                        result.stderr.splitlines()[-1])
    assert f"server {c.short_id} " in SYSTEM_CFG.read_text()  # validated, so the change is kept


def test_dry_run_neither_writes_nor_restarts(tmp_path, make_container, haproxy) -> None:
    cfg = write_config(tmp_path)
    pids = haproxy(cfg)
    before = cfg.path.read_bytes()
    result = run_cli("-f", str(cfg.path), "-l", "dockerha-app1", "-a", make_container().short_id,
                     "-h", str(cfg.pidfile), "--dry-run", "--json")
    assert result.returncode == 0 and '"changed": true' in result.stdout and '"restarted": false' in result.stdout
    assert cfg.path.read_bytes() == before and haproxy_pids(cfg) == pids
