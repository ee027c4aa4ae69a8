"""--status: the file, the running haproxy and Docker joined, and every kind of drift between them.

The joins and verdicts are pure functions (tested first on small inputs); then each
drift is produced for real: a server disabled through haproxy's stats socket, a
server written into the file by hand, a container killed, the file edited behind
haproxy's back.
"""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys

import pytest
import yaml
from conftest import ask_haproxy, host_port, run_cli, write_config

import haproxy_docker_config as hdc

KEYS = ["server", "ip", "port", "container", "haproxy", "check", "sessions", "in_file", "in_runtime", "drift",
        "listener"]
#: No health check: haproxy keeps such a server UP whatever its container does, so drift stays visible.
UNCHECKED = "$id ${ip}:$port"

STAT = ("# pxname,svname,qcur,qmax,scur,status,check_status,addr\n"
        "web,a,0,0,3,UP,L7OK,127.0.0.1:1\n"
        "web,b,0,0,0,no check,,127.0.0.1:2\n"
        "web,c,0,0,0,MAINT (via web/a),* L4CON,127.0.0.1:3\n"
        "web,BACKEND,0,0,3,UP,,\n")
STATE = ("1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight "
         "srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state "
         "srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port\n"
         "2 web 1 a 127.0.0.1 2 0 1 1 5 6 3 4 6 0 0 0 - 1 - 0 0 - - 0\n"
         "2 web 2 b 127.0.0.1 2 0 1 1 5 1 0 2 0 0 0 0 - 2 - 0 0 - - 0\n")


# --- pure: parsing haproxy's answers and judging drift -------------------------------------------------------

@pytest.mark.parametrize("status, state", [
    ("UP", "UP"), ("UP 1/3", "UP"), ("DOWN 1/2", "DOWN"), ("no check", "UP"), ("MAINT (via web/a)", "MAINT"),
    ("MAINT (resolution)", "MAINT"), ("DRAIN", "DRAIN"), ("DRAIN (agent)", "DRAIN"), ("NOLB", "NOLB")])
def test_haproxy_states_are_one_word(status: str, state: str) -> None:
    assert hdc.haproxy_state(status) == state


def test_show_stat_is_read_by_column_name() -> None:
    assert hdc.parse_stat(STAT) == {"a": ("UP", "L7OK", 3), "b": ("UP", None, 0), "c": ("MAINT", "L4CON", 0)}
    assert hdc.parse_stat("No such proxy.\n") == {}


def test_the_two_answers_join_into_live_servers() -> None:
    live = hdc.join_live(hdc.parse_servers_state(STATE), hdc.parse_stat(STAT))
    assert live == {"a": hdc.LiveServer("127.0.0.1", 1, "UP", "L7OK", 3),
                    "b": hdc.LiveServer("127.0.0.1", 2, "UP", None, 0)}


def live(state: str = "UP", ip: str = "127.0.0.1", port: int | None = 80) -> hdc.LiveServer:
    return hdc.LiveServer(ip, port, state, None, 0)


@pytest.mark.parametrize("line, server, answered, container, ours, drift", [
    ("a 127.0.0.1:80", live(), True, "running", True, []),
    ("a 127.0.0.1:80", None, True, "running", True, ["not_in_runtime"]),
    ("a 127.0.0.1:80", None, False, "running", True, []),  # no haproxy answered: nothing to compare
    (None, live(), True, "running", True, ["not_in_file"]),
    ("a 127.0.0.1:81", live(), True, "running", True, ["address_differs"]),
    ("a 127.0.0.2:80", live(), True, "running", True, ["address_differs"]),
    ("a [::1]:80", live(ip="0:0:0:0:0:0:0:1"), True, "running", True, []),  # the same address, written twice
    ("a web1:80", live(ip="10.0.0.7"), True, "running", True, []),  # haproxy resolved the name: not comparable
    ("a 127.0.0.1", live(port=None), True, "running", True, []),  # no port in the file: the client's
    ("a 127.0.0.1:80", live(), True, "exited", True, ["up_without_container"]),
    ("a 127.0.0.1:80", live(), True, "absent", True, ["up_without_container"]),
    ("a 127.0.0.1:80", live(), True, "paused", True, ["up_without_container"]),
    ("a 127.0.0.1:80", live(), True, "unhealthy", True, []),  # running: haproxy's own check decides
    ("a 127.0.0.1:80", live("DOWN"), True, "exited", True, []),  # haproxy knows already
    ("a 127.0.0.1:80", live(), True, "absent", False, []),  # a hand-written server: not Docker's
    ("a 127.0.0.1:80", live("MAINT"), True, "running", True, ["maint_while_healthy"]),
    ("a 127.0.0.1:80", live("MAINT"), True, "unhealthy", True, []),
    ("a 127.0.0.1:80", live("MAINT"), True, "exited", True, []),
    ("a 127.0.0.1:81", live("MAINT"), True, "absent", True, ["address_differs"]),
])
def test_drift_kinds(line, server, answered, container, ours, drift) -> None:
    assert hdc.server_drift(line, server, answered, container, ours) == drift


