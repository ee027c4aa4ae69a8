"""Containers reached on their Docker network: haproxy in a container on a user-defined bridge network,
backends on the same network publishing nothing, reached at their address and private port."""

from __future__ import annotations

import json
import random
import subprocess
import threading
import time

import docker.errors
import pytest
from conftest import CLI, IMAGE, LABEL, RUN, ask_haproxy, free_port, http_get, run_cli, serve_more, wait_until

import load  # bench/load.py (conftest puts bench/ on the path)

HAPROXY_IMAGE = "hdc-haproxy:latest"
LISTEN = "haproxy-docker-config.listen"
TEMPLATE = "$id ${ip}:$port check inter 1000 fall 1"
#: A listener name of this run only: the label-driven watchers of other runs never pick these containers up.
WEB = f"web-{RUN}"


def _network(client, prefix: str):
    """A user-defined bridge network with an explicit subnet no other network uses."""
    for _ in range(20):
        subnet = f"10.{random.randint(200, 250)}.{random.randint(0, 255)}.0/24"
        ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=subnet)])
        try:
            return client.networks.create(f"{prefix}-{RUN}-{random.randint(0, 99999)}", driver="bridge", ipam=ipam,
                                          labels={LABEL: RUN})
        except docker.errors.APIError as exc:
            if "overlap" not in str(exc):
                raise
    raise RuntimeError("no free subnet for the test network")


class Site:
    """haproxy in a container on `net`, its frontend published on 127.0.0.1, config and socket dir mounted."""

    def __init__(self, client, tmp_path, net) -> None:
        self.client, self.net, self.port = client, net, free_port()
        self.run_dir = tmp_path / "run"
        self.run_dir.mkdir()
        self.cfg = tmp_path / "haproxy.cfg"
        self.cfg.write_text(
            "global\n    stats socket /run/haproxy/admin.sock mode 600 level admin\n\n"
            "defaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n"
            "    retries 3\n    option redispatch 1\n    retry-on all-retryable-errors\n\n"
            f"listen {WEB}\n    bind :8080\n    balance roundrobin\n    #DOCKERSERVER {TEMPLATE}\n")
        self.made: list = []
        self.haproxy = client.containers.run(
            HAPROXY_IMAGE, detach=True, network=net.name, labels={LABEL: RUN},
            ports={"8080/tcp": ("127.0.0.1", self.port)},
            volumes={str(self.cfg): {"bind": "/usr/local/etc/haproxy/haproxy.cfg", "mode": "ro"},
                     str(self.run_dir): {"bind": "/run/haproxy", "mode": "rw"}})
        self.made.append(self.haproxy)
        self.sock = self.run_dir / "admin.sock"
        deadline = time.monotonic() + 10
        while not self.sock.exists():
            assert time.monotonic() < deadline, self.haproxy.logs().decode()
            time.sleep(0.05)

    def app(self, network=None, exposed=(8080,), labels=None, start: bool = True):
        """A web container on the network (or none), exposing `exposed` and publishing nothing."""
        api = self.client.api
        host_config = api.create_host_config(network_mode=(network or self.net).name)
        created = api.create_container(IMAGE, ports=list(exposed) or None, labels={**(labels or {}), LABEL: RUN},
                                       host_config=host_config)
        container = self.client.containers.get(created["Id"])
        self.made.append(container)
        if start:
            container.start()
            container.reload()
        return container

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli("-f", str(self.cfg), "-l", WEB, "--haproxy-container", self.haproxy.name,
                       "--runtime-socket", str(self.sock), *args)

    def served(self, n: int = 30) -> set[str]:
        """Which containers answer n requests through the published frontend."""
        answers = set()
        for _ in range(n):
            try:
                answers.add(http_get(self.port))
            except OSError:
                answers.add("failed")
        return answers

    def servers(self) -> set[str]:
        return {ln.split()[1] for ln in self.cfg.read_text().splitlines() if ln.strip().startswith("server ")}

    def address(self, container) -> str:
        container.reload()
        return container.attrs["NetworkSettings"]["Networks"][self.net.name]["IPAddress"]

    def close(self) -> None:
        for container in self.made:
            try:
                container.remove(force=True)
            except docker.errors.APIError:
                pass


@pytest.fixture
def site(docker_client, tmp_path):
    net = _network(docker_client, "hdc-net")
    built = None
    try:
        built = Site(docker_client, tmp_path, net)
        yield built
    finally:
        if built:
            built.close()
        net.remove()


@pytest.fixture
def other_network(docker_client):
    net = _network(docker_client, "hdc-other")
    yield net
    net.reload()
    for c in net.containers:
        net.disconnect(c, force=True)
    net.remove()


