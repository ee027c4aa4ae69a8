"""The tool as an image beside haproxy, run non-root with --watch, the Docker socket and the config
directory shared with a haproxy container that reaches the apps on a user-defined network. Two builds
of it pass the same tests: scripts/build-image.sh's (no registry needed), and the Dockerfile's, built
with the local stand-in of its base image (scripts/build-python-image.sh)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import docker.errors
import pytest
from conftest import IMAGE, LABEL, REPO, RUN, ask_haproxy, free_port, serve_more, wait_until
from docker.models.containers import Container
from docker.models.images import Image

import haproxy_docker_config as hdc
import load  # bench/load.py (conftest puts bench/ on the path)

PROG = "haproxy-docker-config"
TOOL_IMAGE = f"{PROG}:latest"
#: The Dockerfile's build, from PYTHON_BASE in place of python:3.11-slim-bookworm.
DOCKERFILE_IMAGE, PYTHON_BASE = "hdc-tool-dockerfile:latest", "hdc-python:3.11-slim-bookworm"
HAPROXY_IMAGE = "hdc-haproxy:latest"
SOCKET = "/var/run/docker.sock"
#: The same paths in both containers, so that every path the config names means the same in each.
CONF, RUN_DIR = "/usr/local/etc/haproxy", "/run/haproxy"
LISTEN = "haproxy-docker-config.listen"
APP_GRACE = 1
#: The official haproxy image runs haproxy as user haproxy, uid and gid 99; the tool joins its group.
HAPROXY_USER = 99


def dockerfile_image(client: docker.DockerClient) -> Image:
    """`docker build` of the Dockerfile on the stand-in base; Docker's layer cache keeps a rebuild to the
    layers after what changed (the module's wheel, when only the module did). The build it replaces is
    removed unless something still uses it."""
    subprocess.run([str(REPO / "scripts" / "build-python-image.sh")], check=True)
    try:
        previous = client.images.get(DOCKERFILE_IMAGE).id
    except docker.errors.ImageNotFound:
        previous = None
    built = subprocess.run(["docker", "build", "-q", "--build-arg", f"PYTHON_IMAGE={PYTHON_BASE}",
                            "-t", DOCKERFILE_IMAGE, str(REPO)], capture_output=True, text=True, timeout=1200)
    assert built.returncode == 0, f"docker build of the Dockerfile failed:\n{built.stdout[-3000:]}{built.stderr[-5000:]}"
    image = client.images.get(built.stdout.split()[-1])  # its id: another run may retag the name meanwhile
    if previous not in (None, image.id):
        with contextlib.suppress(docker.errors.APIError):
            client.images.remove(previous)
    return image


@pytest.fixture(scope="session", params=["build-image.sh", "Dockerfile"])
def tool_image(request, docker_client: docker.DockerClient) -> Image:
    """The image of this checkout, as each recipe builds it (both return at once when cached)."""
    if request.param == "Dockerfile":
        return dockerfile_image(docker_client)
    subprocess.run([str(REPO / "scripts" / "build-image.sh")], check=True)
    return docker_client.images.get(TOOL_IMAGE)


def create_network(client: docker.DockerClient):
    """A user-defined bridge network with an explicit subnet that no other network uses."""
    for _ in range(20):
        subnet = f"10.{random.randint(251, 254)}.{random.randint(0, 255)}.0/24"
        ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=subnet)])
        try:
            return client.networks.create(f"hdc-apps-{uuid.uuid4().hex[:8]}", ipam=ipam, labels={LABEL: RUN})
        except docker.errors.APIError as exc:
            if "overlap" not in str(exc):
                raise
    raise RuntimeError("no free subnet for the test network")


@dataclasses.dataclass
class Deployment:
    """haproxy in a container on a network of its own, its config and stats socket directories on the host."""

    listener: str
    network: str
    conf: Path
    run: Path
    port: int
    haproxy: Container
    image: str  # the tool's, by id
    uid: int
    start: Callable[..., Container]  # run a container that is removed at teardown

    def tool(self, *args: str, **options) -> Container:
        """The tool's container as the README runs it: non-root with the socket's group, no network (it
        talks to Docker and haproxy through their sockets only), the shared directories."""
        volumes = {SOCKET: {"bind": SOCKET, "mode": "rw"},
                   str(self.conf): {"bind": CONF, "mode": "rw"},
                   str(self.run): {"bind": RUN_DIR, "mode": "rw"}}
        options.setdefault("group_add", [str(os.stat(SOCKET).st_gid), str(HAPROXY_USER)])
        return self.start(self.image, list(args), volumes=volumes, network_mode="none", **options)

    def app(self) -> Container:
        """An app on haproxy's network that asks for the listener by label; it publishes nothing.

        On SIGTERM it serves on for APP_GRACE seconds, as services that shut down gracefully do: the tool
        disables its server from the event thread at once, even while another change is validated in
        haproxy's container, so one second of grace is plenty (it was five before the drainer)."""
        return self.start(IMAGE, network=self.network, environment={"HDC_GRACE": str(APP_GRACE)},
                          labels={LISTEN: self.listener, "haproxy-docker-config.port": "8080"})

    def servers(self, state: str | None = None) -> set[str]:
        """Servers of the listener: in the file, or ready in the running haproxy (state="live")."""
        if state == "live":
            answer = ask_haproxy(self.run / "admin.sock", f"show servers state {self.listener}")
            rows = [line.split() for line in answer.splitlines()[2:]]
            return {row[3] for row in rows if len(row) > 6 and row[6] == "0"}  # srv_admin_state 0: ready
        text = (self.conf / "haproxy.cfg").read_text()
        return {ln.split()[1] for ln in text.splitlines() if ln.strip().startswith("server ")}


def config_text(listener: str) -> str:
    """haproxy's group may use the stats socket: the tool is in that group too."""
    return (f"global\n    maxconn 256\n    stats socket {RUN_DIR}/admin.sock mode 660 level admin\n\n"
            "defaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n\n"
            f"listen {listener}\n    bind :8080\n    balance roundrobin\n"
            "    #DOCKERSERVER   $id ${ip}:$port check inter 2000 rise 2 fall 5\n")


@pytest.fixture
def deployment(tmp_path, docker_client, tool_image) -> Iterator[Deployment]:
    """haproxy (hdc-haproxy, run as the official image runs it: uid 99) on a network of its own, its
    frontend published on 127.0.0.1, the config directory read-only and the stats socket on a shared one."""
    suffix = uuid.uuid4().hex[:8]
    uid = int(tool_image.attrs["Config"]["User"].split(":")[0])
    conf, run = tmp_path / "conf", tmp_path / "run"
    conf.mkdir()
    run.mkdir()
    (conf / "haproxy.cfg").write_text(config_text(f"web-{suffix}"))
    for path in (conf, conf / "haproxy.cfg"):  # the tool writes beside the config: lock, temp file, .bak
        os.chown(path, uid, -1)
    os.chown(run, HAPROXY_USER, HAPROXY_USER)
    made: list[Container] = []
    network = create_network(docker_client)

    def start(image: str, command: list[str] | None = None, **options) -> Container:
        options["labels"] = {**options.get("labels", {}), LABEL: RUN}
        made.append(docker_client.containers.run(image, command, detach=True, **options))
        return made[-1]

    try:
        port = free_port()
        haproxy = start(HAPROXY_IMAGE, name=f"hdc-haproxy-{suffix}", user=f"{HAPROXY_USER}:{HAPROXY_USER}",
                        network=network.name, ports={"8080/tcp": ("127.0.0.1", port)},
                        volumes={str(conf): {"bind": CONF, "mode": "ro"}, str(run): {"bind": RUN_DIR, "mode": "rw"}})
        wait_until(lambda: (run / "admin.sock").exists(), 10, lambda: haproxy.logs().decode())
        yield Deployment(f"web-{suffix}", network.name, conf, run, port, haproxy, tool_image.id, uid, start)
    finally:
        for container in made:
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)
        network.remove()