def test_rows_join_file_then_runtime_only_servers() -> None:
    lines = {"aaaaaaaaaaaa": "aaaaaaaaaaaa 127.0.0.1:80 check", "static": "static 10.0.0.1:80"}
    runtime = {"aaaaaaaaaaaa": live(), "static": live("DOWN", "10.0.0.1"), "extra": live(port=99)}
    states = {"aaaaaaaaaaaa": "exited"}
    shape = hdc.template_pattern("$id ${ip}:$port check")
    rows = hdc.status_rows("web", lines, runtime, lambda name: states.get(name, "absent"), shape)
    assert [(r.server, r.container, r.haproxy, r.in_file, r.in_runtime, r.drift) for r in rows] == [
        ("aaaaaaaaaaaa", "exited", "UP", True, True, ["up_without_container"]),
        ("static", "absent", "DOWN", True, True, []),
        ("extra", "absent", "UP", False, True, ["not_in_file"]),
    ]
    assert (rows[2].ip, rows[2].port, rows[2].listener) == ("127.0.0.1", 99, "web")
    unanswered = hdc.status_rows("web", lines, None, lambda name: "running", shape)
    assert [(r.haproxy, r.in_runtime, r.sessions, r.drift) for r in unanswered] == [(None, None, None, [])] * 2


def test_container_states_as_status_shows_them() -> None:
    entries = [hdc.container_from_list(entry, "127.0.0.1") for entry in (
        {"Id": "a" * 64, "Names": ["/web1"], "State": "running", "Status": "Up 3 minutes (unhealthy)"},
        {"Id": "b" * 64, "Names": ["/web2"], "State": "exited", "Status": "Exited (137)"},
        {"Id": "c" * 64, "Names": ["/web2"], "State": "running", "Status": "Up 1 second (healthy)"})]
    assert hdc.state_of_server("a" * 12, entries) == "unhealthy"
    assert hdc.state_of_server("web2", entries) == "running"  # the same name on two engines: the running one
    assert hdc.state_of_server("b" * 12, entries) == "exited"
    assert hdc.state_of_server("nothere", entries) == "absent"


def test_templated_listeners_are_found_without_augeas() -> None:
    text = ("global\n    maxconn 10\nlisten a\n    # DOCKERSERVER $id $ip:$port\nbackend b\n    server x 1.2.3.4:5\n"
            "backend c\n    #DOCKERSERVER $name $ip:$port\nfrontend d\n    #DOCKERSERVER $id $ip:$port\n")
    assert hdc.templated_listeners(text) == ["a", "c"]


def test_the_table_is_aligned_and_names_listeners_without_l() -> None:
    rows = [hdc.ServerStatus("3f2a9c0d1e2b", "127.0.0.1", 32771, "running", "UP", "L4OK", 0, True, True, [], "web"),
            hdc.ServerStatus("static", "10.0.0.1", None, "absent", None, None, None, True, None, [], "web"),
            hdc.ServerStatus("x", "127.0.0.1", 1, "exited", "UP", None, 2, False, True,
                             ["not_in_file", "up_without_container"], "api")]
    report = hdc.Report(None, "status", rows=rows)
    assert hdc.render(report, "plain", False) == (
        "SERVER            ADDRESS          CONTAINER  HAPROXY  CHECK  SESSIONS  DRIFT\n"
        "web/3f2a9c0d1e2b  127.0.0.1:32771  running    UP       L4OK   0         -\n"
        "web/static        10.0.0.1         absent     -        -      -         -\n"
        "api/x             127.0.0.1:1      exited     UP       -      2         not_in_file,up_without_container\n")
    assert report.status == 1
    doc = yaml.safe_load(hdc.render(report, "yaml", False))
    assert doc == json.loads(hdc.render(report, "json", False))
    assert (doc["action"], doc["exit_status"], list(doc["results"][0])) == ("status", 1, KEYS)
    assert hdc.render(hdc.Report("web", "status"), "plain", False) == ""


