"""Changes applied to a running haproxy through its Runtime API, and seamless reloads."""

from __future__ import annotations

import json
import socket
import subprocess
import time

import pytest
from pathlib import Path

from conftest import (CLI, RUN, ask_haproxy, haproxy_pids, host_port, http_get, kill_haproxy_running,
                      run_cli, wait_until, write_config)

SEAMLESS = "expose-fd listeners"


def cli(cfg, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("-f", str(cfg.path), "-l", "dockerha-app1", *args)


def served_by(port: int, n: int = 12) -> set[str]:
    return {http_get(port) for _ in range(n)}


def test_add_and_delete_apply_live_without_a_restart(tmp_path, make_container, haproxy) -> None:
    cfg = write_config(tmp_path)
    pids = haproxy(cfg)
    a, b = make_container(), make_container()
    added = cli(cfg, "-a", f"{a.short_id},{b.short_id}", "-h", str(cfg.pidfile), "--json")
    doc = json.loads(added.stdout)
    assert (added.returncode, doc["runtime"], doc["restarted"]) == (0, "applied", False)
    assert served_by(cfg.port) == {a.short_id, b.short_id}  # at once: no reload happened
    deleted = cli(cfg, "-d", b.short_id, "--json")
    assert deleted.returncode == 0 and json.loads(deleted.stdout)["runtime"] == "applied", deleted.stderr
    assert served_by(cfg.port, 20) == {a.short_id}
    assert haproxy_pids(cfg) == pids
    assert [ln.split()[1] for ln in cfg.path.read_text().splitlines() if ln.strip().startswith("server ")] == [a.short_id]


def test_verbose_shows_each_runtime_command_and_answer(tmp_path, make_container, haproxy) -> None:
    cfg = write_config(tmp_path)
    haproxy(cfg)
    c = make_container()
    result = cli(cfg, "-a", c.short_id, "-v")
    assert result.returncode == 0, result.stderr
    target = f"dockerha-app1/{c.short_id}"
    assert f"runtime> add server {target} 127.0.0.1:{host_port(c)} check inter 2000 rise 2 fall 5\n" \
           "haproxy< New server registered.\n" in result.stderr
    assert f"runtime> enable health {target}\nhaproxy< (ok)\nruntime> enable server {target}\n" in result.stderr


def test_readding_a_recreated_container_updates_the_live_address(tmp_path, make_container, haproxy) -> None:
    cfg = write_config(tmp_path, template="$name ${ip}:$port check inter 500")
    haproxy(cfg)
    name = f"hdc-recreated-{RUN}"  # unique: another suite may share this dockerd
    first = make_container(name=name)
    assert cli(cfg, "-a", name).returncode == 0
    first.remove(force=True)
    deadline = time.monotonic() + 10  # haproxy's checks find the old address dead: the server is DOWN
    while "DOWN" not in ask_haproxy(cfg.sock, "show stat dockerha-app1 4 -1"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    second = make_container(name=name)
    assert host_port(second) != host_port(first)
    result = cli(cfg, "-a", name, "-v")
    assert result.returncode == 0, result.stderr
    assert f"runtime> set server dockerha-app1/{name} addr 127.0.0.1 port {host_port(second)}" in result.stderr
    assert http_get(cfg.port) == second.short_id
    assert cfg.path.read_text().count(f"server {name} ") == 1


def test_a_keyword_refused_live_without_h_says_reload_needed(tmp_path, make_container, haproxy) -> None:
    cfg = write_config(tmp_path, template="$id ${ip}:$port check cookie $id")
    pids = haproxy(cfg)
    c = make_container()
    result = cli(cfg, "-a", c.short_id)
    assert result.returncode == 5
    assert result.stderr.startswith(f"ERROR: haproxy refused 'add server dockerha-app1/{c.short_id} ")
    assert result.stderr.endswith(f"; {cfg.path} is updated: reload haproxy to apply it, or give -h\n")
    assert f"server {c.short_id} " in cfg.path.read_text() and haproxy_pids(cfg) == pids


def test_a_keyword_refused_live_falls_back_to_hot_restart(tmp_path, make_container, haproxy) -> None:
    cfg = write_config(tmp_path, template="$id ${ip}:$port check cookie $id")
    pids = haproxy(cfg)
    c = make_container()
    result = cli(cfg, "-a", c.short_id, "-h", str(cfg.pidfile), "--json")
    doc = json.loads(result.stdout)
    assert (result.returncode, doc["runtime"], doc["restarted"]) == (0, "refused", True)
    assert "restarting haproxy instead" in result.stderr
    assert set(haproxy_pids(cfg)).isdisjoint(pids)
    assert http_get(cfg.port) == c.short_id


def test_a_backend_without_dynamic_balancing_falls_back(tmp_path, make_container, haproxy) -> None:
    cfg = write_config(tmp_path)
    cfg.path.write_text(cfg.path.read_text().replace("balance roundrobin", "balance source"))
    haproxy(cfg)
    c = make_container()
    result = cli(cfg, "-a", c.short_id, "-h", str(cfg.pidfile), "--json")
    assert result.returncode == 0 and json.loads(result.stdout)["runtime"] == "refused"
    assert http_get(cfg.port) == c.short_id


def test_no_haproxy_on_the_socket_only_writes_the_file(tmp_path, make_container) -> None:
    cfg = write_config(tmp_path)  # a stats socket is configured, but no haproxy runs
    c = make_container()
    result = cli(cfg, "-a", c.short_id, "--json")
    assert result.returncode == 0 and json.loads(result.stdout)["runtime"] == "unavailable"
    assert f"server {c.short_id} " in cfg.path.read_text()


def test_no_runtime_restarts_instead(tmp_path, make_container, haproxy) -> None:
    cfg = write_config(tmp_path)
    pids = haproxy(cfg)
    c = make_container()
    result = cli(cfg, "-a", c.short_id, "--no-runtime", "-h", str(cfg.pidfile), "--json")
    doc = json.loads(result.stdout)
    assert (result.returncode, doc["runtime"], doc["restarted"]) == (0, None, True), result.stderr
    assert set(haproxy_pids(cfg)).isdisjoint(pids)


def test_hot_restart_passes_the_listeners_with_x(tmp_path, make_container, haproxy) -> None:
    cfg = write_config(tmp_path)
    cfg.path.write_text(cfg.path.read_text().replace("level admin", f"level admin {SEAMLESS}"))
    haproxy(cfg)
    c = make_container()
    old = set(haproxy_pids(cfg))
    result = cli(cfg, "-a", c.short_id, "--no-runtime", "-h", str(cfg.pidfile), "-v")
    assert result.returncode == 0, result.stderr
    new = set(haproxy_pids(cfg))
    assert new and new.isdisjoint(old)
    for pid in new:  # the new haproxy's own command line, read from /proc
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        assert argv[argv.index("-x") + 1] == str(cfg.sock) and {str(p) for p in old} <= set(argv[argv.index("-sf"):])
    # the version as Debian's package database has it, not as the tool reads it from haproxy -v
    package = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "haproxy"], capture_output=True, text=True)
    assert package.returncode == 0 and package.stdout
    assert f"--no-runtime: the change reaches haproxy {package.stdout} (" in result.stderr  # the message's format
    assert http_get(cfg.port) == c.short_id


