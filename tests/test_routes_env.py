"""Routes by host (issue 21) end to end in three environments: haproxy in a container on a user-defined
network shared with the apps, a Swarm service whose tasks run on two nodes, and a TLS frontend choosing
each host's certificate by SNI. Real dockerd, real haproxy, real swarm; nothing mocked."""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import socket
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker.errors
import pytest
from conftest import IMAGE, LABEL, RUN, Cfg, Watcher, ask_haproxy, free_port, run_cli, wait_until

from swarm_support import (MARK, PORT, HaproxyBox, Worker, container_id, copy_images, docker_cli, free_block, shorts,
                           swarm, task_address)

HAPROXY_IMAGE = "hdc-haproxy:2.6"
CONF_DIR = "/usr/local/etc/haproxy"  # where the image reads haproxy.cfg (its CMD: -f CONF_DIR/haproxy.cfg)
MAP_REF = f"{CONF_DIR}/docker-routes.map"  # the map as haproxy in the container sees it
HOST, LISTEN = "haproxy-docker-config.host", "haproxy-docker-config.listen"
TEMPLATE_BACKEND = (
    "backend no-route\n"
    '    http-request return status 404 content-type text/plain string "no route"\n\n'
    "backend docker-template\n"
    "    #DOCKERBACKEND\n"
    "    balance roundrobin\n"
    "    http-response set-header X-Server %[srv_name]\n"
    "    #DOCKERSERVER $id ${ip}:$port check inter 1s rise 1 fall 2\n"
)
DEFAULTS = ("defaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n"
            "    retries 3\n    option redispatch 1\n\n")


def routing_config(socket_path: str, frontends: str) -> str:
    """A config: admin socket, defaults, `frontends` (one holds #DOCKERROUTES), the 404 backend and the template."""
    return (f"global\n    maxconn 256\n    stats socket {socket_path} mode 600 level admin expose-fd listeners\n\n"
            + DEFAULTS + frontends + "\n" + TEMPLATE_BACKEND)


def routes_frontend(port: int) -> str:
    """The frontend of haproxy in a container: all addresses, the marker naming the map as haproxy sees it."""
    return f"frontend www\n    bind :{port}\n    #DOCKERROUTES {MAP_REF}\n    default_backend no-route\n"


# --- asking haproxy as a client would ------------------------------------------------------------------

LOOPBACK = "127.0.0.1"


def request(port: int, host: str, path: str = "/", address: str = LOOPBACK,
            timeout: float = 3.0) -> tuple[int, str, dict[str, str]]:
    """GET http://address:port/path with `Host: host`, no proxy: (status, body stripped, headers)."""
    conn = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace").strip(), {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def routed(port: int, host: str, address: str = LOOPBACK) -> tuple[int, str] | None:
    """(status, body) of one request for `host`; None when the connection failed (haproxy reloading)."""
    with contextlib.suppress(OSError, http.client.HTTPException):
        status, body, _ = request(port, host, address=address)
        return status, body
    return None


def answers(port: int, host: str, tries: int = 12, address: str = LOOPBACK) -> set[tuple[int, str] | None]:
    """Everything `tries` requests for `host` got."""
    return {routed(port, host, address) for _ in range(tries)}


def serves_exactly(port: int, host: str, shorts_wanted: set[str], tries: int = 12, address: str = LOOPBACK) -> bool:
    return answers(port, host, tries, address) == {(200, s) for s in shorts_wanted}


def no_route(port: int, host: str, address: str = LOOPBACK) -> bool:
    return answers(port, host, 4, address) == {(404, "no route")}


def created_backends(config: Path) -> list[str]:
    """Names of the backend sections holding a #DOCKERCREATED line."""
    names, current = [], None
    for line in config.read_text().splitlines():
        if line.startswith("backend "):
            current = line.split()[1]
        elif line.strip().startswith("#DOCKERCREATED") and current:
            names.append(current)
    return names