# --- real haproxy, real containers ---------------------------------------------------------------------------

def status(cfg, *args: str) -> tuple[int, dict, str]:
    """--status --json on the listener; (exit status, the document, stderr)."""
    result = run_cli("-f", str(cfg.path), "-l", "dockerha-app1", "--status", "--json", *args)
    return result.returncode, json.loads(result.stdout), result.stderr


def rows(doc: dict) -> dict[str, dict]:
    return {row["server"]: row for row in doc["results"]}


@pytest.fixture
def balanced(tmp_path, make_container, haproxy):
    """A running haproxy whose listener balances two containers, added live; servers without checks."""
    cfg = write_config(tmp_path, template=UNCHECKED)
    haproxy(cfg)
    containers = [make_container(), make_container()]
    added = run_cli("-f", str(cfg.path), "-l", "dockerha-app1", "-a", ",".join(c.short_id for c in containers))
    assert added.returncode == 0, added.stderr
    return cfg, containers


def test_a_clean_listener_has_no_drift_and_exits_0(balanced) -> None:
    cfg, (a, b) = balanced
    code, doc, _ = status(cfg)
    assert code == 0 and doc["exit_status"] == 0 and doc["action"] == "status"
    assert [list(row) for row in doc["results"]] == [KEYS, KEYS]
    assert rows(doc)[a.short_id] == {
        "server": a.short_id, "ip": "127.0.0.1", "port": host_port(a), "container": "running", "haproxy": "UP",
        "check": None, "sessions": 0, "in_file": True, "in_runtime": True, "drift": [], "listener": "dockerha-app1"}
    plain = run_cli("-f", str(cfg.path), "-l", "dockerha-app1", "--status")
    assert plain.returncode == 0
    assert plain.stdout.splitlines()[0].split() == ["SERVER", "ADDRESS", "CONTAINER", "HAPROXY", "CHECK", "SESSIONS",
                                                    "DRIFT"]
    assert plain.stdout.splitlines()[1].split() == [a.short_id, f"127.0.0.1:{host_port(a)}", "running", "UP", "-",
                                                    "0", "-"]


def test_a_server_disabled_by_hand_is_maint_while_its_container_is_healthy(balanced) -> None:
    cfg, (a, b) = balanced
    assert ask_haproxy(cfg.sock, f"disable server dockerha-app1/{a.short_id}").strip() == ""
    code, doc, _ = status(cfg)
    assert code == 1 and doc["exit_status"] == 1
    assert (rows(doc)[a.short_id]["haproxy"], rows(doc)[a.short_id]["drift"]) == ("MAINT", ["maint_while_healthy"])
    assert rows(doc)[b.short_id]["drift"] == []


def test_a_server_added_by_hand_to_the_file_is_not_in_haproxy(balanced) -> None:
    cfg, _ = balanced
    cfg.path.write_text(cfg.path.read_text() + "    server byhand 127.0.0.1:9\n")
    code, doc, _ = status(cfg)
    assert code == 1
    assert rows(doc)["byhand"] == {
        "server": "byhand", "ip": "127.0.0.1", "port": 9, "container": "absent", "haproxy": None, "check": None,
        "sessions": None, "in_file": True, "in_runtime": False, "drift": ["not_in_runtime"],
        "listener": "dockerha-app1"}


def test_a_killed_container_whose_server_is_still_up(balanced) -> None:
    cfg, (a, _) = balanced
    a.kill()
    code, doc, _ = status(cfg)
    assert code == 1
    row = rows(doc)[a.short_id]
    assert (row["container"], row["haproxy"], row["drift"]) == ("exited", "UP", ["up_without_container"])
    a.remove(force=True)
    assert rows(status(cfg)[1])[a.short_id]["container"] == "absent"


def test_the_file_edited_behind_haproxys_back(balanced) -> None:
    cfg, (a, b) = balanced
    text = cfg.path.read_text()
    moved = text.replace(f"127.0.0.1:{host_port(a)}", "127.0.0.1:9")
    cfg.path.write_text("".join(ln for ln in moved.splitlines(keepends=True) if b.short_id not in ln))
    code, doc, _ = status(cfg)
    assert code == 1
    assert (rows(doc)[a.short_id]["port"], rows(doc)[a.short_id]["drift"]) == (9, ["address_differs"])
    assert rows(doc)[b.short_id] == {
        "server": b.short_id, "ip": "127.0.0.1", "port": host_port(b), "container": "running", "haproxy": "UP",
        "check": None, "sessions": 0, "in_file": False, "in_runtime": True, "drift": ["not_in_file"],
        "listener": "dockerha-app1"}
    plain = run_cli("-f", str(cfg.path), "-l", "dockerha-app1", "--status")
    assert plain.returncode == 1 and plain.stdout.splitlines()[-1].split()[-1] == "not_in_file"