def master_reloads(sock) -> tuple[int, int, set[int]]:
    """(reloads, failed reloads, worker pids) as the master itself says them (`show proc` on its CLI); a
    master that is re-executing for a reload drops or stalls its CLI's connections: asked again then."""
    for _ in range(100):
        try:
            with socket.socket(socket.AF_UNIX) as conn:
                conn.settimeout(2)
                conn.connect(str(sock))
                conn.sendall(b"show proc\n")
                data = b""
                while not data.endswith(b"\n\n"):  # the master keeps the connection: an empty line ends it
                    data += conn.recv(65536) or b"\n\n"
                answer = data.decode()
            if " master " in answer:
                break
        except OSError:
            pass
        time.sleep(0.1)
    else:
        pytest.fail(f"the master on {sock} never answered show proc")
    master = next(line.split() for line in answer.splitlines() if " master " in f" {line} ")
    workers = {int(line.split()[0]) for line in answer.splitlines() if " worker " in f" {line} "}
    return int(master[2]), int(master[4].rstrip("]")), workers


def test_master_worker_haproxy_is_reloaded_through_its_master_and_a_failed_reload_exits_5(
        tmp_path, make_container) -> None:
    cfg = write_config(tmp_path)
    master_sock = tmp_path / "master.sock"
    try:
        subprocess.run(["haproxy", "-W", "-D", "-S", str(master_sock), "-f", str(cfg.path), "-p", str(cfg.pidfile)],
                       check=True)
        wait_until(lambda: haproxy_pids(cfg) and master_sock.exists(), 30)  # the daemonized master writes it
        master = haproxy_pids(cfg)[0]
        reloads, failed, workers = master_reloads(master_sock)
        c = make_container()
        result = cli(cfg, "-a", c.short_id, "--no-runtime", "-h", str(cfg.pidfile))
        assert result.returncode == 0, result.stderr
        wait_until(lambda: master_reloads(master_sock)[0] == reloads + 1, 30)  # one reload, as the master counts
        assert master_reloads(master_sock)[1] == failed and master_reloads(master_sock)[2].isdisjoint(workers)
        wait_until(lambda: served_or_none(cfg.port) == c.short_id, 30)
        assert haproxy_pids(cfg) == [master]
        # a reload the master fails: haproxy -c accepts an address no interface has, binding it fails
        cfg.path.write_text(cfg.path.read_text().replace("    balance roundrobin\n",
                                                         "    balance roundrobin\n    bind 192.0.2.1:80\n"))
        reloads, failed, workers = master_reloads(master_sock)
        second = make_container()
        result = cli(cfg, "-a", second.short_id, "--no-runtime", "-h", str(cfg.pidfile))
        assert result.returncode == 5, result.stderr
        assert result.stderr.startswith(f"ERROR: haproxy master {master} started no new worker after SIGUSR2; "
                                        "the old workers keep serving"), result.stderr
        assert all(Path(f"/proc/{pid}").exists() for pid in workers)  # the old worker keeps serving
        assert served_or_none(cfg.port) == c.short_id
    finally:  # the master and its workers, whatever happened
        kill_haproxy_running(cfg.path)