def section(config: Path, name: str) -> str:
    """The text of `backend NAME` up to the next section ("" when there is none)."""
    out, inside = [], False
    for line in config.read_text().splitlines(keepends=True):
        if line and not line[0].isspace() and line.strip():
            inside = line.split()[:2] == ["backend", name]
        if inside:
            out.append(line)
    return "".join(out)


def map_entries(path: Path) -> list[tuple[str, str]]:
    """(key, backend) lines of a map file; [] when there is none."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [tuple(line.split()[:2]) for line in text.splitlines() if line.strip() and not line.startswith("#")]


def runtime_servers(sock: Path, backend: str) -> set[str]:
    """Server names haproxy runs in `backend` (`show servers state`)."""
    rows = [line.split() for line in ask_haproxy(sock, f"show servers state {backend}").splitlines()[2:]]
    return {row[3] for row in rows if len(row) > 3}


def worker_pid(sock: Path) -> int | None:
    """The Pid line of `show info`: the worker answering on the stats socket (a reload makes a new one)."""
    with contextlib.suppress(OSError):
        for line in ask_haproxy(sock, "show info").splitlines():
            if line.startswith("Pid:"):
                return int(line.split(":", 1)[1])
    return None


def reloads(container) -> int:
    """How many times the master said it loaded a config: once at start, once per reload."""
    return container.logs().decode(errors="replace").count("Loading success")


@contextlib.contextmanager
def haproxy_in_container(client, network: str, directory: Path, config: str, ports: list[int], name: str,
                         address: str = LOOPBACK) -> Iterator[HaproxyBox]:
    """hdc-haproxy:2.6 (haproxy -W as PID 1) on `network`, the config's DIRECTORY bind-mounted as CONF_DIR
    (the map file lives beside haproxy.cfg), its admin socket on a mounted run directory, `ports` published
    on `address`. Removed afterwards, whatever happens."""
    conf, run_dir = directory / "conf", directory / "run"
    conf.mkdir(parents=True)
    run_dir.mkdir(parents=True)
    (conf / "haproxy.cfg").write_text(config)
    container = client.containers.run(
        HAPROXY_IMAGE, detach=True, name=name, network=network, labels={LABEL: RUN, MARK: "1"},
        ports={f"{p}/tcp": (address, None) for p in ports},
        volumes={str(conf): {"bind": CONF_DIR, "mode": "rw"}, str(run_dir): {"bind": "/run/haproxy", "mode": "rw"}})
    try:
        wait_until(lambda: (run_dir / "admin.sock").exists(), 15, lambda: container.logs().decode())
        container.reload()
        published = {p: int(container.attrs["NetworkSettings"]["Ports"][f"{p}/tcp"][0]["HostPort"]) for p in ports}
        yield HaproxyBox(container, conf / "haproxy.cfg", run_dir / "admin.sock", published)
    finally:
        with contextlib.suppress(docker.errors.APIError):
            container.remove(force=True)


@pytest.fixture(scope="module")
def engine(docker_client) -> Iterator[Worker]:
    """A dockerd of this module's own, in a network namespace of its own linked to the host by a veth pair
    (swarm_support's Worker, joined to no swarm). Why: in the all-listeners mode the tool routes every
    container with a host label on its engine, and the main dockerd is shared with other runs that make
    such containers (seen: h1-94b5f2.example.com ...); and a second dockerd in the host's namespace
    (bench/private_engine.py, --iptables=false) cannot carry container-to-container traffic on a user
    network here, since bridged packets cross the host's FORWARD chain, whose policy is DROP. Its ports are
    published on its end of the veth, which the host reaches directly. Torn down in reverse order."""
    with contextlib.ExitStack() as stack:
        block = free_block(docker_client)
        veth = ipaddress.IPv4Network(f"{block.network_address + 253 * 256}/30")
        tag, parent = uuid.uuid4().hex[:4], Path("/tmp/hdc-routes")
        stack.callback(_rmdir, parent)  # last: the worker's root is removed first
        worker = Worker(f"hdcrt{tag}", parent / tag, ipaddress.IPv4Interface(f"{veth[2]}/30"),
                        ipaddress.IPv4Interface(f"{veth[1]}/30"))
        worker.link(stack)
        worker.start(stack)

        def remove_all() -> None:
            with contextlib.suppress(docker.errors.DockerException):
                for c in worker.client().containers.list(all=True):
                    _remove(c)
        stack.callback(remove_all)
        copy_images(worker.url, [IMAGE, HAPROXY_IMAGE])
        yield worker


def _rmdir(path: Path) -> None:
    """Remove an empty directory; one still in use by another run stays."""
    with contextlib.suppress(OSError):
        path.rmdir()


def _remove(container) -> None:
    with contextlib.suppress(docker.errors.APIError):
        container.remove(force=True)


def _stop_watcher(watcher: Watcher | None) -> int | None:
    if watcher is None:
        return None
    if watcher.proc.poll() is not None:
        return watcher.proc.returncode
    watcher.proc.terminate()
    try:
        return watcher.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        watcher.kill()
        return None


# --- 1. haproxy in a container, apps on a user-defined network -------------------------------------------

def test_a_containers_haproxy_routes_hosts_to_apps_on_a_shared_network_and_a_host_joins_live(
        tmp_path, engine) -> None:
    client, tag = engine.client(), uuid.uuid4().hex[:8]
    hosts = {name: f"{name}.example.com" for name in ("a", "b", "c")}
    network = client.networks.create(f"hdc-routes-{tag}", driver="bridge", labels={LABEL: RUN})
    apps, watcher, front = [], None, str(engine.address.ip)
    config = routing_config("/run/haproxy/admin.sock", routes_frontend(8080))

    def app(labels: dict[str, str]):
        """hdc-test-httpd on the shared network only: no published port."""
        made = client.containers.run(IMAGE, detach=True, network=network.name,
                                     labels={**labels, PORT: "8080", LABEL: RUN})  # the image EXPOSEs nothing
        apps.append(made)
        return made

    def ask(host: str, tries: int = 12) -> set:
        return answers(port, host, tries, front)

    try:
        with haproxy_in_container(client, network.name, tmp_path, config, [8080], f"hdc-routes-haproxy-{tag}",
                                  address=front) as box:
            port = box.ports[8080]
            map_file = box.config.with_name("docker-routes.map")
            via = ["--docker-url", engine.url, "--haproxy-container", box.name, "-h", "--runtime-socket",
                   str(box.socket)]
            logs = lambda: box.container.logs().decode(errors="replace")  # noqa: E731
            wait_until(lambda: reloads(box.container) >= 1, 30, logs)
            wait_until(lambda: ask("a.example.com", 4) == {(404, "no route")}, 30, lambda: f"{ask('a.example.com')}")
            a, b = app({HOST: hosts["a"]}), app({HOST: hosts["b"]})
            started = reloads(box.container)
            synced = run_cli("-f", str(box.config), "--sync", *via, "-v")
            assert synced.returncode == 0, synced.stdout + synced.stderr
            wait_until(lambda: reloads(box.container) == started + 1, 30, logs)  # backends made: one reload
            # each host reaches exactly its container (haproxy reaches them on the shared network)
            wait_until(lambda: ask(hosts["a"]) == {(200, a.short_id)} and ask(hosts["b"]) == {(200, b.short_id)}, 30,
                       lambda: f"a: {ask(hosts['a'])} b: {ask(hosts['b'])}\n{synced.stderr}\n{box.config.read_text()}")
            assert request(port, "A.Example.COM:8080", address=front)[:2] == (200, a.short_id)  # case, port ignored
            assert request(port, hosts["a"], address=front)[2]["x-server"] == a.short_id
            assert ask(hosts["c"], 4) == {(404, "no route")}
            assert created_backends(box.config) == [hosts["a"], hosts["b"]]
            assert map_entries(map_file) == [(f"{hosts['a']}/", hosts["a"]), (f"{hosts['b']}/", hosts["b"])]
            for c, host in ((a, hosts["a"]), (b, hosts["b"])):
                c.reload()
                address = c.attrs["NetworkSettings"]["Networks"][network.name]["IPAddress"]
                assert f"server {c.short_id} {address}:8080 " in section(box.config, host), section(box.config, host)
            assert "server " not in section(box.config, "docker-template")

            # a third app: a new host on the EXISTING backend a.example.com, under --watch: no reload
            master, worker, loaded = box.pid(), worker_pid(box.socket), reloads(box.container)
            assert worker is not None
            watcher = Watcher(box.config, *via, "-v", log=tmp_path / "watch.log")
            c = app({HOST: hosts["c"], LISTEN: hosts["a"]})
            both = {(200, a.short_id), (200, c.short_id)}
            wait_until(lambda: ask(hosts["c"], 16) == both, 60, lambda: f"{ask(hosts['c'])}\n{watcher.tail()}")
            assert ask(hosts["a"], 16) == both  # one backend, two servers
            assert ask(hosts["b"]) == {(200, b.short_id)}
            assert (f"{hosts['c']}/", hosts["a"]) in map_entries(map_file)
            assert f"routed www/{hosts['c']}/ -> {hosts['a']}" in watcher.text()  # what -v says
            live_map = [tuple(line.split()[1:3])
                        for line in ask_haproxy(box.socket, f"show map {MAP_REF}").splitlines()]
            assert (f"{hosts['c']}/", hosts["a"]) in live_map, live_map
            assert runtime_servers(box.socket, hosts["a"]) == {a.short_id, c.short_id}
            assert created_backends(box.config) == [hosts["a"], hosts["b"]]
            assert (box.pid(), worker_pid(box.socket), reloads(box.container)) == (master, worker, loaded), \
                watcher.tail()

            # it stops: its host is no longer routed (the default backend's 404), still without a reload
            c.stop(timeout=2)
            wait_until(lambda: ask(hosts["c"], 4) == {(404, "no route")}, 60,
                       lambda: f"{ask(hosts['c'])}\n{watcher.tail()}")
            wait_until(lambda: ask(hosts["a"]) == {(200, a.short_id)}, 30,
                       lambda: f"{ask(hosts['a'])}\n{watcher.tail()}")
            assert map_entries(map_file) == [(f"{hosts['a']}/", hosts["a"]), (f"{hosts['b']}/", hosts["b"])]
            assert f"unrouted www/{hosts['c']}/ -> {hosts['a']}" in watcher.text()
            assert (box.pid(), worker_pid(box.socket), reloads(box.container)) == (master, worker, loaded), \
                watcher.tail()
            stopped = _stop_watcher(watcher)
            watcher = None
            assert stopped == 0
    finally:
        _stop_watcher(watcher)
        for made in apps:
            _remove(made)
        with contextlib.suppress(docker.errors.APIError):
            network.remove()


# --- 2. a Swarm service's tasks on two nodes ---------------------------------------------------------

SVC = "svc.example.com"


def test_a_swarm_service_with_a_host_label_gets_a_backend_of_its_tasks_and_loses_it_when_removed(tmp_path) -> None:
    """On the main dockerd (the swarm's manager) and a worker. Other runs' containers with host labels on
    the main dockerd are routed too (the all-listeners mode selects every one): asserted here is only what
    belongs to the service."""
    config = routing_config("/run/haproxy/admin.sock", routes_frontend(8000))
    watcher = None
    with swarm(nodes=2) as sw, haproxy_in_container(sw.client, sw.network, tmp_path, config, [8000],
                                                    f"hdcsw-routes-{uuid.uuid4().hex[:8]}") as box:
        manager = sw.client.info()["Swarm"]["NodeID"]
        worker_node = next(n["ID"] for n in sw.client.api.nodes() if n["ID"] != manager)
        port, map_file = box.ports[8000], box.config.with_name("docker-routes.map")
        service = None
        try:
            wait_until(lambda: reloads(box.container) >= 1, 30, lambda: box.container.logs().decode())
            watcher = Watcher(box.config, "--haproxy-container", box.name, "-h", "--runtime-socket", str(box.socket),
                              "-v", log=tmp_path / "watch.log")
            loaded = reloads(box.container)
            service = sw.service(replicas=4, labels={HOST: SVC, PORT: "8080"},
                                 options=["--replicas-max-per-node", "2"])  # two tasks on each node
            tasks = sw.wait_running(service, 4, timeout=120)
            assert {t["NodeID"] for t in tasks} == {manager, worker_node}
            ids = shorts(tasks)
            wait_until(lambda: answers(port, SVC, 24) == {(200, i) for i in ids}, 90,
                       lambda: f"{answers(port, SVC, 24)} want {ids}\n{watcher.tail()}")
            # the backend was made from the template (so haproxy reloaded), every task is one of its servers
            assert SVC in created_backends(box.config)
            body = section(box.config, SVC)
            assert "balance roundrobin" in body and "X-Server" in body
            for t in tasks:
                assert f"server {container_id(t)[:12]} {task_address(t, sw.network)}:8080 " in body, body
            assert body.count("\n    server ") == 4, body
            assert runtime_servers(box.socket, SVC) == ids
            assert (f"{SVC}/", SVC) in map_entries(map_file)
            assert reloads(box.container) > loaded
            assert request(port, SVC)[2]["x-server"] in ids
            assert no_route(port, f"other-{uuid.uuid4().hex[:8]}.example.com")

            docker_cli("service", "rm", service)
            wait_until(lambda: SVC not in created_backends(box.config)
                       and all(backend != SVC for _, backend in map_entries(map_file)), 90,
                       lambda: f"{box.config.read_text()}\n{map_file.read_text()}\n{watcher.tail()}")
            assert f"backend {SVC}" not in box.config.read_text()
            assert "backend docker-template" in box.config.read_text()  # the template stays
            wait_until(lambda: no_route(port, SVC), 30, lambda: f"{answers(port, SVC)}\n{watcher.tail()}")
            sw.wait_gone(service)
            stopped = _stop_watcher(watcher)
            watcher = None
            assert stopped == 0
        finally:
            _stop_watcher(watcher)
            if service:
                docker_cli("service", "rm", service, check=False)


# --- 3. TLS: a certificate per host, chosen by SNI ---------------------------------------------------------

def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"openssl {' '.join(args)}: {result.stderr}"


def make_certificates(directory: Path, hosts: list[str]) -> tuple[Path, Path]:
    """A CA (directory/ca.pem) and, per host, a certificate it signed with the host as CN and SAN, written
    with its key as one PEM directory/certs/HOST.pem. Returns (CA file, certs directory)."""
    work, certs = directory / "pki", directory / "certs"
    work.mkdir()
    certs.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=hdc test CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=work)
    for host in hosts:
        (work / f"{host}.ext").write_text(f"subjectAltName=DNS:{host}\nbasicConstraints=CA:FALSE\n"
                                          "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{host}.key", "-out", f"{host}.csr",
                 "-subj", f"/CN={host}", cwd=work)
        _openssl("x509", "-req", "-in", f"{host}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{host}.crt", "-days", "2", "-extfile", f"{host}.ext", cwd=work)
        (certs / f"{host}.pem").write_text((work / f"{host}.crt").read_text() + (work / f"{host}.key").read_text())
    return work / "ca.pem", certs


def tls_request(port: int, host: str, cafile: Path, timeout: float = 3.0) -> tuple[int, str, dict]:
    """GET https://host/ at 127.0.0.1:port: SNI and Host are `host`, the CA verifies the chain and the name.
    Returns (status, body, the peer certificate as ssl's getpeercert() gives it)."""
    context = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw, \
            context.wrap_socket(raw, server_hostname=host) as tls:
        cert = tls.getpeercert()
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        resp = http.client.HTTPResponse(tls)
        resp.begin()
        return resp.status, resp.read().decode(errors="replace").strip(), cert


def safe_tls(port: int, host: str, cafile: Path) -> tuple[int, str] | None:
    with contextlib.suppress(OSError, http.client.HTTPException):
        status, body, _ = tls_request(port, host, cafile)
        return status, body
    return None


def test_tls_frontend_routes_each_host_with_its_own_certificate_and_http_redirects(tmp_path, engine, haproxy) -> None:
    hosts = ["a.example.com", "b.example.com"]
    cafile, certs = make_certificates(tmp_path, hosts)
    tls_port, http_port = free_port(), free_port()
    sock, pidfile = tmp_path / "admin.sock", tmp_path / "haproxy.pid"
    config = tmp_path / "haproxy.cfg"
    config.write_text(routing_config(str(sock), (
        f"frontend plain\n    bind 127.0.0.1:{http_port}\n    http-request redirect scheme https code 301\n\n"
        f"frontend tls\n    bind 127.0.0.1:{tls_port} ssl crt {certs}/\n    #DOCKERROUTES\n"
        "    default_backend no-route\n")))
    haproxy(Cfg(path=config, port=tls_port, pidfile=pidfile, sock=sock))
    client, reach, apps = engine.client(), str(engine.address.ip), []
    try:
        for host in hosts:  # published on the engine's end of the veth, where host haproxy reaches them
            apps.append(client.containers.run(IMAGE, detach=True, ports={"8080/tcp": (reach, None)},
                                              labels={HOST: host, PORT: "8080", LABEL: RUN}))
        synced = run_cli("-f", str(config), "--sync", "--docker-url", engine.url, "-h", str(pidfile), "-v")
        assert synced.returncode == 0, synced.stdout + synced.stderr
        said = synced.stdout.splitlines()
        assert [line.split() for line in said if "routed" in line] == [[f"tls/{h}/", "routed", h] for h in hosts], said
        assert [line for line in said if line.startswith("backend/")] == [f"backend/{h}\tcreated" for h in hosts]
        assert map_entries(tmp_path / "docker-routes.map") == [(f"{h}/", h) for h in hosts]
        assert created_backends(config) == hosts
        for host, app in zip(hosts, apps):
            app.reload()
            published = app.attrs["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"]
            assert f"server {app.short_id} {reach}:{published} " in section(config, host), section(config, host)
            wait_until(lambda: {safe_tls(tls_port, host, cafile) for _ in range(8)} == {(200, app.short_id)}, 30,
                       lambda: f"{[safe_tls(tls_port, host, cafile) for _ in range(4)]}\n{synced.stderr}\n"
                               f"{config.read_text()}")
            status, body, cert = tls_request(tls_port, host, cafile)  # verified: chain to our CA, name = host
            assert (status, body) == (200, app.short_id)
            assert dict(rdn[0] for rdn in cert["subject"])["commonName"] == host
            assert cert["subjectAltName"] == (("DNS", host),)
            assert f"{host}/{app.short_id}\tadded\t{reach}:{published}" in said, said
        status = run_cli("-f", str(config), "--status", "--docker-url", engine.url)
        assert status.returncode == 0, status.stdout + status.stderr
        table = status.stdout.split("ROUTE", 1)[1].splitlines()[1:]
        assert [line.split() for line in table] == [[f"{h}/", h, "yes", "yes", "-"] for h in hosts], status.stdout
        again = run_cli("-f", str(config), "--sync", "--docker-url", engine.url, "-h", str(pidfile))
        assert (again.returncode, again.stdout) == (0, ""), again.stderr  # nothing changed, nothing said
        # over TLS, a host no route names: the default backend's 404
        context = ssl.create_default_context(cafile=str(cafile))
        with socket.create_connection((LOOPBACK, tls_port), timeout=3) as raw, \
                context.wrap_socket(raw, server_hostname="a.example.com") as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: nowhere.example.com\r\nConnection: close\r\n\r\n")
            resp = http.client.HTTPResponse(tls)
            resp.begin()
            assert (resp.status, resp.read().decode().strip()) == (404, "no route")
        # plain HTTP: a 301 to the same URL over https; no app is asked
        for host in hosts:
            status, _, headers = request(http_port, host, "/some/where?x=1")
            assert (status, headers["location"]) == (301, f"https://{host}/some/where?x=1")
    finally:
        for app in apps:
            _remove(app)