def test_without_haproxy_only_file_and_docker_are_compared(tmp_path, make_container) -> None:
    cfg = write_config(tmp_path, template=UNCHECKED)
    c = make_container()
    assert run_cli("-f", str(cfg.path), "-l", "dockerha-app1", "-a", c.short_id).returncode == 0
    code, doc, err = status(cfg)
    assert code == 0
    assert {k: rows(doc)[c.short_id][k] for k in ("container", "haproxy", "in_runtime", "sessions", "drift")} == {
        "container": "running", "haproxy": None, "in_runtime": None, "sessions": None, "drift": []}
    assert f"warning: no haproxy answers on {cfg.sock}" in err and "haproxy's side is not compared" in err


def test_without_l_every_templated_listener_is_shown(tmp_path, make_container, haproxy) -> None:
    cfg = write_config(tmp_path, template=UNCHECKED)
    other = "\nbackend api\n    balance roundrobin\n    # DOCKERSERVER $id ${ip}:$port\n" \
            "\nbackend plain\n    server fixed 127.0.0.1:9\n"
    cfg.path.write_text(cfg.path.read_text() + other)
    haproxy(cfg)
    a, b = make_container(), make_container()
    for listener, c in (("dockerha-app1", a), ("api", b)):
        assert run_cli("-f", str(cfg.path), "-l", listener, "-a", c.short_id).returncode == 0
    result = run_cli("-f", str(cfg.path), "--status")
    assert result.returncode == 0, result.stderr
    assert [line.split()[0] for line in result.stdout.splitlines()] == [
        "SERVER", f"dockerha-app1/{a.short_id}", f"api/{b.short_id}"]


def test_status_takes_no_lock_and_imports_docker_only_for_servers(tmp_path) -> None:
    cfg = write_config(tmp_path)
    with open(cfg.path.with_name("haproxy.cfg.lock"), "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a writer holding the lock does not hold --status up
        probe = ("import sys, haproxy_docker_config as h; code = h.main(sys.argv[1:]); "
                 "print(code, *(m in sys.modules for m in ('docker', 'prometheus_client', 'yaml')))")
        empty = subprocess.run([sys.executable, "-c", probe, "-f", str(cfg.path), "--status", "--lock-timeout", "0"],
                               capture_output=True, text=True, timeout=20)
        assert empty.stdout.split() == ["0", "False", "False", "False"], empty.stderr
        cfg.path.write_text(cfg.path.read_text() + "    server byhand 127.0.0.1:9\n")
        one = subprocess.run([sys.executable, "-c", probe, "-f", str(cfg.path), "--status"],
                             capture_output=True, text=True, timeout=20)
        assert one.stdout.splitlines()[-1].split() == ["0", "True", "False", "False"], one.stderr


def test_status_errors(tmp_path) -> None:
    cfg = write_config(tmp_path)
    before = cfg.path.read_bytes()
    unknown = run_cli("-f", str(cfg.path), "-l", "nope", "--status")
    assert (unknown.returncode, unknown.stderr) == (
        3, f"ERROR: {cfg.path}: no listen or backend section named nope; check -l and -f\n")
    down = run_cli("-f", str(cfg.path), "--status", "--docker-url", f"unix://{tmp_path}/none.sock",
                   "--runtime-socket", str(tmp_path / "none.sock"))
    assert down.returncode == 0 and down.stdout == ""  # no server: Docker is not asked
    cfg.path.write_text(cfg.path.read_text() + "    server byhand 127.0.0.1:9\n")
    down = run_cli("-f", str(cfg.path), "--status", "--docker-url", f"unix://{tmp_path}/none.sock", "--no-runtime")
    assert (down.returncode, down.stderr) == (4, f"ERROR: cannot reach the Docker engine at unix://{tmp_path}/none.sock"
                                                 f" (No such file or directory); start dockerd or give --docker-url\n")
    assert cfg.path.read_bytes() == before + b"    server byhand 127.0.0.1:9\n"