def served_or_none(port: int) -> str | None:
    try:
        return http_get(port)
    except OSError:
        return None


def _admin_state(cfg, server: str) -> str | None:
    rows = [line.split() for line in ask_haproxy(cfg.sock, "show servers state dockerha-app1").splitlines()[2:]]
    return next((row[6] for row in rows if len(row) > 6 and row[3] == server), None)


@pytest.mark.parametrize("accepted", [True, False])
def test_a_leaving_server_gets_no_request_while_the_change_is_validated(tmp_path, make_container, haproxy,
                                                                        accepted: bool) -> None:
    cfg = write_config(tmp_path)
    stays, leaves = make_container(), make_container()
    assert cli(cfg, "-a", f"{stays.short_id},{leaves.short_id}").returncode == 0
    haproxy(cfg)
    slow = tmp_path / "slow-haproxy"  # validation that takes a while, as docker exec does; accepts or rejects
    verdict = 'exec haproxy "$@"' if accepted else 'case "$3" in *.tmp) echo "[ALERT] rejected"; exit 1;; esac; exec haproxy "$@"'
    slow.write_text(f"#!/bin/sh\nsleep 1.5\n{verdict}\n")
    slow.chmod(0o755)
    before = cfg.path.read_bytes()
    proc = subprocess.Popen([str(CLI), "-f", str(cfg.path), "-l", "dockerha-app1", "-d", leaves.short_id,
                             "--haproxy-bin", str(slow)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while _admin_state(cfg, leaves.short_id) == "0":  # drained before the file changes
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    assert cfg.path.read_bytes() == before and {http_get(cfg.port) for _ in range(10)} == {stays.short_id}
    _, err = proc.communicate(timeout=30)
    if accepted:
        assert proc.returncode == 0 and _admin_state(cfg, leaves.short_id) is None
    else:
        assert proc.returncode == 5 and err.startswith(f"ERROR: haproxy rejects the changed {cfg.path}")
        assert cfg.path.read_bytes() == before and _admin_state(cfg, leaves.short_id) == "0"