def test_add_by_network_and_by_detection_serves_exactly_those(site) -> None:
    a, b, c = site.app(), site.app(), site.app()
    added = site.cli("-a", f"{a.short_id},{b.short_id}", "--network", site.net.name, "--json")
    assert added.returncode == 0, added.stderr
    doc = json.loads(added.stdout)
    assert doc["runtime"] == "applied"
    assert [(r["ip"], r["port"], r["network"]) for r in doc["results"]] == \
        [(site.address(a), 8080, site.net.name), (site.address(b), 8080, site.net.name)]
    assert site.served() == {a.short_id, b.short_id}
    detected = site.cli("-a", c.short_id, "-v")  # no --network: the one network shared with haproxy's container
    assert detected.returncode == 0, detected.stderr
    assert (f"{c.short_id}: reached on network {site.net.name}, which it shares with haproxy's container "
            f"{site.haproxy.name}") in detected.stderr
    assert detected.stdout == "%-20s\tbalanced\t%s:8080\n" % (c.short_id, site.address(c))
    assert site.served() == {a.short_id, b.short_id, c.short_id}
    assert site.cli("-d", b.short_id).returncode == 0
    assert site.served() == {a.short_id, c.short_id} and site.servers() == {a.short_id, c.short_id}
    assert site.cli("-c", a.short_id).returncode == 0 and site.cli("-c", b.short_id).returncode == 1
    verified = site.cli("--verify", "--network", site.net.name)
    assert (verified.returncode, verified.stdout) == (0, f"{a.short_id}        \tfound\n{c.short_id}        \tfound\n")
    site.net.disconnect(a)  # running, but haproxy can no longer reach it there
    verified = site.cli("--verify", "--network", site.net.name)
    assert (verified.returncode, verified.stdout) == (1, f"{a.short_id}        \tnot_found\n{c.short_id}        \tfound\n")


