"""haproxy survives the live delete: apps that exit at once on SIGTERM, stopped one after another
under load while `--watch` follows them (bench/churn.py, the same scenario with figures in docs/churn.md).

The old delete (`disable server`, wait for `scur` 0, `del server`) freed a server that a stream still
pointed at while it waited to retry a refused connection: Debian's haproxy 2.6 died within a few stops."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess

import pytest
from conftest import CLI, ask_haproxy, http_get, kill_haproxy_running, run_cli, wait_until, write_config

from test_metrics import LISTEN, get, healthz, metrics_watcher, run_labelled, scrape, value

import churn  # bench/churn.py (conftest puts bench/ on the path)
import haproxy_docker_config as hdc

#: A response cut off by the app's death can be retried by no setting: haproxy has begun to answer.
CUT_OFF = ("The server returned an invalid or incomplete response", "IncompleteRead")


def _survived(result: churn.Result) -> None:
    assert result.died_after is None and result.same_process, \
        f"haproxy died after stop {result.died_after}; the watcher said:\n{result.watcher_log[-3000:]}"


def _valid(cfg_text: str, tmp_path) -> None:
    path = tmp_path / "final.cfg"
    path.write_text(cfg_text)
    check = subprocess.run(["haproxy", "-c", "-f", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize("retries", [False, True], ids=["haproxy-defaults", "recommended-retries"])
def test_a_hundred_stops_of_apps_that_die_at_once_never_crash_haproxy(docker_client, retries, tmp_path) -> None:
    # without retries, three apps stop at once; with them one at a time, as a rolling update stops them
    # (a retry redispatched to another app that is dying too would fail for that reason alone)
    result = churn.run(stops=100 if not retries else 20, retries=retries, parallel=1 if retries else 3)
    print(churn.line(result))  # the counts of failed requests, with and without the retry settings
    _survived(result)
    assert result.stops == (100 if not retries else 20)
    assert result.requests > 1000
    _valid(result.final_config, tmp_path)
    assert result.servers_in_file == result.apps_running
    assert result.servers_live == result.apps_running
    if retries:  # a refused connection or an empty answer goes to another server: only cut-off answers fail
        assert all(any(kind in reason for kind in CUT_OFF) for reason in result.reasons), result.reasons


@pytest.mark.parametrize("version", ["2.2", "2.6", "2.8", "3.0", "3.2"])
def test_every_version_in_a_container_survives_the_churn(docker_client, version, tmp_path) -> None:
    """15 stops of apps that die at once, three at a time (2.2 has no dynamic servers: it is reloaded, -h)."""
    result = churn.run(stops=15, retries=False, image=f"hdc-haproxy:{version}", parallel=3, reload=version == "2.2")
    print(churn.line(result))
    _survived(result)
    assert result.stops == 15 and result.requests > 200
    assert result.servers_in_file == result.servers_live == result.apps_running


def test_a_haproxy_that_dies_during_a_live_delete_is_reported_not_taken_for_done(tmp_path, make_container,
                                                                                   haproxy) -> None:
    cfg = write_config(tmp_path, extra_listener_lines="    mode tcp")  # a held connection is a server session
    c = make_container()
    assert run_cli("-f", str(cfg.path), "-l", "dockerha-app1", "-a", c.short_id).returncode == 0
    pid = haproxy(cfg)[0]
    with socket.create_connection(("127.0.0.1", cfg.port)) as held:  # busybox httpd waits for its request
        wait_until(lambda: "0,1," in _stat_row(cfg, c.short_id), 10, lambda: _stat_row(cfg, c.short_id))
        deleting = subprocess.Popen([str(CLI), "-f", str(cfg.path), "-l", "dockerha-app1", "-d", c.short_id,
                                     "--drain-timeout", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
        # the file is written before the change goes live: once it is, the tool waits for the session
        wait_until(lambda: f"server {c.short_id} " not in cfg.path.read_text(), 20, lambda: cfg.path.read_text())
        assert _admin_state(cfg, c.short_id) & 1  # disabled, still there: the delete waits for the session
        kill_haproxy_running(cfg.path)
        out, err = deleting.communicate(timeout=30)
        held.close()
    assert deleting.returncode == 5
    assert err == (f"ERROR: haproxy (pid {pid}) stopped answering on {cfg.sock} while the change was applied: it "
                   f"died or was stopped; {cfg.path} holds the change, no running haproxy does: start haproxy (it "
                   f"reads the file), see its log for why it stopped\n")
    assert f"server {c.short_id} " not in cfg.path.read_text()


def served(port: int, n: int = 12) -> set[str]:
    return {http_get(port) for _ in range(n)}


def _stat_row(cfg, server: str) -> str:
    """The `show stat` CSV row of one server, from pxname on (qcur,qmax,scur... after the names)."""
    rows = ask_haproxy(cfg.sock, "show stat dockerha-app1 4 -1").splitlines()
    return next((r for r in rows if r.startswith(f"dockerha-app1,{server},")), "").partition(f"{server},")[2]


def _admin_state(cfg, server: str) -> int:
    rows = [r.split() for r in ask_haproxy(cfg.sock, "show servers state dockerha-app1").splitlines()[2:]]
    return next((int(r[6]) for r in rows if len(r) > 6 and r[3] == server), 0)


def test_the_watcher_says_once_that_haproxy_died_and_healthz_fails_until_it_is_back(tmp_path, docker_client,
                                                                                     haproxy, watcher) -> None:
    name = f"d{secrets.token_hex(3)}"
    cfg = write_config(tmp_path, listener=name)
    haproxy(cfg)
    w, port = metrics_watcher(watcher, cfg, name)
    try:
        wait_until(lambda: healthz(port) == 200 and value(scrape(port), "haproxy_up") == 1, 30,
                   lambda: w.log.read_text())
        kill_haproxy_running(cfg.path)
        first = run_labelled(docker_client, name)  # a change for a haproxy that is gone: only the file gets it
        wait_until(lambda: healthz(port) == 503, 30, lambda: w.log.read_text())
        code, body = get(port, "/healthz")
        assert body.startswith("haproxy (pid ") and f"stopped answering on {cfg.sock} " in body
        assert value(scrape(port), "haproxy_up") == 0
        wait_until(lambda: f"server {first.short_id} " in cfg.path.read_text(), 30, lambda: w.log.read_text())
        second = run_labelled(docker_client, name)
        wait_until(lambda: f"server {second.short_id} " in cfg.path.read_text(), 30, lambda: w.log.read_text())
        haproxy(cfg)  # started again: it reads the file, which holds both
        wait_until(lambda: healthz(port) == 200, 30, lambda: w.log.read_text())  # the idle pass asks it again
        assert value(scrape(port), "haproxy_up") == 1 and {first.short_id, second.short_id} <= served(cfg.port)
        assert w.stop() == 0
    finally:
        w.kill()
        for c in docker_client.containers.list(all=True, filters={"label": f"{LISTEN}={name}"}):
            c.remove(force=True)
    said = [line for line in w.log.read_text().splitlines() if "stopped answering" in line]
    assert len(said) == 1 and said[0].startswith("ERROR: haproxy (pid "), said
    assert f"haproxy answers on {cfg.sock} again (pid " in w.log.read_text()


def test_a_failed_hot_restart_says_whether_the_old_haproxy_still_serves() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()  # reaped: its pid names no process any more
    assert hdc._who_serves([os.getpid()]) == "the old haproxy keeps serving"
    assert hdc._who_serves([gone.pid]) == f"and the old haproxy (pid {gone.pid}) is gone too: no haproxy runs; start it"
