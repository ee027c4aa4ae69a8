"""No label, hand edit or wrong name stops the watcher: hostile labels beside good containers under load,
an invalid hand edit then its fix, edits by rename-over and in place, a --haproxy-container that does
not exist yet, and the owner of a file rewritten by a user who may not keep it."""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import subprocess
from pathlib import Path

import pytest
from conftest import IMAGE, LABEL, RUN, ask_haproxy, http_get, run_cli, wait_until, write_config

import haproxy_docker_config as hdc
import load  # bench/load.py (conftest puts bench/ on the path)

LISTEN, PORT, NETWORK = "haproxy-docker-config.listen", "haproxy-docker-config.port", "haproxy-docker-config.network"
INJECTED = "8080\n    server evil 1.2.3.4:80"
#: Every kind of line a watcher writes on stderr without -v.
LINE = re.compile(r"(warning: |ERROR: |(added|removed|updated) \S+/\S+( \S+)?$|stopped watching; |"
                  r"haproxy answers on |the pass works again$)")


def hostile_labels(listener: str) -> list[dict[str, str]]:
    """One container's labels per hostile value, on the port, listen and network labels."""
    port = [("1" * 10_000), "x" * 100_000, INJECTED, "８０８０", "٨٠٨٠", " 8080 ", "", "80#x", "0", "65536"]
    listen = [f"{listener}\n    server evil 1.2.3.4:80", "l" * 100_000, "", "a b", "#x"]
    network = ["net\n    server evil 1.2.3.4:80", "n" * 10_000, " "]
    return ([{LISTEN: listener, PORT: value} for value in port] + [{LISTEN: value} for value in listen]
            + [{LISTEN: listener, NETWORK: value} for value in network])


def labelled(docker_client, labels: dict[str, str], **kwargs):
    return docker_client.containers.run(IMAGE, detach=True, ports={"8080/tcp": ("127.0.0.1", None)},
                                        labels={**labels, LABEL: RUN}, **kwargs)


def file_servers(path: Path) -> set[str]:
    return set(re.findall(r"^[ \t]*server[ \t]+(\S+)", path.read_text(), re.MULTILINE))


def resilient(tmp_path: Path, listener: str):
    cfg = write_config(tmp_path, listener=listener, template="$id ${ip}:$port check inter 1000 fall 1")
    cfg.path.write_text(cfg.path.read_text().replace(
        "    timeout server 10s\n", "    timeout server 10s\n    retries 3\n    option redispatch 1\n"
                                   "    retry-on all-retryable-errors\n"))
    return cfg


def test_hostile_labels_never_stop_the_watcher_nor_reach_the_file(tmp_path, docker_client, haproxy, watcher) -> None:
    name = f"h{secrets.token_hex(3)}"
    cfg = resilient(tmp_path, name)
    original = cfg.path.read_text()
    haproxy(cfg)
    made: list = []  # every container goes at the end, the stopped one too: a stopped container with a
    try:             # listen label would be listed by a later --sync without -l
        bad = [labelled(docker_client, labels) for labels in hostile_labels(name)]
        made += bad
        good = [labelled(docker_client, {LISTEN: name}) for _ in range(2)]
        made += good
        w = watcher(cfg.path, "--metrics", f"127.0.0.1:{load.free_port()}")  # and an idle pass every 10 s
        wait_until(lambda: file_servers(cfg.path) == {c.short_id for c in good}, 60, w.text)
        wait_until(lambda: {_served(cfg.port) for _ in range(8)} == {c.short_id for c in good}, 30, w.text)
        outcome = load.Outcome()
        with load.Load(cfg.port, 3, outcome):
            third = labelled(docker_client, {LISTEN: name})  # more passes while the bad ones still run
            made.append(third)
            wait_until(lambda: third.short_id in outcome.first_served, 30, w.text)
            third.stop(timeout=5)
            wait_until(lambda: third.short_id not in file_servers(cfg.path), 30, w.text)
            wait_until(lambda: w.text().count(f"removed {name}/{third.short_id}") == 1
                       and "the pass" not in w.text(), 30, w.text)
        assert outcome.failures == [] and {c.short_id for c in good} <= set(outcome.first_served)
        assert w.proc.poll() is None  # still watching
        assert w.stop() == 0
    finally:
        for c in made:
            c.remove(force=True)
    said = w.text().splitlines()
    assert all(LINE.match(line) for line in said), [ln for ln in said if not LINE.match(ln)][:3]
    assert all(len(line) < 1000 for line in said)  # values are shortened, not quoted whole
    for c in bad:  # one warning per bad container, said once however many passes ran
        about = [line for line in said if line.startswith("warning: ") and (c.name in line or c.id in line)]
        assert len(about) == 1, (c.labels, about)
    assert file_servers(cfg.path) == {c.short_id for c in good}
    assert "evil" not in cfg.path.read_text()
    assert re.sub(r"^[ \t]*server[ \t][^\n]*\n", "", cfg.path.read_text(), flags=re.MULTILINE) == original