def test_adding_twice_changes_nothing_the_second_time(site) -> None:
    a = site.app()
    assert site.cli("-a", a.short_id, "--network", site.net.name).returncode == 0
    before = site.cfg.read_bytes()
    again = site.cli("-a", a.short_id, "--network", site.net.name, "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["changed"] is False
    assert site.cfg.read_bytes() == before


def test_the_published_port_path_stays_without_a_shared_network(site, make_container) -> None:
    published = make_container()  # on the default bridge only, which haproxy's container is not on
    result = site.cli("-a", published.short_id, "--no-runtime", "--json")
    assert result.returncode == 0, result.stderr
    entry = json.loads(result.stdout)["results"][0]
    assert (entry["ip"], entry["port"], entry["network"]) == ("127.0.0.1", _host_port(published), None)


def test_haproxy_in_host_network_mode_keeps_the_published_port_path(site, docker_client, make_container) -> None:
    host_mode = docker_client.containers.create(HAPROXY_IMAGE, network_mode="host", labels={LABEL: RUN})
    site.made.append(host_mode)  # created, never started: only its network mode is read
    on_net = site.app()
    published = make_container(host_ip="")
    result = run_cli("-f", str(site.cfg), "-l", WEB, "-a", published.short_id, "--haproxy-container", host_mode.name,
                     "--host-ip", "127.0.0.9", "--no-validate", "--no-runtime", "--json")
    assert result.returncode == 0, result.stderr
    entry = json.loads(result.stdout)["results"][0]
    assert (entry["ip"], entry["port"], entry["network"]) == ("127.0.0.9", _host_port(published), None)
    refused = run_cli("-f", str(site.cfg), "-l", WEB, "-a", on_net.short_id, "--haproxy-container", host_mode.name,
                      "--no-validate", "--no-runtime")
    assert (refused.returncode, refused.stderr) == (4, f"ERROR: container {on_net.short_id} publishes no tcp port; "
                                                       f"run it with -p HOSTPORT:PORT\n")


def _host_port(container) -> int:
    return int(container.attrs["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"])


def test_bad_network_input_gets_one_line_its_status_and_an_untouched_file(site, other_network) -> None:
    net = site.net.name
    elsewhere = site.app(network=other_network)
    two_ports, no_port = site.app(exposed=(8080, 9090)), site.app(exposed=())
    other_network.connect(site.haproxy)
    on_both = site.app()
    other_network.connect(on_both)
    before = site.cfg.read_bytes()
    cases = [
        (["-a", elsewhere.short_id, "--network", net], 4,
         f"ERROR: container {elsewhere.short_id} is not attached to network {net} (it is on {other_network.name}); "
         f"connect it or give another --network"),
        (["-a", two_ports.short_id, "--network", net], 4,
         f"ERROR: container {two_ports.short_id} exposes several tcp ports (8080, 9090); give {two_ports.short_id}:PORT"),
        (["-a", no_port.short_id, "--network", net], 4,
         f"ERROR: container {no_port.short_id} exposes no tcp port; give {no_port.short_id}:PORT "
         f"or the label haproxy-docker-config.port=PORT"),
        (["-a", no_port.short_id, "--network", "no such net"], 4,
         "ERROR: no Docker network 'no such net'; check the name with docker network ls"),
        (["-a", on_both.short_id], 4,
         f"ERROR: container {on_both.short_id} shares several networks with haproxy's container {site.haproxy.name} "
         f"({', '.join(sorted([net, other_network.name]))}); give --network NAME"),
        (["-l", "web\nserver x", "-a", on_both.short_id, "--network", net], 3,
         f"ERROR: {site.cfg}: no listen or backend section named 'web\\nserver x'; check -l and -f"),
    ]
    for args, status, line in cases:
        result = site.cli(*args)
        assert (result.returncode, result.stdout, result.stderr) == (status, "", line + "\n"), args
        assert site.cfg.read_bytes() == before
    assert site.cli("-a", f"{two_ports.short_id}:9090", "--network", net).returncode == 0
    assert site.served() == {two_ports.short_id}


def test_a_port_label_that_is_not_a_port_is_a_warning_and_the_container_is_skipped(site) -> None:
    good = site.app(labels={LISTEN: WEB})
    bad = site.app(labels={LISTEN: WEB, "haproxy-docker-config.port": "8080\nserver evil 1.2.3.4:80"})
    result = site.cli("--sync", "--network", site.net.name)
    assert result.returncode == 0, result.stderr
    assert result.stderr == (f"warning: container {bad.name} has label haproxy-docker-config.port="
                             f"'8080\\nserver evil 1.2.3.4:80', which is not a port in 1..65535; fix the label "
                             f"or give {bad.name}:PORT; skipped\n")
    assert site.servers() == {good.short_id} and "evil" not in site.cfg.read_text()
    before = site.cfg.read_bytes()
    again = site.cli("--sync", "--network", site.net.name, "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["changed"] is False, again.stderr and site.cfg.read_bytes() == before


def _known(site) -> set[str]:
    """Every server the running haproxy has, in maintenance or not."""
    rows = [line.split() for line in ask_haproxy(site.sock, f"show servers state {WEB}").splitlines()[2:]]
    return {row[3] for row in rows if len(row) > 6}


def _live(site) -> set[str]:
    """Servers haproxy sends traffic to (not in maintenance), asked on its stats socket."""
    rows = [line.split() for line in ask_haproxy(site.sock, f"show servers state {WEB}").splitlines()[2:]]
    return {row[3] for row in rows if len(row) > 6 and row[6] == "0"}


def test_watch_follows_starts_stops_disconnects_and_reconnects_under_load(site) -> None:
    first = site.app(labels={LISTEN: WEB})
    log_path = site.cfg.with_name("watch.log")
    # validated by this host's haproxy -c: the timing asserted is the watcher's, not docker exec's
    # (the test above validates through haproxy's container)
    with log_path.open("w") as err:
        watcher = subprocess.Popen([str(CLI), "-f", str(site.cfg), "-l", WEB, "--watch",
                                    "-v", "--network", site.net.name, "--runtime-socket", str(site.sock)],
                                   stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        wait_until(lambda: first.short_id in _live(site), 60)
        outcome = load.Outcome()
        with load.Load(site.port, 3, outcome):  # how soon each change lands is bench/load.py's figure
            second = site.app(labels={LISTEN: WEB})
            wait_until(lambda: second.short_id in outcome.first_served, 60)
            site.net.disconnect(second)
            wait_until(lambda: second.short_id not in _live(site), 60)
            # the watcher then waits (up to --drain-timeout) for the sessions it had to end before it
            # deletes the server; the reconnect is a change of its own
            wait_until(lambda: second.short_id not in _known(site), 60)
            site.net.connect(second)
            wait_until(lambda: second.short_id in _live(site), 60)
            third = site.app(labels={LISTEN: WEB})
            wait_until(lambda: third.short_id in _live(site), 60)
            stopper = threading.Thread(target=first.stop, kwargs={"timeout": 5})
            stopper.start()
            wait_until(lambda: first.short_id not in _live(site), 60)
            stopper.join()
            serve_more(outcome, 100)
        assert outcome.failures == [] and len(outcome.latencies) > 100
        assert site.servers() == {second.short_id, third.short_id}
        assert {second.short_id, third.short_id} <= set(outcome.first_served)
        watcher.send_signal(15)
        assert watcher.wait(timeout=30) == 0
        text = log_path.read_text()
        assert f"removed {WEB}/{second.short_id}" in text and f"added {WEB}/{second.short_id} {site.address(second)}:8080" in text
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