def test_the_tool_in_a_container_keeps_haproxy_in_a_container_in_step(deployment) -> None:
    d = deployment
    first = d.app()
    tool = d.tool("--watch", "-l", d.listener, "-f", f"{CONF}/haproxy.cfg", "--haproxy-container", d.haproxy.name,
                  "-h", name=f"hdc-tool-{d.listener}", restart_policy={"Name": "unless-stopped"})
    logs = lambda: tool.logs().decode()  # noqa: E731
    wait_until(lambda: d.servers("live") == {first.short_id}, 20, logs)
    assert {row[0] for row in tool.top()["Processes"]} == {str(d.uid)}  # non-root, through --group-add
    assert {row[0] for row in d.haproxy.top()["Processes"]} == {str(HAPROXY_USER)}
    outcome = load.Outcome()
    with load.Load(d.port, 3, outcome):
        wait_until(lambda: first.short_id in outcome.first_served, 30)
        second, third = d.app(), d.app()
        wait_until(lambda: {second.short_id, third.short_id} <= set(outcome.first_served), 60, logs)
        stoppers = []
        for gone in (first, second):  # docker stop: drained while it shuts down
            stoppers.append(threading.Thread(target=gone.stop, kwargs={"timeout": APP_GRACE + 5}))
            stoppers[-1].start()
            wait_until(lambda: gone.short_id not in d.servers("live"), 60, logs)
        for stopper in stoppers:
            stopper.join()  # both have exited: nothing of theirs can answer any more
        serve_more(outcome, 100)
    assert outcome.failures == [] and len(outcome.latencies) > 100
    assert d.servers() == d.servers("live") == {third.short_id}
    third.reload()
    address = third.attrs["NetworkSettings"]["Networks"][d.network]["IPAddress"]
    assert f"added {d.listener}/{third.short_id} {address}:8080" in logs()  # on the network haproxy shares
    assert f"removed {d.listener}/{first.short_id}" in logs()
    assert "Reloading HAProxy" not in d.haproxy.logs().decode()  # every change went through the Runtime API

    tool.stop(timeout=30)  # SIGTERM to PID 1; SIGKILL after 30 s would give 137
    tool.reload()
    assert tool.attrs["State"]["ExitCode"] == 0, logs()
    assert logs().splitlines()[-1] == f"stopped watching; {CONF}/haproxy.cfg is complete"
    checked = d.haproxy.exec_run(["haproxy", "-c", "-f", f"{CONF}/haproxy.cfg"])
    assert checked.exit_code == 0, checked.output.decode()
    assert d.servers() == {third.short_id}


