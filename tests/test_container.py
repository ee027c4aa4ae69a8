"""HAProxy in a container, bind-mounted configs, server state across reloads, a read-only Docker socket."""

from __future__ import annotations

import json
import ipaddress
import os
import subprocess
import time

import pytest
from conftest import CLI, LABEL, RUN, ask_haproxy, host_port, http_get, run_cli, serve_more, wait_until, write_config

import load  # bench/load.py (conftest puts bench/ on the path)

HAPROXY_IMAGE = "hdc-haproxy:latest"


def cli(cfg_path, *args: str, listener: str = "web") -> subprocess.CompletedProcess[str]:
    return run_cli("-f", str(cfg_path), "-l", listener, *args)


def test_a_bind_mounted_config_is_rewritten_in_place(tmp_path, docker_client, make_container) -> None:
    cfg = write_config(tmp_path, listener="web")
    viewer = docker_client.containers.run("hdc-test-httpd:latest", detach=True, labels={LABEL: RUN},
                                          volumes={str(cfg.path): {"bind": "/etc/seen.cfg", "mode": "ro"}})
    try:
        inode = cfg.path.stat().st_ino
        for c in (make_container(), make_container()):
            result = cli(cfg.path, "-a", c.short_id, "-v")
            assert result.returncode == 0, result.stderr
            assert f"in place, because container {viewer.name} bind-mounts it" in result.stderr
            seen = viewer.exec_run(["cat", "/etc/seen.cfg"]).output.decode()
            assert seen == cfg.path.read_text() and f"server {c.short_id} " in seen
        assert cfg.path.stat().st_ino == inode and cfg.path.with_name("haproxy.cfg.bak").exists()
    finally:
        viewer.remove(force=True)


def test_hard_links_and_write_in_place(tmp_path, make_container) -> None:
    cfg = write_config(tmp_path, listener="web")
    other = tmp_path / "other-name.cfg"
    os.link(cfg.path, other)
    inode = cfg.path.stat().st_ino
    result = cli(cfg.path, "-a", make_container().short_id, "-v")
    assert result.returncode == 0 and cfg.path.stat().st_ino == inode, result.stderr  # in place: same inode
    assert "in place, because it has 2 hard links" in result.stderr
    assert other.read_text() == cfg.path.read_text()
    os.unlink(other)
    result = cli(cfg.path, "-a", make_container().short_id, "-v", "--write-in-place")
    assert result.returncode == 0 and cfg.path.stat().st_ino == inode, result.stderr
    assert "in place, because --write-in-place" in result.stderr
    result = cli(cfg.path, "-a", make_container().short_id, "-v")
    assert result.returncode == 0 and cfg.path.stat().st_ino != inode, result.stderr  # renamed over: a new inode
    assert "by atomic rename" in result.stderr


@pytest.fixture
def haproxy_container(tmp_path, docker_client):
    """haproxy -W as PID 1 in a container, config bind-mounted read-only, stats socket on a mounted dir."""
    ipam = docker_client.networks.get("bridge").attrs["IPAM"]["Config"][0]
    # Some engines list no Gateway for the default bridge: it is then the subnet's first address.
    gateway = ipam.get("Gateway") or str(next(ipaddress.ip_network(ipam["Subnet"]).hosts()))
    run = tmp_path / "run"
    run.mkdir()
    cfg = write_config(tmp_path, listener="web", stats_socket=False)
    text = cfg.path.read_text().replace("global\n", "global\n    stats socket /run/haproxy/admin.sock mode 600 level admin\n")
    cfg.path.write_text(text.replace(f"bind 127.0.0.1:{cfg.port}", "bind :8080"))
    container = docker_client.containers.run(
        HAPROXY_IMAGE, detach=True, labels={LABEL: RUN}, ports={"8080/tcp": ("127.0.0.1", cfg.port)},
        volumes={str(cfg.path): {"bind": "/usr/local/etc/haproxy/haproxy.cfg", "mode": "ro"},
                 str(run): {"bind": "/run/haproxy", "mode": "rw"}})
    deadline = time.monotonic() + 10
    while not (run / "admin.sock").exists():
        assert time.monotonic() < deadline, container.logs().decode()
        time.sleep(0.05)
    yield cfg, container, gateway, run / "admin.sock"
    container.remove(force=True)


def test_haproxy_in_a_container_follows_adds_deletes_and_reloads(haproxy_container, make_container) -> None:
    cfg, container, gateway, sock = haproxy_container
    a, b, c = (make_container(host_ip="") for _ in range(3))  # reached through the bridge's gateway
    via = ["--haproxy-container", container.name, "--host-ip", gateway]
    outcome = load.Outcome()
    reloads = lambda: container.logs().decode().count("Loading success")  # noqa: E731 (once at start, once a reload)
    wait_until(lambda: reloads() >= 1, 30, lambda: container.logs().decode())  # its start is logged too
    started = reloads()
    first = cli(cfg.path, "-a", a.short_id, *via, "-h", "--no-runtime")
    assert first.returncode == 0, first.stderr
    wait_until(lambda: reloads() == started + 1, 30, lambda: container.logs().decode())  # the master's own word
    wait_until(lambda: _safe_get(cfg.port) == a.short_id, 30)
    with load.Load(cfg.port, 3, outcome):
        assert cli(cfg.path, "-a", b.short_id, *via, "-h", "--no-runtime").returncode == 0
        wait_until(lambda: b.short_id in outcome.first_served, 30)
        live = cli(cfg.path, "-a", c.short_id, *via, "--runtime-socket", str(sock), "--json")
        assert live.returncode == 0 and json.loads(live.stdout)["runtime"] == "applied", live.stderr
        wait_until(lambda: c.short_id in outcome.first_served, 30)
        assert cli(cfg.path, "-d", a.short_id, *via, "--runtime-socket", str(sock)).returncode == 0
        serve_more(outcome, 100)
        assert cli(cfg.path, "-d", b.short_id, *via, "-h", "--no-runtime").returncode == 0
        wait_until(lambda: reloads() == started + 3, 30, lambda: container.logs().decode())  # a, b in, b out
        serve_more(outcome, 100)
    assert outcome.failures == [] and len(outcome.latencies) > 100
    assert {a.short_id, b.short_id, c.short_id} <= set(outcome.first_served)
    assert {_safe_get(cfg.port) for _ in range(10)} == {c.short_id}


