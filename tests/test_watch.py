"""--watch with live traffic, bursts, SIGTERM, a restarting engine, and two engines in one listener."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
import urllib.request

from conftest import (IMAGE, LABEL, RUN, FileWrites, ask_haproxy, counting_haproxy, haproxy_pids, run_cli,
                      wait_until, write_config)

import load  # bench/load.py (conftest puts bench/ on the path)

LISTEN = "haproxy-docker-config.listen"
MAIN_URL = "unix:///var/run/docker.sock"
#: A listener of this run only: label-driven watchers of other suites on this dockerd never see it.
MINE = f"w{RUN}"


def resilient_config(tmp_path):
    """A killed container takes its in-flight requests with it; haproxy retries them elsewhere."""
    cfg = write_config(tmp_path, listener="web", template="$id ${ip}:$port check inter 1000 fall 1")
    text = cfg.path.read_text().replace("    timeout server 10s\n", "    timeout server 10s\n    retries 3\n"
                                        "    option redispatch 1\n    retry-on all-retryable-errors\n")
    cfg.path.write_text(text)
    return cfg


def live_servers(cfg, listener: str = "web") -> set[str]:
    """Servers the running haproxy sends traffic to (not in maintenance), asked on its stats socket."""
    rows = [line.split() for line in ask_haproxy(cfg.sock, f"show servers state {listener}").splitlines()[2:]]
    return {row[3] for row in rows if len(row) > 6 and row[6] == "0"}  # srv_admin_state 0: ready


def file_servers(cfg) -> set[str]:
    return {ln.split()[1] for ln in cfg.path.read_text().splitlines() if ln.strip().startswith("server ")}


def run_labelled(client, listener: str = "web", host_ip: str = "127.0.0.1", start: bool = True):
    make = client.containers.run if start else client.containers.create
    c = make(IMAGE, detach=True, ports={"8080/tcp": (host_ip, None)}, labels={LISTEN: listener, LABEL: RUN})
    return c


def served_since(outcome: load.Outcome, count: int, more: int) -> bool:
    """Whether `more` requests were answered after the first `count`."""
    return len(outcome.latencies) >= count + more


def test_watch_follows_containers_with_no_request_lost(tmp_path, docker_client, haproxy, watcher) -> None:
    """How soon is bench/load.py's (and bench/soak.py's) figure; this asserts the outcome and the order:
    no failed request while containers start and stop, and after a kill only requests in flight then."""
    cfg = resilient_config(tmp_path)
    made = [run_labelled(docker_client)]
    try:
        haproxy(cfg)
        w = watcher(cfg.path, "-v", "-l", "web")
        wait_until(lambda: made[0].short_id in live_servers(cfg), 60, w.tail)
        outcome = load.Outcome()
        with load.Load(cfg.port, 3, outcome):
            for _ in range(3):
                made.append(run_labelled(docker_client))
                wait_until(lambda: made[-1].short_id in outcome.first_served, 30, w.tail)
            for gone in made[1:3]:  # docker stop: the server is drained while the container shuts down
                threading.Thread(target=gone.stop, kwargs={"timeout": 5}).start()
                wait_until(lambda: gone.short_id not in live_servers(cfg), 30, w.tail)
            for gone in made[1:3]:
                gone.wait(timeout=30)
            answered = len(outcome.latencies)
            wait_until(lambda: served_since(outcome, answered, 100), 30)  # the stopped ones are gone for good
            assert outcome.failures == []
            killed_at = time.monotonic()  # docker kill: a request answered at that instant cannot be saved
            made[3].kill()
            wait_until(lambda: made[3].short_id not in live_servers(cfg), 30, w.tail)
            removed_at, answered = time.monotonic(), len(outcome.latencies)
            wait_until(lambda: served_since(outcome, answered, 50), 30)
        assert all(killed_at <= when <= removed_at for when, _ in outcome.failures), outcome.failures
        assert file_servers(cfg) == {made[0].short_id}
        assert w.stop() == 0 and w.stdout() == ""
        assert f"added web/{made[3].short_id} 127.0.0.1:" in w.text()  # the change lines' format
        assert f"removed web/{made[3].short_id}" in w.text()
        assert subprocess.run(["haproxy", "-c", "-q", "-f", str(cfg.path)]).returncode == 0
    finally:
        for c in made:
            c.remove(force=True)


def passes(times: list[float], window: float, seen_after: float, previous: float) -> int:
    """How many passes events at `times` make when the first event after a quiet spell starts one at once
    and the next may start `window` after the last began (the one before them at `previous`); each pass
    lists the containers up to `seen_after` seconds after it started, so it sees the events of that long."""
    count, seen, last = 0, float("-inf"), previous
    for t in sorted(times):
        if t > seen:
            last = max(t, last + window)
            count, seen = count + 1, last + seen_after
    return count


def test_a_burst_of_20_starts_gives_a_pass_at_once_then_one_per_window_and_no_reload(
        tmp_path, docker_client, haproxy, watcher) -> None:
    """Writes are counted by inotify on the file, validations by the --haproxy-bin wrapper, reloads by
    haproxy's pids: the watcher's own log proves none of them. How many passes the starts make is
    Docker's word (its event times): the first start makes one at once, the rest wait for the window
    (on a quiet machine they all fall in it, so two writes); 0.5 s either way of a window's end, and
    up to a second of starts seen by a pass, may fall on either side."""
    cfg = write_config(tmp_path, listener=MINE)
    checker, checks = counting_haproxy(tmp_path)
    created = [run_labelled(docker_client, MINE, start=False) for _ in range(20)]
    try:
        pids = haproxy(cfg)
        with FileWrites(cfg.path) as writes:
            w = watcher(cfg.path, "-v", "-l", MINE, "-h", str(cfg.pidfile), "--coalesce", "5",
                        "--haproxy-bin", str(checker))
            wait_until(lambda: "unchanged" in w.text(), 60, w.tail)  # its first pass is done
            first_pass_done = time.time()
            assert (writes.count(), checks.read_text()) == (0, "")
            since = time.time() - 1
            threads = [threading.Thread(target=c.start) for c in created]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wait_until(lambda: len(file_servers(cfg)) == 20, 60, w.tail)
            assert w.stop() == 0  # a change still pending would be finished before it exits
            ids = {c.id for c in created}
            starts = [e["timeNano"] / 1e9 for e in docker_client.events(
                since=since, until=time.time() + 1, decode=True, filters={"event": "start", "type": "container"})
                if e.get("id") in ids]
            assert len(starts) == 20
            # the first pass began before it was seen done: at most when it was, at least a minute before
            fewest, most = passes(starts, 5.5, 1.0, first_pass_done), passes(starts, 4.5, 0.0, first_pass_done - 60)
            validations = len(checks.read_text().splitlines())
            assert fewest <= writes.count() <= most and 1 <= validations <= writes.count(), (
                f"{writes.count()} writes, {validations} validations for starts spanning "
                f"{max(starts) - min(starts):.1f} s")
        assert most < 20  # the burst was coalesced at all
        assert haproxy_pids(cfg) == pids and live_servers(cfg, MINE) == {c.short_id for c in created}
    finally:
        for c in created:
            c.remove(force=True)


def test_sigterm_during_a_change_finishes_it_and_exits_0(tmp_path, docker_client, watcher) -> None:
    """The validation of a change is held (the wrapper waits for a go file) until SIGTERM has been sent:
    the change is surely in flight, and must land whole."""
    cfg = write_config(tmp_path, listener=MINE)
    held, go = tmp_path / "candidate-held", tmp_path / "go"
    # a pass's candidate, not a background validation's (whose placeholder servers are 000000000001...)
    checker, checks = counting_haproxy(tmp_path, f'grep -q 00000000000 "$3" || {{ cp "$3" {held}; i=0; while [ ! -e '
                                                 f'{go} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; }}')
    made = []
    try:
        w = watcher(cfg.path, "-v", "-l", MINE, "--haproxy-bin", str(checker))
        wait_until(lambda: "unchanged" in w.text(), 60, w.tail)  # its first pass is done
        made = [run_labelled(docker_client, MINE) for _ in range(3)]
        wait_until(held.exists, 60, w.tail)
        in_flight = file_servers_of(held.read_text())
        assert in_flight and in_flight <= {c.short_id for c in made}
        w.proc.send_signal(signal.SIGTERM)
        go.touch()
        # w.stop() sends a second SIGTERM: a handler that took a lock deadlocked on it now and then
        assert w.stop() == 0 and "stopped watching" in w.text(), checks.read_text()
        assert in_flight <= file_servers(cfg) <= {c.short_id for c in made}  # the change in flight landed
        assert subprocess.run(["haproxy", "-c", "-q", "-f", str(cfg.path)]).returncode == 0
    finally:
        for c in made:
            c.remove(force=True)


def file_servers_of(text: str) -> set[str]:
    return {ln.split()[1] for ln in text.splitlines() if ln.strip().startswith("server ")}


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
    w = watcher(cfg.path, "-v", "-l", "web", "--docker-url", second_engine.url)
    wait_until(lambda: before.short_id in file_servers(cfg), 60, w.tail)
    second_engine.stop()  # its containers stop with it
    second_engine.start()
    after, _ = run_on_second(second_engine)
    wait_until(lambda: file_servers(cfg) == {after.short_id}, 60, w.tail)
    assert "lost the events of" in w.text()
    assert w.stop() == 0
    for c in (before, after):
        c.remove(force=True)


def test_an_unhealthy_container_leaves_until_healthy_again(tmp_path, docker_client, haproxy, watcher) -> None:
    """The 15 s deadlines time the watcher's reaction to a health change and nothing else: on a busy
    machine, a watcher's start (imports, first pass) and a container's start can each take longer."""
    cfg = write_config(tmp_path, listener="web")
    haproxy(cfg)
    w = watcher(cfg.path, "-v", "-l", "web")
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