def test_an_invalid_hand_edit_is_said_once_and_its_fix_caught_up_without_a_docker_event(
        tmp_path, docker_client, haproxy, watcher) -> None:
    name = f"e{secrets.token_hex(3)}"
    cfg = write_config(tmp_path, listener=name)
    haproxy(cfg)
    app = labelled(docker_client, {LISTEN: name})
    try:
        w = watcher(cfg.path, "-l", name)
        wait_until(lambda: file_servers(cfg.path) == {app.short_id}, 30, w.text)
        good = cfg.path.read_text()
        _rename_over(cfg.path, good.replace("    balance roundrobin\n", "    balance roundrobin\n    no-such-kw 1\n"))
        wait_until(lambda: "ERROR: haproxy rejects" in w.text(), 30, w.text)
        app.stop(timeout=5)  # a change the watcher cannot make while the file is invalid
        wait_until(lambda: w.text().count("still failing") == 0 and w.text().count("ERROR:") == 1, 5, w.text)
        assert app.short_id in file_servers(cfg.path)
        invalid = cfg.path.read_text()
        _rename_over(cfg.path, invalid.replace("    no-such-kw 1\n", ""))  # fixed: no Docker event follows
        wait_until(lambda: file_servers(cfg.path) == set(), 30, w.text)
        assert w.stop() == 0
    finally:
        app.remove(force=True)
    text = w.text()
    assert text.count("ERROR: haproxy rejects") == 1
    assert text.index("ERROR: haproxy rejects") < text.index("the pass works again") < \
        text.index(f"removed {name}/{app.short_id}")
    check = subprocess.run(["haproxy", "-c", "-f", str(cfg.path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout


@pytest.mark.parametrize("how", ["rename-over", "in-place"])
def test_a_server_written_by_hand_reaches_the_running_haproxy(tmp_path, docker_client, haproxy, watcher,
                                                               make_container, how) -> None:
    name = f"s{secrets.token_hex(3)}"
    cfg = write_config(tmp_path, listener=name)
    haproxy(cfg)
    w = watcher(cfg.path, "-l", name)
    wait_until(lambda: "runtime>" not in w.text() and w.proc.poll() is None and _answers(cfg), 30, w.text)
    legacy = make_container()  # no label: only the hand-written line names it
    port = legacy.attrs["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"]
    edited = cfg.path.read_text() + f"    server legacy 127.0.0.1:{port} check\n"
    if how == "rename-over":
        _rename_over(cfg.path, edited)
    else:
        with cfg.path.open("r+") as handle:
            handle.write(edited)
    wait_until(lambda: "legacy" in ask_haproxy(cfg.sock, f"show servers state {name}"), 30, w.text)
    wait_until(lambda: http_get(cfg.port) == legacy.short_id, 30, w.text)
    status = run_cli("-f", str(cfg.path), "-l", name, "--status", "--json")
    assert status.returncode == 0, status.stdout
    assert w.stop() == 0 and "ERROR" not in w.text()


def test_a_missing_haproxy_container_is_said_once_and_picked_up_once_it_exists(
        tmp_path, docker_client, watcher) -> None:
    name = f"c{secrets.token_hex(3)}"
    (tmp_path / "conf").mkdir()
    (tmp_path / "run").mkdir()
    cfg = write_config(tmp_path / "conf", listener=name, stats_socket=False)
    cfg.path.write_text(cfg.path.read_text().replace(f"bind 127.0.0.1:{cfg.port}", "bind :8080").replace(
        "global\n", "global\n    stats socket /run/haproxy/admin.sock mode 600 level admin\n"))
    haproxy_name = f"hdc-haproxy-{name}"
    ipam = docker_client.networks.get("bridge").attrs["IPAM"]["Config"][0]
    gateway = ipam.get("Gateway") or str(next(ipaddress.ip_network(ipam["Subnet"]).hosts()))
    app = docker_client.containers.run(IMAGE, detach=True, ports={"8080/tcp": ("", None)},
                                       labels={LISTEN: name, LABEL: RUN})
    proxy = None
    try:
        w = watcher(cfg.path, "-l", name, "--haproxy-container", haproxy_name, "--host-ip", gateway,
                  "--runtime-socket", str(tmp_path / "run" / "admin.sock"))
        wait_until(lambda: f"ERROR: no container {haproxy_name} for --haproxy-container" in w.text(), 30, w.text)
        proxy = docker_client.containers.run(
            "hdc-haproxy:latest", detach=True, name=haproxy_name, labels={LABEL: RUN},
            ports={"8080/tcp": ("127.0.0.1", cfg.port)},
            volumes={str(tmp_path / "conf"): {"bind": "/usr/local/etc/haproxy", "mode": "ro"},
                     str(tmp_path / "run"): {"bind": "/run/haproxy", "mode": "rw"}})
        wait_until(lambda: file_servers(cfg.path) == {app.short_id}, 90, w.text)
        wait_until(lambda: _served(cfg.port) == app.short_id, 30, w.text)
        assert w.stop() == 0
    finally:
        app.remove(force=True)
        if proxy is not None:
            proxy.remove(force=True)
    assert w.text().count("for --haproxy-container") == 1  # said once, however many retries
    assert "Client Error" not in w.text() and "http+docker" not in w.text()


def test_a_stopped_haproxy_container_is_named_not_a_raw_http_error(tmp_path, docker_client, make_container) -> None:
    cfg = write_config(tmp_path)
    stopped = docker_client.containers.create("hdc-haproxy:latest", labels={LABEL: RUN})
    try:
        result = run_cli("-f", str(cfg.path), "-l", "dockerha-app1", "-a", make_container().short_id,
                         "--haproxy-container", stopped.name)
    finally:
        stopped.remove(force=True)
    assert result.returncode == 5
    assert result.stderr == (f"ERROR: haproxy's container {stopped.name} is not running (cannot run haproxy -c "
                             f"there); start it: docker start {stopped.name}\n")


def test_ports_are_ascii_digits_only(tmp_path) -> None:
    cfg = write_config(tmp_path)
    for port in ("８０８０", "٨٠٨٠"):
        result = run_cli("-f", str(cfg.path), "-l", "dockerha-app1", "-a", f"abc:{port}")
        assert (result.returncode, result.stderr) == (
            2, f"ERROR: port '{port}' in 'abc:{port}' is not a number; give ID:PORT with PORT in 1..65535\n")
    long = "9" * 10_000
    result = run_cli("-f", str(cfg.path), "-l", "dockerha-app1", "-a", f"abc:{long}")
    assert result.returncode == 2 and result.stderr.startswith(f"ERROR: port '{'9' * 60}'... (10000 characters) ")


def test_a_service_label_is_checked_like_a_container_label() -> None:
    task = {"ID": "t1", "Slot": 1, "DesiredState": "running", "NetworksAttachments": [],
            "Status": {"State": "running", "ContainerStatus": {"ContainerID": "c" * 64}}}
    service = {"Spec": {"Name": "web", "Labels": {PORT: INJECTED}}}
    backend = hdc.container_from_task(task, service, (8080,))
    with pytest.raises(hdc.LabelError) as raised:
        hdc.chosen_port(backend, None)
    assert str(raised.value) == (f"service web has label {PORT}='8080\\n    server evil 1.2.3.4:80', which is not a "
                                 f"port in 1..65535; fix the label or give web:PORT")


def _rename_over(path: Path, text: str) -> None:
    """Replace the file as vim or sed -i do: a new file renamed over it."""
    temp = path.with_name(f".{path.name}.edit")
    temp.write_text(text)
    os.replace(temp, path)


def _answers(cfg) -> bool:
    try:
        ask_haproxy(cfg.sock, "show info")
        return True
    except OSError:
        return False


def _served(port: int) -> str | None:
    try:
        return http_get(port)
    except OSError:
        return None