def test_without_the_sockets_group_the_tool_says_why(deployment) -> None:
    d = deployment
    before = (d.conf / "haproxy.cfg").read_bytes()
    tool = d.tool("--sync", "-l", d.listener, "-f", f"{CONF}/haproxy.cfg", "--haproxy-container", d.haproxy.name,
                  group_add=[])
    assert tool.wait(timeout=60)["StatusCode"] == 4
    lines = tool.logs().decode().splitlines()
    assert lines == [f"warning: cannot reach the Docker engine at unix://{SOCKET} (Permission denied); start dockerd "
                     "or give --docker-url; its servers are left as they are",
                     f"ERROR: no Docker engine answered (unix://{SOCKET}); start dockerd or check --docker-url"]
    assert (d.conf / "haproxy.cfg").read_bytes() == before


def test_the_image_can_serve_metrics(tool_image: Image, docker_client: docker.DockerClient) -> None:
    """A watcher in a container is where --metrics is used: the image carries the metrics extra."""
    output = docker_client.containers.run(tool_image.id, ["--help"], remove=True, labels={LABEL: RUN}).decode()
    assert "--metrics ADDR:PORT" in output
    probe = docker_client.containers.run(tool_image.id, entrypoint=["python3", "-c", "import prometheus_client"],
                                         remove=True, labels={LABEL: RUN})
    assert probe == b""


def test_the_image_is_the_tool_as_a_non_root_entry_point(tool_image: Image, docker_client: docker.DockerClient) -> None:
    """Both recipes make the same interface: user 10001, the tool as entry point, --help by default."""
    config = tool_image.attrs["Config"]
    assert (config["User"], config["Entrypoint"], config["Cmd"]) == ("10001:10001", [PROG], ["--help"])
    version = docker_client.containers.run(tool_image.id, ["--version"], remove=True, labels={LABEL: RUN})
    assert version.decode() == f"{PROG} {hdc.__version__}\n"