def _safe_get(port: int) -> str | None:
    try:
        return http_get(port)
    except OSError:
        return None


def test_the_container_validates_the_change(haproxy_container, make_container) -> None:
    cfg, container, gateway, _ = haproxy_container
    cfg.path.write_text(cfg.path.read_text().replace("check inter 2000 rise 2 fall 5", "check bogus-keyword"))
    before = cfg.path.read_bytes()
    env_without_haproxy = {"PATH": f"{CLI.parent}:/usr/bin:/bin"}
    result = run_cli("-f", str(cfg.path), "-l", "web", "-a", make_container(host_ip="").short_id,
                     "--haproxy-container", container.name, "--host-ip", gateway, env=env_without_haproxy)
    assert result.returncode == 5
    assert result.stderr.splitlines()[0] == (f"ERROR: haproxy rejects the changed {cfg.path}; "
                                             "the file is left untouched")
    assert "unknown keyword 'bogus-keyword'" in result.stderr and str(cfg.path) in result.stderr
    assert cfg.path.read_bytes() == before


def test_a_server_down_before_a_reload_gets_no_request_after_it(tmp_path, make_container, haproxy) -> None:
    cfg = write_config(tmp_path, listener="web", template="$id ${ip}:$port check inter 30s")
    state = tmp_path / "servers.state"
    text = cfg.path.read_text().replace("global\n", f"global\n    server-state-file {state}\n")
    cfg.path.write_text(text.replace("defaults\n", "defaults\n    load-server-state-from-file global\n"))
    alive, down = make_container(), make_container()
    assert cli(cfg.path, "-a", f"{alive.short_id},{down.short_id}").returncode == 0
    haproxy(cfg)
    ask_haproxy(cfg.sock, f"set server web/{down.short_id} health down")  # known down (it answers, but is not to be used)
    assert _op_state(cfg.sock, down.short_id) == "0"
    other = make_container()
    result = cli(cfg.path, "-a", other.short_id, "-h", str(cfg.pidfile), "--no-runtime")
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in state.read_text().splitlines()[2:]]  # be_id be_name srv_id srv_name ...
    assert any(row[1::2][:2] == ["web", down.short_id] for row in rows), rows  # the file haproxy loads holds it
    answers = [_safe_get(cfg.port) for _ in range(30)]
    assert set(answers) == {alive.short_id, other.short_id}  # never the server that was down
    assert _op_state(cfg.sock, down.short_id) == "0"


def _op_state(sock_path, server: str) -> str | None:
    rows = [line.split() for line in ask_haproxy(sock_path, "show servers state web").splitlines()[2:]]
    return next((row[5] for row in rows if len(row) > 5 and row[3] == server), None)


def test_a_read_only_docker_socket_is_enough(tmp_path, make_container, read_only_engine) -> None:
    cfg = write_config(tmp_path, listener="web")
    a = make_container(labels={"haproxy-docker-config.listen": "web"})
    url = ["--docker-url", read_only_engine.url]
    added = cli(cfg.path, "-a", a.short_id, *url)
    assert added.returncode == 0, added.stderr
    assert cli(cfg.path, "-c", a.short_id, *url).returncode == 0
    verified = cli(cfg.path, "--verify", *url)
    assert (verified.returncode, verified.stdout) == (0, f"{a.short_id}        \tfound\n")
    b = make_container(labels={"haproxy-docker-config.listen": "web"})
    synced = cli(cfg.path, "--sync", *url)
    assert synced.returncode == 0, synced.stderr
    assert synced.stdout == "%-20s\tadded\t127.0.0.1:%d\n" % (b.short_id, host_port(b))
    assert read_only_engine.refused == []
    # the proxy is real: validating inside a container needs a write (POST exec), and is refused
    c = make_container()
    before = cfg.path.read_bytes()
    refused = cli(cfg.path, "-a", c.short_id, *url, "--haproxy-container", a.name)
    assert refused.returncode == 5 and refused.stderr.startswith(f"ERROR: cannot run haproxy -c in container {a.name}")
    assert read_only_engine.refused and cfg.path.read_bytes() == before


def test_r_restarts_the_haproxy_container(haproxy_container, make_container) -> None:
    cfg, container, gateway, _ = haproxy_container
    started = container.attrs["State"]["StartedAt"]
    c = make_container(host_ip="")
    result = cli(cfg.path, "-a", c.short_id, "--haproxy-container", container.name, "--host-ip", gateway,
                 "--no-runtime", "-r", "-v")
    assert result.returncode == 0, result.stderr
    assert f"restarting container {container.name}" in result.stderr
    container.reload()
    assert container.attrs["State"]["StartedAt"] != started
    deadline = time.monotonic() + 10
    while _safe_get(cfg.port) != c.short_id:
        assert time.monotonic() < deadline, "the restarted haproxy never served the new server"
        time.sleep(0.1)
