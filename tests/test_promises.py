"""Promises of the docs that had no test, each against the real thing: --drain-timeout on a real session,
Ctrl-C, --dry-run of a rejected change, every --runtime-socket address form on a real haproxy, a re-add
marked up at once, paused containers, the watcher's reconnect backoff."""

from __future__ import annotations

import contextlib
import os
import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (CLI, IMAGE, LABEL, RUN, ask_haproxy, counting_haproxy, free_port, host_port, http_get,
                      run_cli, wait_until, write_config)

LISTEN = "haproxy-docker-config.listen"


def cli(cfg, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("-f", str(cfg.path), "-l", "dockerha-app1", *args)


def state_row(sock: Path, server: str, backend: str = "dockerha-app1") -> list[str] | None:
    """The server's row of `show servers state` (srv_op_state is [5], srv_admin_state [6]); None: unknown."""
    rows = [line.split() for line in ask_haproxy(sock, f"show servers state {backend}").splitlines()[2:]]
    return next((row for row in rows if len(row) > 6 and row[3] == server), None)


def sessions(sock: Path, server: str) -> int:
    """Current sessions of the server, from `show stat` (scur, the 5th field)."""
    for line in ask_haproxy(sock, "show stat dockerha-app1 4 -1").splitlines():
        fields = line.split(",")
        if len(fields) > 4 and fields[1] == server:
            return int(fields[4] or 0)
    return -1


@contextlib.contextmanager
def holding_server() -> Iterator[int]:
    """A TCP server on loopback that accepts connections and keeps them open until the client closes."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def hold(conn: socket.socket) -> None:  # until the peer closes its side: then this one closes too
        with contextlib.suppress(OSError):
            while conn.recv(4096):
                pass
        conn.close()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(listener.accept()[0])
                held[-1].settimeout(None)
                threading.Thread(target=hold, args=(held[-1],), daemon=True).start()
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()


@pytest.mark.parametrize("close_first", [True, False])
def test_drain_timeout_waits_for_the_session_and_gives_up_at_the_limit(tmp_path, haproxy, close_first: bool) -> None:
    """A live delete waits while the server still has a session; it goes on when the session ends, or at
    --drain-timeout when it does not. Asserted by order: what haproxy showed while the run still ran."""
    name = "d0a1b2c3d4e5"
    with holding_server() as port:
        cfg = write_config(tmp_path, extra_listener_lines=f"    mode tcp\n    server {name} 127.0.0.1:{port}")
        haproxy(cfg)
        client = socket.create_connection(("127.0.0.1", cfg.port))
        try:
            wait_until(lambda: sessions(cfg.sock, name) == 1, 30, lambda: ask_haproxy(cfg.sock, "show stat dockerha-app1 4 -1"))
            proc = subprocess.Popen([str(CLI), "-f", str(cfg.path), "-l", "dockerha-app1", "-d", name,
                                     "--drain-timeout", "600" if close_first else "3"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            wait_until(lambda: (state_row(cfg.sock, name) or ["0"] * 7)[6] != "0" or proc.poll() is not None, 60)
            assert proc.poll() is None and sessions(cfg.sock, name) == 1  # draining: waiting for the session
            if close_first:
                client.close()  # the session ends: the delete goes on long before 600 s
            out, err = proc.communicate(timeout=120)
            if not close_first:  # it gave up at the limit while the session was still open
                assert sessions(cfg.sock, name) == 1 and f"server {name} " not in cfg.path.read_text()
                # haproxy deletes no server with a session: the file is updated, and one line says so
                assert proc.returncode == 0 or (proc.returncode == 5 and err.count("\n") == 1 and
                                                "reload haproxy to apply it, or give -h" in err), err
                return
            assert proc.returncode == 0, err
        finally:
            client.close()
        assert state_row(cfg.sock, name) is None and f"server {name} " not in cfg.path.read_text()


def test_ctrl_c_of_a_one_shot_action_exits_130_and_leaves_the_file(tmp_path, make_container) -> None:
    cfg = write_config(tmp_path, stats_socket=False)
    held = tmp_path / "held"
    wrapper, _ = counting_haproxy(tmp_path, f"touch {held}; sleep 30")
    before = cfg.path.read_bytes()
    # as at a terminal: a suite started in the background (`scripts/test.sh &`) passes SIGINT on ignored
    proc = subprocess.Popen([str(CLI), "-f", str(cfg.path), "-l", "dockerha-app1", "-a", make_container().short_id,
                             "--haproxy-bin", str(wrapper)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_until(held.exists, 60)  # in the middle of its validation
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the wrapper's sleep too
    assert (proc.returncode, out) == (130, "")
    assert cfg.path.read_bytes() == before and not list(tmp_path.glob(".haproxy.cfg.*"))


def test_sigint_ends_a_watch_with_0(tmp_path, watcher) -> None:
    cfg = write_config(tmp_path, listener=f"w{RUN}", stats_socket=False)
    w = watcher(cfg.path, "-v", "-l", f"w{RUN}")
    wait_until(lambda: "unchanged" in w.text(), 60, w.tail)
    assert w.stop(signal.SIGINT) == 0
    assert w.text().splitlines()[-1] == f"stopped watching; {cfg.path} is complete"


def test_dry_run_of_a_change_haproxy_rejects_exits_5(tmp_path, make_container) -> None:
    cfg = write_config(tmp_path, template="$id ${ip}:$port check bogus-keyword")
    before = cfg.path.read_bytes()
    result = cli(cfg, "-a", make_container().short_id, "--dry-run")
    assert (result.returncode, result.stdout) == (5, "")
    assert result.stderr.splitlines()[0] == f"ERROR: haproxy rejects the changed {cfg.path}; the file is left untouched"
    assert cfg.path.read_bytes() == before


def test_every_runtime_socket_address_form_reaches_a_real_haproxy(tmp_path, make_container, haproxy) -> None:
    """One haproxy with a stats socket at each form --runtime-socket takes; each form adds a server live."""
    ipv4, plain, abns = free_port(), free_port(), f"hdc-{RUN}-{free_port()}"
    forms = {"path": str(tmp_path / "admin.sock"), "unix@": f"unix@{tmp_path / 'second.sock'}",
             "abns@": f"abns@{abns}", "ipv4@": f"ipv4@127.0.0.1:{ipv4}", "host:port": f"127.0.0.1:{plain}"}
    cfg = write_config(tmp_path)
    sockets = "".join(f"    stats socket {address} level admin\n" for form, address in forms.items() if form != "path")
    cfg.path.write_text(cfg.path.read_text().replace("global\n", "global\n" + sockets))
    haproxy(cfg)
    for form, address in forms.items():
        c = make_container()
        result = cli(cfg, "-a", c.short_id, "--runtime-socket", address, "--json")
        assert (result.returncode, json.loads(result.stdout)["runtime"]) == (0, "applied"), (form, result.stderr)
        assert state_row(cfg.sock, c.short_id) is not None, form  # haproxy has it, asked on the plain socket
        wait_until(lambda: c.short_id in {http_get(cfg.port) for _ in range(12)}, 30)


def test_a_re_add_with_a_new_port_is_marked_up_at_once(tmp_path, make_container, haproxy) -> None:
    """Health checks every 60 s could not raise it in time: the server is UP right after the command because
    the tool said `set server ... health up`."""
    cfg = write_config(tmp_path, template="$name ${ip}:$port check inter 60s")
    haproxy(cfg)
    name = f"hdc-readd-{RUN}"
    first = make_container(name=name)
    assert cli(cfg, "-a", name).returncode == 0
    ask_haproxy(cfg.sock, f"set server dockerha-app1/{name} health down")
    assert state_row(cfg.sock, name)[5] == "0"  # srv_op_state 0: DOWN
    first.remove(force=True)
    second = make_container(name=name)
    assert host_port(second) != host_port(first)
    result = cli(cfg, "-a", name)
    assert result.returncode == 0, result.stderr
    row = state_row(cfg.sock, name)
    assert (row[4], row[5], row[18]) == ("127.0.0.1", "2", str(host_port(second)))  # addr, UP, port
    assert http_get(cfg.port) == second.short_id


def test_a_paused_container_is_kept_out_of_sync_and_watch(tmp_path, docker_client, haproxy, watcher) -> None:
    listener = f"p{RUN}"
    cfg = write_config(tmp_path, listener=listener)
    haproxy(cfg)
    run = lambda: docker_client.containers.run(IMAGE, detach=True, ports={"8080/tcp": ("127.0.0.1", None)},  # noqa
                                               labels={LISTEN: listener, LABEL: RUN})
    kept, paused = run(), run()
    try:
        paused.pause()
        synced = run_cli("-f", str(cfg.path), "-l", listener, "--sync")
        assert synced.returncode == 0, synced.stderr
        assert servers(cfg) == {kept.short_id}
        w = watcher(cfg.path, "-l", listener)
        paused.unpause()
        wait_until(lambda: servers(cfg) == {kept.short_id, paused.short_id}, 60, w.tail)
        kept.pause()
        wait_until(lambda: servers(cfg) == {paused.short_id}, 60, w.tail)
        wait_until(lambda: {http_get(cfg.port) for _ in range(6)} == {paused.short_id}, 30)
        assert w.stop() == 0
    finally:
        for c in (kept, paused):
            c.remove(force=True)


def servers(cfg) -> set[str]:
    return {ln.split()[1] for ln in cfg.path.read_text().splitlines() if ln.strip().startswith("server ")}


class SwitchableEngine:
    """A unix socket in front of the local dockerd. Once `refuse()`d it breaks the event streams and closes
    every new GET /events at once (other requests still pass): it records when each /events came, so the
    watcher's attempts to follow the events again are seen where they arrive."""

    def __init__(self, path: Path) -> None:
        self.path, self.refusing, self.events = path, False, []
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(path))
        self.listener.listen(64)
        self.open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn = self.listener.accept()[0]
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        head = b""
        with contextlib.suppress(OSError):
            while b"\r\n" not in head and (data := conn.recv(65536)):
                head += data
        if b" /events" in head.split(b"\r\n", 1)[0] or b"/events?" in head.split(b"\r\n", 1)[0]:
            self.events.append(time.monotonic())
            if self.refusing:
                conn.close()
                return
        engine = socket.socket(socket.AF_UNIX)
        engine.connect("/var/run/docker.sock")
        engine.sendall(head)
        self.open += [conn, engine]
        for a, b in ((conn, engine), (engine, conn)):
            threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def refuse(self) -> float:
        """From now on, close every /events at once; the open connections too (the event stream breaks)."""
        self.refusing = True
        for conn in self.open:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        return time.monotonic()

    def close(self) -> None:
        self.listener.close()
        for conn in self.open:
            conn.close()


def test_the_watcher_reconnects_with_growing_backoff(tmp_path, watcher) -> None:
    """Documented: 0.5 s doubling to 10 s. Asserted: the attempts after the engine went away come further and
    further apart (order and spacing, no absolute bound), and the watcher says so."""
    engine = SwitchableEngine(tmp_path / "engine.sock")
    try:
        cfg = write_config(tmp_path, listener=f"b{RUN}", stats_socket=False)
        w = watcher(cfg.path, "-l", f"b{RUN}", "--docker-url", f"unix://{engine.path}")
        wait_until(lambda: len(engine.events) >= 1, 60, w.tail)  # it follows the events
        gone = engine.refuse()
        wait_until(lambda: len([t for t in engine.events if t > gone]) >= 4, 60, w.tail)
        attempts = [t for t in engine.events if t > gone][:4]
        gaps = [b - a for a, b in zip(attempts, attempts[1:])]
        assert gaps == sorted(gaps) and gaps[-1] > 1.5 * gaps[0], gaps
        assert "retrying in 0.5s" in w.text() and "retrying in 1s" in w.text()
        assert w.stop() == 0
    finally:
        engine.close()
