"""--watch --metrics: Prometheus metrics and /healthz scraped over loopback while containers come and go,
an engine that stops and comes back, and --log-format json.

The engine that is stopped is a private dockerd of this test (bench/private_engine.py: own socket,
data root and bridge); the engine everybody else uses is never stopped.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import docker.errors
import pytest
from conftest import CLI, IMAGE, LABEL, RUN, free_port, haproxy_pids, write_config
from prometheus_client.parser import text_string_to_metric_families
from private_engine import HOST_IP, PrivateEngine

LISTEN = "haproxy-docker-config.listen"
PREFIX = "haproxy_docker_config_"
LINE_KEYS = ["time", "level", "listener", "action", "server", "address", "engine", "message"]
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(port: int, path: str) -> tuple[int, str]:
    """GET http://127.0.0.1:port/path with a plain HTTP client: (status, body)."""
    try:
        with _OPENER.open(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics: (name, sorted labels) -> value."""
    code, text = get(port, "/metrics")
    assert code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples, name: str, **labels: str) -> float:
    return samples.get((PREFIX + name, tuple(sorted(labels.items()))), 0.0)


def wait_for(predicate, timeout: float, what: str) -> float:
    """Seconds until predicate() held; fails naming `what` after timeout."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, f"timed out waiting for {what}"
        time.sleep(0.2)
    return time.monotonic() - started


def healthz(port: int) -> int:
    """The status of /healthz; 0 while nothing listens yet."""
    try:
        return get(port, "/healthz")[0]
    except OSError:
        return 0


def metrics_watcher(watcher, cfg, listener: str, *args: str):
    """A --watch --metrics on a free loopback port (the conftest Watcher), and that port."""
    port = free_port()
    return watcher(cfg.path, "-l", listener, "--metrics", f"127.0.0.1:{port}", *args), port


@pytest.fixture
def private_engine():
    """A dockerd of this test's own with the test image; everything it ran goes with it."""
    root = Path(tempfile.mkdtemp(prefix="hdc-m-"))  # short: containerd's socket path lives under it
    try:
        with PrivateEngine(root / "e") as engine:
            engine.load_image(IMAGE)
            yield engine
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_labelled(client, listener: str, host_ip: str = "127.0.0.1"):
    return client.containers.run(IMAGE, detach=True, ports={"8080/tcp": (host_ip, None)},
                                 labels={LISTEN: listener, LABEL: RUN})


def test_counters_move_as_containers_come_and_go(tmp_path, docker_client, haproxy, watcher) -> None:
    name = f"m{secrets.token_hex(3)}"  # nobody else's containers carry this listener's label
    cfg = write_config(tmp_path, listener=name)
    haproxy(cfg)
    w, port = metrics_watcher(watcher, cfg, name, "--log-format", "json")
    wait_for(lambda: healthz(port) == 200, 30, "/healthz 200 after the first pass")
    first = scrape(port)
    assert value(first, "managed_servers", listener=name) == 0 and value(first, "sync_passes_total") >= 1
    assert value(first, "seconds_since_sync", engine="unix:///var/run/docker.sock") < 30.25
    made = [run_labelled(docker_client, name) for _ in range(2)]
    try:
        wait_for(lambda: value(scrape(port), "managed_servers", listener=name) == 2, 15, "two managed servers")
        made[0].stop(timeout=1)
        made[1].remove(force=True)
        wait_for(lambda: value(scrape(port), "managed_servers", listener=name) == 0, 15, "none managed")
    finally:
        for c in made:
            with contextlib.suppress(docker.errors.NotFound):
                c.remove(force=True)
    last = scrape(port)
    assert value(last, "server_changes_total", listener=name, change="added") == 2
    assert value(last, "server_changes_total", listener=name, change="removed") == 2
    assert value(last, "writes_total", applied="live") >= 2 and value(last, "writes_total", applied="reload") == 0
    assert value(last, "events_total", engine="unix:///var/run/docker.sock") >= 4  # 2 starts, a stop, a kill...
    assert value(last, "sync_passes_total") > value(first, "sync_passes_total")
    assert value(last, "failed_passes_total") == 0
    assert value(last, "process_resident_memory_bytes") > 0
    assert get(port, "/nope")[0] == 404
    assert w.stop() == 0
    lines = [json.loads(line) for line in w.log.read_text().splitlines()]
    assert all(list(line) == LINE_KEYS for line in lines)
    changes = [(ln["action"], ln["server"]) for ln in lines if ln["action"]]
    assert sorted(changes) == sorted([("added", c.short_id) for c in made] + [("removed", c.short_id) for c in made])
    added = next(ln for ln in lines if ln["action"] == "added")
    assert (added["level"], added["listener"], added["engine"]) == ("info", name, "unix:///var/run/docker.sock")
    assert added["address"].startswith("127.0.0.1:") and added["time"].endswith("Z")
    assert lines[-1]["message"] == f"stopped watching; {cfg.path} is complete"
    assert haproxy_pids(cfg)  # live changes only: the same haproxy throughout


def test_healthz_is_503_while_the_engine_is_stopped_and_200_after(tmp_path, private_engine, watcher) -> None:
    name = f"m{secrets.token_hex(3)}"
    cfg = write_config(tmp_path, listener=name)
    url = private_engine.url
    c = run_labelled(private_engine.client(), name, HOST_IP)
    w, port = metrics_watcher(watcher, cfg, name, "--docker-url", url)
    wait_for(lambda: healthz(port) == 200 and value(scrape(port), "managed_servers", listener=name) == 1, 30,
             "the container managed and /healthz 200")
    private_engine.stop()  # its container stops with it
    try:
        waited = wait_for(lambda: healthz(port) == 503, 90, "/healthz 503 with the engine stopped")
        code, body = get(port, "/healthz")
        assert (code, body) == (503, f"not synced within 30.25 s: {url}\nthe last pass failed: no Docker engine "
                                     f"answered ({url}); start dockerd or check --docker-url\n")
        down = scrape(port)
        assert value(down, "pass_failing") == 1
        assert value(down, "seconds_since_sync", engine=url) > 30.25 and value(down, "failed_passes_total") >= 1
        assert waited > 20  # healthy as long as the last pass is recent enough
    finally:
        private_engine.start()
    wait_for(lambda: healthz(port) == 200, 60, "/healthz 200 with the engine back")
    # the passes retry on their own connection; the event stream comes back after its own backoff
    wait_for(lambda: value(scrape(port), "engine_reconnects_total", engine=url) >= 1, 30, "the stream back")
    assert value(scrape(port), "pass_failing") == 0
    wait_for(lambda: value(scrape(port), "managed_servers", listener=name) == 0, 30, "the dead container removed")
    assert w.stop() == 0
    assert f"removed {name}/{c.short_id}" in w.log.read_text()


def test_metrics_errors(tmp_path) -> None:
    cfg = write_config(tmp_path)
    before = cfg.path.read_bytes()

    def cli(*args: str, python: list[str] | None = None) -> tuple[int, str]:
        argv = python or [str(CLI)]
        result = subprocess.run([*argv, "-f", str(cfg.path), "-l", "dockerha-app1", *args], capture_output=True,
                                text=True, timeout=30)
        return result.returncode, result.stderr

    assert cli("--verify", "--metrics", "127.0.0.1:9101") == (2, "ERROR: --metrics and --log-format go with --watch\n")
    code, err = cli("--sync", "--log-format", "json")  # asked for JSON lines: the error is one too
    assert (code, json.loads(err)["level"], json.loads(err)["message"]) == (
        2, "error", "--metrics and --log-format go with --watch")
    assert cli("--watch", "--metrics", "9101") == (2, "ERROR: --metrics '9101' is not ADDR:PORT; give e.g. "
                                                      "127.0.0.1:9101\n")
    assert cli("--watch", "--metrics", "127.0.0.1:0") == (2, "ERROR: port 0 in '127.0.0.1:0' is out of range; "
                                                             "give a port in 1..65535\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli("--watch", "--metrics", f"127.0.0.1:{port}") == (
            2, f"ERROR: --metrics 127.0.0.1:{port}: cannot listen there (Address already in use); "
               f"give a free ADDR:PORT\n")
        code, err = cli("--watch", "--metrics", f"127.0.0.1:{port}", "--log-format", "json")
        assert code == 2 and json.loads(err)["level"] == "error" and "cannot listen there" in json.loads(err)["message"]
    no_library = "import sys; sys.modules['prometheus_client'] = None; import haproxy_docker_config as h; " \
                 "sys.exit(h.main(sys.argv[1:]))"
    assert cli("--watch", "--metrics", f"127.0.0.1:{free_port()}", python=[sys.executable, "-c", no_library]) == (
        2, "ERROR: --metrics needs the prometheus_client library; pip install haproxy-docker-config[metrics]\n")
    assert cfg.path.read_bytes() == before
