"""The CLI through main([...]) against real containers, real files and haproxy -c."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_config, host_port

import haproxy_docker_config as hdc


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = hdc.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def ok(capsys, *args: str) -> str:
    """run() of a step that must succeed: exit 0 and nothing on stderr; its stdout."""
    code, out, err = run(capsys, *args)
    assert (code, err) == (0, ""), f"{args}: exit {code}: {err}"
    return out


@pytest.fixture
def cfg(tmp_path: Path):
    return write_config(tmp_path)


def servers(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip().startswith("server ")]


def test_add_prints_the_seed_line_and_writes_a_server(capsys, cfg, make_container) -> None:
    c = make_container()
    code, out, err = run(capsys, "-f", str(cfg.path), "-l", "dockerha-app1", "-a", c.short_id)
    assert (code, err) == (0, "")
    assert out == "%-20s\tbalanced\t127.0.0.1:%d\n" % (c.short_id, host_port(c))
    assert servers(cfg.path) == [f"server {c.short_id} 127.0.0.1:{host_port(c)} check inter 2000 rise 2 fall 5"]


def test_second_identical_add_changes_nothing(capsys, cfg, make_container) -> None:
    c = make_container()
    assert run(capsys, "-f", str(cfg.path), "-l", "dockerha-app1", "-a", c.short_id, "--json")[0] == 0
    before, stat = cfg.path.read_bytes(), cfg.path.stat()
    code, out, _ = run(capsys, "-f", str(cfg.path), "-l", "dockerha-app1", "-a", c.short_id, "--json")
    assert code == 0 and json.loads(out)["changed"] is False
    assert cfg.path.read_bytes() == before and cfg.path.stat().st_ino == stat.st_ino


def test_add_by_name_full_id_or_prefix_names_the_server_by_short_id(capsys, cfg, make_container) -> None:
    a, b, c = make_container(name="hdc-web-a"), make_container(), make_container()
    code, out, _ = run(capsys, "-f", str(cfg.path), "-l", "dockerha-app1", "-a", f"hdc-web-a,{b.id},{c.id[:8]}")
    assert code == 0
    assert [line.split("\t")[0].strip() for line in out.splitlines()] == ["hdc-web-a", b.id, c.id[:8]]
    assert [s.split()[1] for s in servers(cfg.path)] == [a.short_id, b.short_id, c.short_id]


def test_readding_a_container_rewrites_its_line_instead_of_duplicating(capsys, cfg, make_container) -> None:
    c = make_container()
    stale = cfg.path.read_text() + f"    server {c.short_id} 127.0.0.1:1 check inter 2000 rise 2 fall 5\n"
    cfg.path.write_text(stale)
    assert run(capsys, "-f", str(cfg.path), "-l", "dockerha-app1", "-a", c.short_id)[0] == 0
    assert servers(cfg.path) == [f"server {c.short_id} 127.0.0.1:{host_port(c)} check inter 2000 rise 2 fall 5"]


def test_add_with_private_port_picks_that_binding(capsys, cfg, make_container) -> None:
    c = make_container(ports=(8080, 9090))
    code, out, err = run(capsys, "-f", str(cfg.path), "-l", "dockerha-app1", "-a", c.short_id)
    assert code == hdc.EXIT_DOCKER
    assert err == f"ERROR: container {c.short_id} publishes several tcp ports (8080, 9090); give {c.short_id}:PORT\n"
    code, out, _ = run(capsys, "-f", str(cfg.path), "-l", "dockerha-app1", "-a", f"{c.short_id}:9090")
    assert code == 0 and out.endswith(f"127.0.0.1:{host_port(c, 9090)}\n")


def test_ports_published_on_all_interfaces_use_host_ip(capsys, cfg, make_container) -> None:
    c = make_container(host_ip="")
    ok(capsys, "-f", str(cfg.path), "-l", "dockerha-app1", "-a", c.short_id, "--host-ip", "127.0.0.2")
    assert servers(cfg.path)[0].split()[2] == f"127.0.0.2:{host_port(c)}"


def test_one_bad_id_leaves_the_file_untouched(capsys, cfg, make_container) -> None:
    good = make_container()
    before = cfg.path.read_bytes()
    code, out, err = run(capsys, "-f", str(cfg.path), "-l", "dockerha-app1", "-a", f"{good.short_id},nosuchcontainer")
    assert (code, out) == (hdc.EXIT_DOCKER, "")
    assert err == "ERROR: no such container nosuchcontainer; check the id with docker ps\n"
    assert cfg.path.read_bytes() == before


def test_stopped_and_portless_containers_are_refused(capsys, cfg, make_container) -> None:
    stopped, portless = make_container(), make_container(ports=())
    stopped.stop(timeout=1)
    before = cfg.path.read_bytes()
    code, _, err = run(capsys, "-f", str(cfg.path), "-l", "dockerha-app1", "-a", stopped.short_id)
    assert (code, err) == (4, f"ERROR: container {stopped.short_id} is not running (exited); start it first\n")
    code, _, err = run(capsys, "-f", str(cfg.path), "-l", "dockerha-app1", "-a", portless.short_id)
    assert (code, err) == (4, f"ERROR: container {portless.short_id} publishes no tcp port; run it with -p HOSTPORT:PORT\n")
    assert cfg.path.read_bytes() == before


def test_delete_by_id_name_or_of_a_removed_container(capsys, cfg, make_container) -> None:
    a, b, c = make_container(), make_container(name="hdc-del-b"), make_container()
    ok(capsys, "-f", str(cfg.path), "-l", "dockerha-app1", "-a", f"{a.short_id},{b.short_id},{c.short_id}")
    c.remove(force=True)
    code, out, err = run(capsys, "-f", str(cfg.path), "-l", "dockerha-app1", "-d", f"{a.id},hdc-del-b,{c.short_id}")
    assert (code, out, err) == (0, "", "")
    assert servers(cfg.path) == []


def test_deleting_an_absent_server_is_not_an_error_and_writes_nothing(capsys, cfg) -> None:
    before, inode = cfg.path.read_bytes(), cfg.path.stat().st_ino
    code, out, _ = run(capsys, "-f", str(cfg.path), "-l", "dockerha-app1", "-d", "f2cc6e975169", "-v")
    assert (code, out) == (0, "f2cc6e975169        \tnot_balanced\n")
    assert cfg.path.read_bytes() == before and cfg.path.stat().st_ino == inode


def test_check_lists_balanced_and_flags_unbalanced(capsys, cfg, make_container) -> None:
    a, b = make_container(name="hdc-chk-a"), make_container()
    ok(capsys, "-f", str(cfg.path), "-l", "dockerha-app1", "-a", a.short_id)
    assert run(capsys, "-f", str(cfg.path), "-l", "dockerha-app1", "-c") == (
        0, f"{a.short_id}        \tbalanced\n", "")
    code, out, _ = run(capsys, "-f", str(cfg.path), "-l", "dockerha-app1", "-c", f"hdc-chk-a,{b.short_id}")
    assert (code, out) == (1, f"hdc-chk-a           \tbalanced\n{b.short_id}        \tnot_balanced\n")


def test_verify_finds_running_and_flags_killed(capsys, cfg, make_container) -> None:
    a, b = make_container(), make_container()
    ok(capsys, "-f", str(cfg.path), "-l", "dockerha-app1", "-a", f"{a.short_id},{b.short_id}")
    assert run(capsys, "-f", str(cfg.path), "-l", "dockerha-app1", "--verify")[:2] == (
        0, f"{a.short_id}        \tfound\n{b.short_id}        \tfound\n")
    b.kill()
    assert run(capsys, "-f", str(cfg.path), "-l", "dockerha-app1", "--verify")[:2] == (
        1, f"{a.short_id}        \tfound\n{b.short_id}        \tnot_found\n")


def test_show_alone_and_after_delete(capsys, cfg, make_container) -> None:
    a, b = make_container(), make_container()
    ok(capsys, "-f", str(cfg.path), "-l", "dockerha-app1", "-a", f"{a.short_id},{b.short_id}")
    line_a = f"{a.short_id} 127.0.0.1:{host_port(a)} check inter 2000 rise 2 fall 5"
    line_b = f"{b.short_id} 127.0.0.1:{host_port(b)} check inter 2000 rise 2 fall 5"
    assert run(capsys, "-f", str(cfg.path), "-l", "dockerha-app1", "-s") == (0, f"{line_a}\n{line_b}\n", "")
    assert run(capsys, "-f", str(cfg.path), "-l", "dockerha-app1", "-d", b.short_id, "--show") == (0, f"{line_a}\n", "")


def test_yaml_and_json_agree(capsys, cfg, make_container) -> None:
    import yaml

    c = make_container()
    doc = json.loads(ok(capsys, "-f", str(cfg.path), "-l", "dockerha-app1", "-a", c.short_id, "--json", "-s"))
    assert doc["results"][0]["port"] == host_port(c) and doc["changed"] is True
    ydoc = yaml.safe_load(ok(capsys, "-f", str(cfg.path), "-l", "dockerha-app1", "-c", c.short_id, "--yaml", "-s"))
    assert ydoc["servers"] == doc["servers"] and ydoc["results"][0]["status"] == "balanced"


@pytest.mark.parametrize("args, code, message", [
    (["-a", "x"], 2, "ERROR: the following arguments are required: -l/--listen; see --help"),
    (["-l", "dockerha-app1"], 2, "ERROR: nothing to do; give --add, --delete, --check, --verify, --sync, --prune, --watch, --status or --show"),
    (["-l", "dockerha-app1", "-a", "x", "-d", "y"], 2, "ERROR: argument -d/--delete: not allowed with argument -a/--add; see --help"),
    (["-l", "dockerha-app1", "-a", "a,,b"], 2, "ERROR: empty container id in 'a,,b'; give ID[,ID...] without empty items"),
    (["-l", "dockerha-app1", "-a", "abc:70000"], 2, "ERROR: port 70000 in 'abc:70000' is out of range; give a port in 1..65535"),
    (["-l", "dockerha-app10", "-s"], 3, "ERROR: {cfg}: no listen or backend section named dockerha-app10; check -l and -f"),
    (["-l", "dockerha-app1", "-a", "x", "--docker-url", "unix:///nonexistent/docker.sock"], 4,
     "ERROR: cannot reach the Docker engine at unix:///nonexistent/docker.sock (No such file or directory); "
     "start dockerd or give --docker-url"),
])
def test_bad_input_gives_one_error_line_and_status(capsys, cfg, args: list, code: int, message: str) -> None:
    before = cfg.path.read_bytes()
    assert run(capsys, "-f", str(cfg.path), *args) == (code, "", message.format(cfg=cfg.path) + "\n")
    assert cfg.path.read_bytes() == before


def test_missing_config_file(capsys, tmp_path) -> None:
    missing = tmp_path / "nope.cfg"
    assert run(capsys, "-f", str(missing), "-l", "x", "-s") == (
        3, "", f"ERROR: {missing}: no such file; give the haproxy config with -f\n")


def test_template_with_unknown_variable(capsys, tmp_path, make_container) -> None:
    cfg = write_config(tmp_path, template="$id $host:$port")
    c = make_container()
    before = cfg.path.read_bytes()
    assert run(capsys, "-f", str(cfg.path), "-l", "dockerha-app1", "-a", c.short_id) == (
        3, "", "ERROR: template '$id $host:$port' uses unknown variable $host; use $id, $name, $ip, $port\n")
    assert cfg.path.read_bytes() == before


def test_change_rejected_by_haproxy_leaves_file_untouched(capsys, tmp_path, make_container) -> None:
    cfg = write_config(tmp_path, template="$id ${ip}:$port check bogus-keyword")
    c = make_container()
    before = cfg.path.read_bytes()
    code, out, err = run(capsys, "-f", str(cfg.path), "-l", "dockerha-app1", "-a", c.short_id)
    assert (code, out) == (5, "")
    first, *alerts = err.splitlines()
    assert first == f"ERROR: haproxy rejects the changed {cfg.path}; the file is left untouched"
    assert alerts and all("ALERT" in a for a in alerts) and str(cfg.path) in alerts[0]
    assert "bogus-keyword" in err
    assert cfg.path.read_bytes() == before and not list(tmp_path.glob(".haproxy.cfg.*"))


def test_config_already_rejected_is_reported_as_such(capsys, tmp_path, make_container) -> None:
    cfg = write_config(tmp_path, extra_listener_lines="    frobnicate yes")
    c = make_container()
    before = cfg.path.read_bytes()
    code, _, err = run(capsys, "-f", str(cfg.path), "-l", "dockerha-app1", "-a", c.short_id)
    assert code == 3
    assert err.splitlines()[0] == (f"ERROR: haproxy already rejects {cfg.path} as it is, before any change; "
                                   f"fix it first (haproxy -c -f {cfg.path})")
    assert cfg.path.read_bytes() == before


def test_no_traceback_unless_verbose(capsys, tmp_path) -> None:
    code, _, err = run(capsys, "-f", str(tmp_path / "x.cfg"), "-l", "x", "-s")
    assert "Traceback" not in err and code == 3
    code, _, err = run(capsys, "-f", str(tmp_path / "x.cfg"), "-l", "x", "-s", "-v")
    assert "Traceback" in err and err.splitlines()[-1].startswith("ERROR: ")


def test_dry_run_with_diff_writes_nothing(capsys, cfg, make_container) -> None:
    c = make_container()
    before = cfg.path.read_bytes()
    code, out, _ = run(capsys, "-f", str(cfg.path), "-l", "dockerha-app1", "-a", c.short_id, "--dry-run", "--diff")
    assert code == 0 and cfg.path.read_bytes() == before
    assert f"--- {cfg.path} (before)\n+++ {cfg.path} (after)\n" in out
    assert f"+    server {c.short_id} 127.0.0.1:{host_port(c)} check inter 2000 rise 2 fall 5\n" in out


def test_write_keeps_mode_and_a_backup(capsys, cfg, make_container) -> None:
    cfg.path.chmod(0o640)
    before = cfg.path.read_bytes()
    ok(capsys, "-f", str(cfg.path), "-l", "dockerha-app1", "-a", make_container().short_id)
    assert cfg.path.stat().st_mode & 0o777 == 0o640
    assert cfg.path.with_name("haproxy.cfg.bak").read_bytes() == before


def test_a_symlinked_config_stays_a_symlink(capsys, tmp_path, make_container) -> None:
    cfg = write_config(tmp_path)
    link = tmp_path / "link.cfg"
    link.symlink_to(cfg.path)
    ok(capsys, "-f", str(link), "-l", "dockerha-app1", "-a", make_container().short_id)
    assert link.is_symlink() and len(servers(cfg.path)) == 1


def test_a_tcp_engine_url_gives_its_host_as_address(capsys, cfg, make_container, docker_tcp_url,
                                                    monkeypatch) -> None:
    c = make_container(host_ip="")  # published on all interfaces, so reachable at the engine's host
    code, out, err = run(capsys, "-f", str(cfg.path), "-l", "dockerha-app1", "-a", c.short_id,
                         "--docker-url", docker_tcp_url)
    assert (code, err) == (0, "")
    assert out == "%-20s\tbalanced\t127.0.0.2:%d\n" % (c.short_id, host_port(c))
    monkeypatch.setenv("DOCKER_HOST", docker_tcp_url)  # the environment, as docker itself reads it
    assert run(capsys, "-f", str(cfg.path), "-l", "dockerha-app1", "-a", c.short_id, "--host-ip", "127.0.0.3") == (
        0, "%-20s\tbalanced\t127.0.0.3:%d\n" % (c.short_id, host_port(c)), "")


@pytest.mark.parametrize("args, imports_docker", [(["-s"], False), (["-c"], False), (["--verify"], True)])
def test_show_and_check_without_ids_import_no_docker_code(cfg, args: list, imports_docker: bool) -> None:
    code = ("import sys, haproxy_docker_config as h; h.main(sys.argv[1:]); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'docker', 'requests', 'urllib3'}))")
    result = subprocess.run([sys.executable, "-c", code, "-f", str(cfg.path), "-l", "dockerha-app1", *args],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == ("['docker', 'requests', 'urllib3']" if imports_docker else "[]")
