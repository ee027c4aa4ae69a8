"""--sync, --prune and --watch against the real engine(s) and a real haproxy."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import IMAGE, haproxy_pids, host_port, run_cli, write_config

LISTEN = "haproxy-docker-config.listen"
TEMPLATE = "$id ${ip}:$port check inter 1000 fall 1"


def servers(cfg) -> dict[str, str]:
    lines = [ln.split(None, 2) for ln in cfg.path.read_text().splitlines() if ln.strip().startswith("server ")]
    return {words[1]: words[2] for words in lines}


def labelled(make_container, listener: str = "web", **kw):
    return make_container(labels={LISTEN: listener, **kw.pop("labels", {})}, **kw)


def sync(cfg, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("-f", str(cfg.path), "--sync", *args)


@pytest.fixture
def cfg(tmp_path):
    c = write_config(tmp_path, listener="web", template=TEMPLATE, extra_listener_lines="    server hand 127.0.0.1:9 check")
    return c


def test_sync_adds_labelled_containers_keeps_hand_written_and_is_idempotent(cfg, make_container) -> None:
    a, b = labelled(make_container), labelled(make_container)
    make_container(labels={LISTEN: "other"})
    first = sync(cfg, "-l", "web")
    assert (first.returncode, first.stderr) == (0, "")
    assert sorted(first.stdout.splitlines()) == sorted(
        "%-20s\tadded\t127.0.0.1:%d" % (c.short_id, host_port(c)) for c in (a, b))
    assert set(servers(cfg)) == {"hand", a.short_id, b.short_id}
    before, inode = cfg.path.read_bytes(), cfg.path.stat().st_ino
    second = sync(cfg, "-l", "web", "--json")
    assert (second.returncode, json.loads(second.stdout)["changed"], json.loads(second.stdout)["results"]) == (0, False, [])
    assert cfg.path.read_bytes() == before and cfg.path.stat().st_ino == inode


def test_sync_updates_a_recreated_container_and_removes_stopped_ones(tmp_path, make_container) -> None:
    cfg = write_config(tmp_path, listener="web", template="$name ${ip}:$port check")
    stays, goes = labelled(make_container, name="hdc-sync-stays"), labelled(make_container, name="hdc-sync-goes")
    assert sync(cfg, "-l", "web").returncode == 0
    stays.remove(force=True)
    again = labelled(make_container, name="hdc-sync-stays")
    goes.stop(timeout=1)
    result = sync(cfg, "-l", "web")
    assert sorted(result.stdout.splitlines()) == [
        "hdc-sync-goes       \tremoved", "hdc-sync-stays      \tupdated\t127.0.0.1:%d" % host_port(again)]
    assert servers(cfg) == {"hdc-sync-stays": f"127.0.0.1:{host_port(again)} check"}


def test_sync_with_filters_removes_containers_no_longer_selected(cfg, make_container) -> None:
    web, api = make_container(labels={"app": "web"}), make_container(labels={"app": "api"})
    assert run_cli("-f", str(cfg.path), "-l", "web", "-a", api.short_id).returncode == 0
    result = sync(cfg, "-l", "web", "--filter", "label=app=web", "--filter", f"ancestor={IMAGE}")
    assert sorted(result.stdout.splitlines()) == sorted([
        "%-20s\tadded\t127.0.0.1:%d" % (web.short_id, host_port(web)), "%-20s\tremoved" % api.short_id])
    assert set(servers(cfg)) == {"hand", web.short_id}


def test_sync_without_l_serves_every_labelled_listener(tmp_path, make_container) -> None:
    cfg = write_config(tmp_path, listener="web", template=TEMPLATE)
    cfg.path.write_text(cfg.path.read_text() + "\nbackend api\n    #DOCKERSERVER $id ${ip}:$port\n")
    w, a = labelled(make_container, "web"), labelled(make_container, "api")
    result = sync(cfg)
    assert sorted(result.stdout.splitlines()) == sorted([
        "%-20s\tadded\t127.0.0.1:%d" % (f"api/{a.short_id}", host_port(a)),
        "%-20s\tadded\t127.0.0.1:%d" % (f"web/{w.short_id}", host_port(w))])
    a.stop(timeout=3)  # stopped, still known by its label: api is synced, and emptied
    assert sync(cfg).stdout == "%-20s\tremoved\n" % f"api/{a.short_id}"
    typo = labelled(make_container, "wbe")  # a listener the config does not have: the others go on
    result = sync(cfg)
    assert result.returncode == 0 and result.stdout == ""
    said = result.stderr.splitlines()  # (a labelled container of other work on this engine adds its own line)
    assert [ln for ln in said if "wbe" in ln] == [f"warning: {cfg.path}: no listen or backend section named wbe; "
                                                  "check -l and -f; listener wbe skipped, the others are synced"]
    assert all("no listen or backend section named" in ln for ln in said), said
    assert typo.short_id not in servers(cfg)


def test_prune_removes_only_servers_whose_containers_are_gone(cfg, make_container) -> None:
    a, b = make_container(), make_container()
    assert run_cli("-f", str(cfg.path), "-l", "web", "-a", f"{a.short_id},{b.short_id}").returncode == 0
    b.remove(force=True)
    result = run_cli("-f", str(cfg.path), "-l", "web", "--prune")
    assert (result.returncode, result.stdout) == (0, "%-20s\tremoved\n" % b.short_id)
    assert set(servers(cfg)) == {"hand", a.short_id}
    assert run_cli("-f", str(cfg.path), "-l", "web", "--prune", "--json").stdout.count('"changed": false') == 1


def test_sync_dry_run_diff_and_restart_only_on_change(cfg, make_container, haproxy) -> None:
    pids = haproxy(cfg)
    c = labelled(make_container)
    before = cfg.path.read_bytes()
    dry = sync(cfg, "-l", "web", "--dry-run", "--diff", "-h", str(cfg.pidfile), "--no-runtime")
    assert dry.returncode == 0 and f"+    server {c.short_id} " in dry.stdout and cfg.path.read_bytes() == before
    assert haproxy_pids(cfg) == pids
    assert json.loads(sync(cfg, "-l", "web", "-h", str(cfg.pidfile), "--no-runtime", "--json").stdout)["restarted"]
    pids = haproxy_pids(cfg)
    assert not json.loads(sync(cfg, "-l", "web", "-h", str(cfg.pidfile), "--json").stdout)["restarted"]
    assert haproxy_pids(cfg) == pids


def test_bad_filter_is_a_usage_error(cfg) -> None:
    result = sync(cfg, "-l", "web", "--filter", "label")
    assert (result.returncode, result.stdout, result.stderr) == (
        2, "", "ERROR: --filter 'label' is not KEY=VALUE, e.g. label=app=web or ancestor=IMAGE\n")
    result = sync(cfg, "--filter", "label=app=web")
    assert (result.returncode, result.stderr) == (
        2, "ERROR: --filter selects the containers of one listener: give it with -l, with --sync or --watch\n")
