"""The watcher's shortcuts, against real haproxy: validations it already knows are not asked again (a
counting --haproxy-bin wrapper proves it), a rejected text stays rejected, a background validation
killed with the watcher leaves a valid file, a stop disables its server while a validation is held,
and a start after a quiet spell is served before the coalescing window would have ended."""

from __future__ import annotations

import contextlib
import re
import secrets
import signal
import subprocess
import threading
from pathlib import Path

import docker.errors
from conftest import (IMAGE, LABEL, RUN, ask_haproxy, counting_haproxy, http_get, wait_until, write_config)

LISTEN = "haproxy-docker-config.listen"


def labelled(docker_client, listener: str, start: bool = True):
    make = docker_client.containers.run if start else docker_client.containers.create
    return make(IMAGE, detach=True, ports={"8080/tcp": ("127.0.0.1", None)}, labels={LISTEN: listener, LABEL: RUN})


def remove(*containers) -> None:
    """Force-remove containers, those already gone too."""
    for c in containers:
        with contextlib.suppress(docker.errors.NotFound):
            c.remove(force=True)


def file_servers(path: Path) -> set[str]:
    return set(re.findall(r"^[ \t]*server[ \t]+(\S+)", path.read_text(), re.MULTILINE))


def live(cfg, listener: str) -> dict[str, int]:
    """Server name -> srv_admin_state, from the running haproxy."""
    rows = [r.split() for r in ask_haproxy(cfg.sock, f"show servers state {listener}").splitlines()[2:]]
    return {r[3]: int(r[6]) for r in rows if len(r) > 6}


def served(port: int) -> set[str]:
    found = set()
    for _ in range(12):
        try:
            found.add(http_get(port))
        except OSError:
            pass
    return found


def checks_made(calls: Path) -> int:
    return len(calls.read_text().splitlines())


def test_a_text_validated_before_is_written_without_asking_haproxy_again(tmp_path, docker_client, haproxy,
                                                                          watcher) -> None:
    name = f"f{secrets.token_hex(3)}"
    cfg = write_config(tmp_path, listener=name)
    haproxy(cfg)
    checker, calls = counting_haproxy(tmp_path)
    made = []
    try:
        w = watcher(cfg.path, "-v", "-l", name, "--haproxy-bin", str(checker))
        wait_until(lambda: "unchanged" in w.text(), 30, w.tail)  # its first pass is done
        for _ in range(2):  # one server, then none: each shape is asked once
            made.append(labelled(docker_client, name))
            wait_until(lambda: file_servers(cfg.path) == {made[-1].short_id}, 30, w.tail)
            remove(made[-1])
            wait_until(lambda: file_servers(cfg.path) == set(), 30, w.tail)
        assert checks_made(calls) == 2, calls.read_text()  # a listener of one server and one of none
        assert w.stop() == 0
    finally:
        remove(*made)


