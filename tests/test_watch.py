"""--watch with live traffic, bursts, SIGTERM, a restarting engine, and two engines in one listener."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
import urllib.request

import pytest
from conftest import CLI, IMAGE, LABEL, RUN, ask_haproxy, haproxy_pids, run_cli, wait_until, write_config

import load  # bench/load.py (conftest puts bench/ on the path)

LISTEN = "haproxy-docker-config.listen"
MAIN_URL = "unix:///var/run/docker.sock"


def resilient_config(tmp_path):
    """A killed container takes its in-flight requests with it; haproxy retries them elsewhere."""
    cfg = write_config(tmp_path, listener="web", template="$id ${ip}:$port check inter 1000 fall 1")
    text = cfg.path.read_text().replace("    timeout server 10s\n", "    timeout server 10s\n    retries 3\n"
                                        "    option redispatch 1\n    retry-on all-retryable-errors\n")
    cfg.path.write_text(text)
    return cfg


def live_servers(cfg) -> set[str]:
    """Servers the running haproxy sends traffic to (not in maintenance), asked on its stats socket."""
    rows = [line.split() for line in ask_haproxy(cfg.sock, "show servers state web").splitlines()[2:]]
    return {row[3] for row in rows if len(row) > 6 and row[6] == "0"}  # srv_admin_state 0: ready


def file_servers(cfg) -> set[str]:
    return {ln.split()[1] for ln in cfg.path.read_text().splitlines() if ln.strip().startswith("server ")}


class Watcher:
    """The installed CLI running --watch, its stderr in a file."""

    def __init__(self, cfg, *args: str) -> None:
        self.log = cfg.path.with_name("watch.log")
        with self.log.open("w") as err:
            self.proc = subprocess.Popen([str(CLI), "-f", str(cfg.path), "--watch", "-v", *args],
                                         stdout=subprocess.PIPE, stderr=err, text=True)

    def text(self) -> str:
        return self.log.read_text()

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=30)
        return self.proc.returncode, out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def watcher():
    started: list[Watcher] = []

    def start(cfg, *args: str) -> Watcher:
        started.append(Watcher(cfg, *args))
        return started[-1]

    yield start
    for w in started:
        w.kill()


def run_labelled(client, listener: str = "web", host_ip: str = "127.0.0.1", start: bool = True):
    make = client.containers.run if start else client.containers.create
    c = make(IMAGE, detach=True, ports={"8080/tcp": (host_ip, None)}, labels={LISTEN: listener, LABEL: RUN})
    return c


def test_watch_follows_containers_with_no_request_lost(tmp_path, docker_client, haproxy, watcher) -> None:
    cfg = resilient_config(tmp_path)
    made = [run_labelled(docker_client)]
    try:
        haproxy(cfg)
        w = watcher(cfg, "-l", "web")
        wait_until(lambda: made[0].short_id in live_servers(cfg), 10)
        outcome = load.Outcome()
        with load.Load(cfg.port, 3, outcome):
            for _ in range(3):
                made.append(run_labelled(docker_client))
                assert wait_until(lambda: made[-1].short_id in live_servers(cfg), 5) <= 1.0
                wait_until(lambda: made[-1].short_id in outcome.first_served, 5)
            for gone in made[1:3]:  # docker stop: the server is drained while the container shuts down
                threading.Thread(target=gone.stop, kwargs={"timeout": 5}).start()
                assert wait_until(lambda: gone.short_id not in live_servers(cfg), 5) <= 1.0
            time.sleep(1.5)
            assert outcome.failures == [] and len(outcome.latencies) > 100
            killed_at = time.monotonic()  # docker kill: a request answered at that instant cannot be saved
            made[3].kill()
            assert wait_until(lambda: made[3].short_id not in live_servers(cfg), 5) <= 1.0
            time.sleep(0.5)
        assert all(when - killed_at < 0.25 for when, _ in outcome.failures), outcome.failures
        assert file_servers(cfg) == {made[0].short_id}
        code, out = w.stop()
        assert (code, out) == (0, "")
        assert f"added web/{made[3].short_id} 127.0.0.1:" in w.text()
        assert f"removed web/{made[3].short_id}" in w.text()
        assert subprocess.run(["haproxy", "-c", "-q", "-f", str(cfg.path)]).returncode == 0
    finally:
        for c in made:
            c.remove(force=True)


def test_a_burst_of_20_starts_gives_one_write_and_no_reload(tmp_path, docker_client, haproxy, watcher) -> None:
    cfg = write_config(tmp_path, listener="web")
    created = [run_labelled(docker_client, start=False) for _ in range(20)]
    try:
        pids = haproxy(cfg)
        w = watcher(cfg, "-l", "web", "-h", str(cfg.pidfile), "--coalesce", "5")
        wait_until(lambda: "unchanged" in w.text(), 10)
        time.sleep(0.5)
        writes_before = w.text().count("wrote ")
        threads = [threading.Thread(target=c.start) for c in created]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wait_until(lambda: len(file_servers(cfg)) == 20, 10)
        time.sleep(1.0)
        assert w.text().count("wrote ") - writes_before == 1
        assert haproxy_pids(cfg) == pids and live_servers(cfg) == {c.short_id for c in created}
        assert w.stop()[0] == 0
    finally:
        for c in created:
            c.remove(force=True)


def test_sigterm_during_changes_leaves_a_valid_file_and_exit_0(tmp_path, docker_client, watcher) -> None:
    cfg = write_config(tmp_path, listener="web")
    made = []
    try:
        w = watcher(cfg, "-l", "web")
        wait_until(lambda: "stats socket" in w.text() or "unchanged" in w.text() or "events" in w.text(), 10)
        made = [run_labelled(docker_client) for _ in range(3)]
        code, _ = w.stop()
        assert code == 0 and "stopped watching" in w.text()
        assert subprocess.run(["haproxy", "-c", "-q", "-f", str(cfg.path)]).returncode == 0
        assert file_servers(cfg) <= {c.short_id for c in made}
    finally:
        for c in made:
            c.remove(force=True)


def _http_ok(ip: str, port: int) -> bool:
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(f"http://{ip}:{port}/", timeout=1):
            return True
    except OSError:
        return False


def run_on_second(engine):
    c = run_labelled(engine.client(), host_ip="127.0.0.2")
    c.reload()
    port = int(c.attrs["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"])
    wait_until(lambda: _http_ok("127.0.0.2", port), 10)
    return c, port


def test_two_engines_in_one_listener_and_one_going_down(tmp_path, docker_client, second_engine, haproxy,
                                                        make_container) -> None:
    cfg = write_config(tmp_path, listener="web", template="$id ${ip}:$port")
    local = make_container(labels={LISTEN: "web"})
    remote, remote_port = run_on_second(second_engine)
    engines = ["--docker-url", MAIN_URL, "--docker-url", second_engine.url]
    result = run_cli("-f", str(cfg.path), "-l", "web", "--sync", *engines)
    assert result.returncode == 0, result.stderr
    assert f"{remote.short_id}        \tadded\t127.0.0.2:{remote_port}" in result.stdout.splitlines()
    haproxy(cfg)
    seen = {load.Load(cfg.port, 1, load.Outcome())._get() for _ in range(10)}
    assert seen == {local.short_id, remote.short_id}
    second_engine.stop()
    try:
        local.stop(timeout=1)
        result = run_cli("-f", str(cfg.path), "-l", "web", "--sync", *engines)
        assert result.returncode == 0
        assert result.stdout == "%-20s\tremoved\n" % local.short_id
        assert f"Docker engine at {second_engine.url}" in result.stderr
        assert "its servers are left as they are" in result.stderr
        assert file_servers(cfg) == {remote.short_id}  # the engine that is down keeps its server
    finally:
        second_engine.start()
        remote.reload()
        remote.remove(force=True)


def test_watch_reconnects_after_the_engine_restarts(tmp_path, second_engine, watcher) -> None:
    cfg = write_config(tmp_path, listener="web")
    before, _ = run_on_second(second_engine)
    w = watcher(cfg, "-l", "web", "--docker-url", second_engine.url)
    wait_until(lambda: before.short_id in file_servers(cfg), 10)
    second_engine.stop()  # its containers stop with it
    second_engine.start()
    after, _ = run_on_second(second_engine)
    wait_until(lambda: file_servers(cfg) == {after.short_id}, 30)
    assert "lost the events of" in w.text()
    assert w.stop()[0] == 0
    for c in (before, after):
        c.remove(force=True)


def test_an_unhealthy_container_leaves_until_healthy_again(tmp_path, docker_client, haproxy, watcher) -> None:
    """The 15 s deadlines time the watcher's reaction to a health change and nothing else: on a busy
    machine, a watcher's start (imports, first pass) and a container's start can each take longer."""
    cfg = write_config(tmp_path, listener="web")
    haproxy(cfg)
    w = watcher(cfg, "-l", "web")
    wait_until(lambda: "unchanged" in w.text() or "wrote " in w.text(), 60, w.text)  # its first pass is done
    # Docker probes 0.5 s after the start, maybe before start.sh has written the page: with retries 1
    # such a probe would turn the container unhealthy at once, so failures count only once it was healthy.
    c = docker_client.containers.run(
        IMAGE, detach=True, ports={"8080/tcp": ("127.0.0.1", None)}, labels={LISTEN: "web", LABEL: RUN},
        healthcheck={"test": ["CMD-SHELL", "test -f /www/index.html"], "interval": 500_000_000, "retries": 1,
                     "start_period": 60_000_000_000})

    def health() -> str:
        c.reload()
        return c.attrs["State"]["Health"]["Status"]

    def explain() -> str:
        return f"Docker says {health()}; the watcher logged:\n{w.text()[-3000:]}"
    try:
        wait_until(lambda: health() == "healthy", 60, explain)
        wait_until(lambda: c.short_id in live_servers(cfg), 15, explain)
        assert c.exec_run(["/bin/busybox", "mv", "/www/index.html", "/www/away"]).exit_code == 0
        wait_until(lambda: c.short_id not in file_servers(cfg), 15, explain)
        assert c.exec_run(["/bin/busybox", "mv", "/www/away", "/www/index.html"]).exit_code == 0
        wait_until(lambda: c.short_id in live_servers(cfg), 15, explain)
    finally:
        c.remove(force=True)