def test_a_text_never_seen_is_validated(tmp_path, docker_client, haproxy, watcher) -> None:
    name = f"n{secrets.token_hex(3)}"
    cfg = write_config(tmp_path, listener=name)
    haproxy(cfg)
    checker, calls = counting_haproxy(tmp_path)
    pair = [labelled(docker_client, name, start=False) for _ in range(2)]
    try:
        w = watcher(cfg.path, "-v", "-l", name, "--haproxy-bin", str(checker), "--coalesce", "3")
        wait_until(lambda: "unchanged" in w.text(), 30, w.tail)  # its first pass is done
        threads = [threading.Thread(target=c.start) for c in pair]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wait_until(lambda: file_servers(cfg.path) == {c.short_id for c in pair}, 60, w.tail)
        assert w.stop() == 0
    finally:
        remove(*pair)
    candidates = calls.read_text().splitlines()
    assert 1 <= len(candidates) <= 2  # the listener with both was never seen: asked (once, or as 1 then 2)
    check = subprocess.run(["haproxy", "-c", "-f", str(cfg.path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout


def test_a_rejected_text_is_remembered_as_rejected_and_never_applied(tmp_path, docker_client, haproxy,
                                                                     watcher) -> None:
    name = f"r{secrets.token_hex(3)}"
    cfg = write_config(tmp_path, listener=name)
    haproxy(cfg)
    bad = tmp_path / "bad-ids"
    bad.write_text("")
    checker, calls = counting_haproxy(tmp_path, f'if [ -s {bad} ] && grep -qf {bad} "$3"; then echo BAD >> {tmp_path}/'
                                                f'bad-checks; echo "[ALERT] refused by the test"; exit 1; fi')
    x = labelled(docker_client, name, start=False)
    bad.write_text(x.id[:12] + "\n")
    try:
        w = watcher(cfg.path, "-v", "-l", name, "--haproxy-bin", str(checker))
        wait_until(lambda: "unchanged" in w.text(), 30, w.tail)
        x.start()
        wait_until(lambda: "haproxy rejects the changed" in w.text(), 30, w.tail)
        wait_until(lambda: w.text().count("still failing") >= 2, 30, w.tail)  # retried twice since
        assert (tmp_path / "bad-checks").read_text().count("BAD") == 1  # asked once, then remembered
        assert x.id[:12] not in cfg.path.read_text() and x.id[:12] not in live(cfg, name)
        remove(x)
        wait_until(lambda: "the pass works again" in w.text(), 60, w.tail)
        assert w.stop() == 0
    finally:
        remove(x)
    assert w.text().count("ERROR: haproxy rejects the changed") == 1


def test_kill_9_during_a_background_validation_leaves_a_valid_file_and_a_restart_converges(
        tmp_path, docker_client, haproxy, watcher) -> None:
    name = f"k{secrets.token_hex(3)}"
    cfg = write_config(tmp_path, listener=name)
    haproxy(cfg)
    held = tmp_path / "held"
    # the placeholders of a background validation: ids 000000000001, 000000000002...
    checker, _ = counting_haproxy(tmp_path, f'if grep -q 00000000000 "$3"; then touch {held}; sleep 60; fi')
    app = labelled(docker_client, name, start=False)
    try:
        w = watcher(cfg.path, "-v", "-l", name, "--haproxy-bin", str(checker))
        wait_until(lambda: "unchanged" in w.text(), 30, w.tail)  # its first pass is done
        created = labelled(docker_client, name, start=False)  # its create event asks for a validation
        try:
            wait_until(held.exists, 30, w.tail)
            w.stop(signal.SIGKILL)
        finally:
            remove(created)
        before = cfg.path.read_text()
        check = subprocess.run(["haproxy", "-c", "-f", str(cfg.path)], capture_output=True, text=True)
        assert check.returncode == 0 and file_servers(cfg.path) == set(), check.stdout
        assert not list(tmp_path.glob(".haproxy.cfg.*"))  # the candidate was not beside the config
        app.start()
        again = watcher(cfg.path, "-l", name, log=tmp_path / "again.log")
        wait_until(lambda: file_servers(cfg.path) == {app.short_id}, 30, again.tail)
        wait_until(lambda: served(cfg.port) == {app.short_id}, 30, again.tail)
        assert before != cfg.path.read_text()
        assert again.stop() == 0
    finally:
        remove(app)


def test_a_stop_during_a_slow_validation_disables_its_server_at_once(tmp_path, docker_client, haproxy,
                                                                      watcher) -> None:
    name = f"d{secrets.token_hex(3)}"
    cfg = write_config(tmp_path, listener=name)
    haproxy(cfg)
    hold, held, go = tmp_path / "hold", tmp_path / "held", tmp_path / "go"
    checker, _ = counting_haproxy(tmp_path, f'if [ -e {hold} ]; then touch {held}; i=0; while [ ! -e {go} ] && '
                                            f'[ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; fi')
    a = labelled(docker_client, name)
    b = labelled(docker_client, name, start=False)
    try:
        w = watcher(cfg.path, "-l", name, "--haproxy-bin", str(checker))
        wait_until(lambda: file_servers(cfg.path) == {a.short_id}, 30, w.tail)
        wait_until(lambda: live(cfg, name).get(a.short_id) == 0, 30, w.tail)
        hold.touch()
        b.start()  # its pass waits in a validation until `go`
        wait_until(held.exists, 30, w.tail)
        a.stop(timeout=10)
        wait_until(lambda: live(cfg, name).get(a.short_id, 0) & 1, 30, w.tail)  # disabled: MAINT
        assert not go.exists()  # while the validation is still held
        go.touch()
        wait_until(lambda: file_servers(cfg.path) == {b.short_id}, 30, w.tail)
        wait_until(lambda: a.short_id not in live(cfg, name), 30, w.tail)  # deleted once unused
        assert w.stop() == 0
    finally:
        go.touch()
        remove(a, b)


def test_a_start_after_a_quiet_spell_is_served_before_the_window_would_end(tmp_path, docker_client, haproxy,
                                                                           watcher) -> None:
    name = f"e{secrets.token_hex(3)}"
    cfg = write_config(tmp_path, listener=name)
    haproxy(cfg)
    w = watcher(cfg.path, "-v", "-l", name, "--coalesce", "2")
    wait_until(lambda: "unchanged" in w.text(), 30, w.tail)  # its first pass is done
    quiet = threading.Event()
    threading.Timer(2.5, quiet.set).start()  # the first pass's window is over by then
    quiet.wait()
    window_over = threading.Event()
    app = labelled(docker_client, name)
    try:
        threading.Timer(2.0, window_over.set).start()  # a trailing window would open its pass now
        wait_until(lambda: app.short_id in served(cfg.port) or window_over.is_set(), 30, w.tail)
        assert not window_over.is_set(), "served only once the coalescing window had ended"
        assert w.stop() == 0
    finally:
        remove(app)
