"""A real Docker Swarm for the tests and the bench: the main dockerd as a one-node swarm, or as the
manager of a second dockerd that runs in a network namespace of its own and joins as a worker.

The worker's namespace is linked to the host by a veth pair, so overlay traffic between the two
nodes is real VXLAN over a real link. Everything set up is undone in reverse order (an ExitStack),
also when a test fails or the setup stops half-way. The main dockerd can be in one swarm only, so
swarm users on this machine take turns through a file lock; a swarm (or a worker, a namespace, a
container labelled `hdc-swarm`) found while holding the lock is a leftover of a crashed run and
is removed first. Addresses come from one 10.X.0.0/16 that nothing on the host uses yet.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import ipaddress
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import docker
import docker.errors

HTTPD = "hdc-test-httpd:latest"
HAPROXY = "hdc-haproxy:latest"
#: A second tag of the test image: `docker service update --image` to it is a rolling update.
HTTPD_V2 = "hdc-test-httpd:swarm-v2"
LOCK = Path("/run/lock/hdc-swarm.lock")
WORK = Path("/tmp/hdc-swarm")  # worker roots: short paths, unix sockets live there
PREFIX = "hdcsw"  # names of everything made here: netns, veths, networks, services, containers
MARK = "hdc-swarm"  # label on every container, service and network made here


class SwarmSetupError(RuntimeError):
    """A step of building the swarm failed; the message has the command and its stderr."""


def run(command: Sequence[str], check: bool = True, timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command, text in and out; with check, a failure raises with its stderr."""
    result = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise SwarmSetupError(f"{' '.join(command)} exited {result.returncode}: {result.stderr.strip()}")
    return result


def docker_cli(*args: str, url: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The docker CLI against the main engine, or the one at `url`."""
    return run(["docker", *(["-H", url] if url else []), *args], check=check)


def unique(stem: str) -> str:
    """A name no other run uses: PREFIX-stem-<8 hex>."""
    return f"{PREFIX}-{stem}-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def swarm_turn(timeout: float = 900.0) -> Iterator[None]:
    """Hold the machine-wide swarm lock for the duration (other runs' swarm tests wait)."""
    with LOCK.open("a") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SwarmSetupError(f"another run held {LOCK} for {timeout:.0f} s") from None
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def node_state(url: str | None = None) -> str:
    """The engine's LocalNodeState: inactive, pending, active, error or locked."""
    return docker_cli("info", "--format", "{{.Swarm.LocalNodeState}}", url=url).stdout.strip()


def leave(url: str | None = None) -> None:
    """Leave whatever swarm the engine is in (ours, or a crashed run's); nothing when it is in none."""
    if node_state(url) != "inactive":
        docker_cli("swarm", "leave", "--force", url=url)
    deadline = time.monotonic() + 30
    while node_state(url) != "inactive":
        if time.monotonic() > deadline:
            raise SwarmSetupError(f"engine {url or 'main'} is still in a swarm after leaving it")
        time.sleep(0.2)


# --- addresses ----------------------------------------------------------------------------------

def _used_networks(client: docker.DockerClient) -> list[ipaddress.IPv4Network]:
    """Every IPv4 subnet the host routes to or a Docker network of the main engine holds."""
    used = []
    for line in run(["ip", "-4", "route", "show", "table", "all"]).stdout.splitlines():
        word = line.split()[0] if line.split() else ""
        with contextlib.suppress(ValueError):
            if word not in ("default", "local", "broadcast", "unreachable"):
                used.append(ipaddress.IPv4Network(word, strict=False))
    for net in client.api.networks():
        for config in (net.get("IPAM") or {}).get("Config") or []:
            with contextlib.suppress(ValueError, KeyError):
                used.append(ipaddress.IPv4Network(config["Subnet"], strict=False))
    return used


def free_block(client: docker.DockerClient) -> ipaddress.IPv4Network:
    """A 10.X.0.0/16 (X from 200 to 254) that overlaps nothing in use: all our addresses come from it."""
    used = _used_networks(client)
    candidates = [ipaddress.IPv4Network(f"10.{x}.0.0/16") for x in range(200, 255)]
    random.shuffle(candidates)
    for block in candidates:
        if not any(block.overlaps(net) for net in used):
            return block
    raise SwarmSetupError("no free 10.X.0.0/16 (X 200-254) for the swarm's networks")


def _carve(block: ipaddress.IPv4Network, third: int, prefix: int) -> ipaddress.IPv4Network:
    """The subnet 10.X.<third>.0/prefix of the block."""
    return ipaddress.IPv4Network(f"{block.network_address + third * 256}/{prefix}")


# --- leftovers of crashed runs -------------------------------------------------------------------

def sweep(client: docker.DockerClient) -> None:
    """Remove what a crashed run left (call it holding the lock): its swarm, worker, links, containers."""
    leave()
    for container in client.containers.list(all=True, filters={"label": MARK}):
        with contextlib.suppress(docker.errors.APIError):
            container.remove(force=True)
    for root in WORK.glob("*") if WORK.exists() else []:
        _stop_dockerd(root)
        shutil.rmtree(root, ignore_errors=True)
    for line in run(["ip", "netns", "list"]).stdout.splitlines():
        if line.startswith(PREFIX):
            run(["ip", "netns", "del", line.split()[0]], check=False)
    for line in run(["ip", "-o", "link", "show"]).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(PREFIX):
            run(["ip", "link", "del", name], check=False)
    _remove_gwbridge(client)


def _remove_gwbridge(client: docker.DockerClient) -> None:
    """docker_gwbridge, when we made it (it carries MARK) and nothing is attached to it any more."""
    with contextlib.suppress(docker.errors.NotFound):
        bridge = client.networks.get("docker_gwbridge")
        if MARK in (bridge.attrs.get("Labels") or {}):
            with contextlib.suppress(docker.errors.APIError):
                bridge.remove()


def _stop_dockerd(root: Path) -> None:
    """Stop the dockerd whose pidfile is root/docker.pid, if that pid still is a dockerd of this root."""
    try:
        pid = int((root / "docker.pid").read_text())
        if str(root) not in Path(f"/proc/{pid}/cmdline").read_text():
            return
    except (OSError, ValueError):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


# --- the worker node ----------------------------------------------------------------------------

@dataclasses.dataclass
class Worker:
    """A dockerd in network namespace `name`; `address` is its end of the veth pair, `peer` the host's."""

    name: str
    root: Path
    address: ipaddress.IPv4Interface
    peer: ipaddress.IPv4Interface
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.root}/docker.sock"

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.url)

    def link(self, stack: contextlib.ExitStack) -> None:
        """The namespace and the veth pair, each undone by `stack`."""
        run(["ip", "netns", "add", self.name])
        stack.callback(run, ["ip", "netns", "del", self.name], check=False)
        host_end, its_end = f"{self.name}h", f"{self.name}w"
        run(["ip", "link", "add", host_end, "type", "veth", "peer", "name", its_end])
        stack.callback(run, ["ip", "link", "del", host_end], check=False)  # deletes both ends
        run(["ip", "link", "set", its_end, "netns", self.name])
        run(["ip", "addr", "add", str(self.peer), "dev", host_end])
        run(["ip", "link", "set", host_end, "up"])
        for args in (["addr", "add", str(self.address), "dev", its_end], ["link", "set", its_end, "up"],
                     ["link", "set", "lo", "up"]):
            run(["ip", "-n", self.name, *args])

    def start(self, stack: contextlib.ExitStack) -> None:
        """dockerd entered into the namespace with nsenter (`ip netns exec` would hide the cgroups)."""
        self.root.mkdir(parents=True)
        stack.callback(shutil.rmtree, self.root, ignore_errors=True)
        command = ["nsenter", f"--net=/var/run/netns/{self.name}", "dockerd", "-H", self.url,
                   "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "exec"),
                   "--pidfile", str(self.root / "docker.pid")]
        with (self.root / "dockerd.log").open("ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        stack.callback(self.stop)
        deadline = time.monotonic() + 60
        while docker_cli("info", url=self.url, check=False).returncode != 0:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SwarmSetupError(f"worker dockerd did not start: {self.log_tail()}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.root / "dockerd.log").read_text()[-2000:]
        return "(no log)"


def copy_images(url: str, images: Sequence[str]) -> None:
    """`docker save | docker -H url load`: no registry here, so images travel by pipe."""
    save = subprocess.Popen(["docker", "save", *images], stdout=subprocess.PIPE)
    try:
        run(["docker", "-H", url, "load"], stdin=save.stdout)
    finally:
        if save.stdout:
            save.stdout.close()
        if save.wait() != 0:
            raise SwarmSetupError(f"docker save {' '.join(images)} failed")


# --- the swarm ----------------------------------------------------------------------------------

@dataclasses.dataclass
class Swarm:
    """A swarm the main dockerd manages, an attachable overlay network on it, and its workers."""

    client: docker.DockerClient
    block: ipaddress.IPv4Network
    network: str
    subnet: ipaddress.IPv4Network
    stack: contextlib.ExitStack
    workers: list[Worker] = dataclasses.field(default_factory=list)

    def overlay(self, third: int) -> tuple[str, ipaddress.IPv4Network]:
        """One more attachable overlay network, 10.X.<third>.0/24; removed at the end."""
        name, subnet = unique("net"), _carve(self.block, third, 24)
        docker_cli("network", "create", "--driver", "overlay", "--attachable", "--subnet", str(subnet),
                   "--label", f"{MARK}=1", name)
        self.stack.callback(docker_cli, "network", "rm", name, check=False)
        return name, subnet

    def service(self, replicas: int | None = 1, labels: Mapping[str, str] | None = None,
                networks: Sequence[str] | None = None, options: Sequence[str] = (),
                image: str = HTTPD, name: str | None = None) -> str:
        """`docker service create` of the test image (replicas None: a global service); removed at the end.
        Returns its name."""
        name = name or unique("web")
        args = ["service", "create", "--detach", "--name", name, "--container-label", f"{MARK}=1",
                "--label", f"{MARK}=1", *(["--replicas", str(replicas)] if replicas is not None else [])]
        for network in (self.network,) if networks is None else networks:
            args += ["--network", network]
        for key, value in (labels or {}).items():
            args += ["--label", f"{key}={value}"]
        docker_cli(*args, *options, image)
        self.stack.callback(docker_cli, "service", "rm", name, check=False)
        return name

    def wait_gone(self, service: str, timeout: float = 60) -> None:
        """Wait until no container of the service is left on the main engine (after `service rm`)."""
        deadline = time.monotonic() + timeout
        while self.client.api.containers(all=True, filters={"label": f"com.docker.swarm.service.name={service}"}):
            if time.monotonic() > deadline:
                raise TimeoutError(f"containers of service {service} are still there")
            time.sleep(0.2)

    def tasks(self, service: str) -> list[dict[str, Any]]:
        """Its tasks whose desired state is running (GET /tasks)."""
        return self.client.api.tasks(filters={"service": service, "desired-state": "running"})

    def wait_running(self, service: str, count: int, timeout: float = 60, image: str | None = None,
                     node: str | None = None, seen: dict[str, float] | None = None) -> list[dict[str, Any]]:
        """Wait until exactly `count` tasks (of `image`, on `node`, if given) are meant to run and do run;
        returns them. Polls like `docker service ps` every 0.1 s; `seen` gets when each container was
        first seen running."""
        deadline = time.monotonic() + timeout
        while True:
            tasks = self.tasks(service)
            for task in tasks:
                if seen is not None and task["Status"]["State"] == "running":
                    seen.setdefault(container_id(task)[:12], time.monotonic())
            if len(tasks) == count and all(t["Status"]["State"] == "running" and image in (
                    None, t["Spec"]["ContainerSpec"]["Image"]) and node in (None, t.get("NodeID")) for t in tasks):
                return tasks
            if time.monotonic() > deadline:
                states = [(t.get("Slot"), t["Status"]["State"], t["Status"].get("Err")) for t in tasks]
                raise TimeoutError(f"service {service}: want {count} running tasks, have {states}")
            time.sleep(0.1)


def task_address(task: dict[str, Any], network: str) -> str:
    """The task's IPv4 address on the network named `network` (from NetworksAttachments)."""
    for attachment in task.get("NetworksAttachments") or []:
        if attachment["Network"]["Spec"]["Name"] == network:
            return attachment["Addresses"][0].split("/")[0]
    raise KeyError(f"task {task['ID']} has no address on {network}")


def container_id(task: dict[str, Any]) -> str:
    """The full id of the task's container (the body the test image serves is its first 12 chars);
    "" for a task that never had one."""
    return (task["Status"].get("ContainerStatus") or {}).get("ContainerID", "")


def _init_manager(client: docker.DockerClient, stack: contextlib.ExitStack, block: ipaddress.IPv4Network,
                  advertise: str) -> None:
    """docker_gwbridge on our block (made first, so Docker does not pick a subnet that someone else's
    test network may want), then `swarm init` with an address pool in our block; left at the end."""
    if not client.networks.list(names=["docker_gwbridge"]):
        docker_cli("network", "create", "--subnet", str(_carve(block, 250, 24)), "--label", f"{MARK}=1",
                   "--opt", "com.docker.network.bridge.name=docker_gwbridge",
                   "--opt", "com.docker.network.bridge.enable_icc=false",
                   "--opt", "com.docker.network.bridge.enable_ip_masquerade=true", "docker_gwbridge")
    stack.callback(_remove_gwbridge, client)
    stack.callback(leave)
    docker_cli("swarm", "init", "--advertise-addr", advertise,
               "--default-addr-pool", str(_carve(block, 0, 20)), "--default-addr-pool-mask-length", "24")


@contextlib.contextmanager
def swarm(nodes: int = 1, images: Sequence[str] = (HTTPD, HAPROXY)) -> Iterator[Swarm]:
    """A swarm of `nodes` (1 or 2) with one attachable overlay network 10.X.100.0/24; torn down after."""
    client = docker.from_env()
    with swarm_turn(), contextlib.ExitStack() as stack:
        sweep(client)
        block = free_block(client)
        advertise, worker = "127.0.0.1", None
        if nodes == 2:
            tag = uuid.uuid4().hex[:4]
            veth = _carve(block, 254, 30)
            worker = Worker(f"{PREFIX}{tag}", WORK / tag, ipaddress.IPv4Interface(f"{veth[2]}/30"),
                            ipaddress.IPv4Interface(f"{veth[1]}/30"))
            worker.link(stack)
            worker.start(stack)
            advertise = str(worker.peer.ip)
        _init_manager(client, stack, block, advertise)
        _tag_v2(client, stack)
        if worker:
            _join(worker, stack, images)
        network, subnet = unique("net"), _carve(block, 100, 24)
        docker_cli("network", "create", "--driver", "overlay", "--attachable", "--subnet", str(subnet),
                   "--label", f"{MARK}=1", network)
        stack.callback(docker_cli, "network", "rm", network, check=False)
        stack.callback(_remove_marked, client)
        yield Swarm(client, block, network, subnet, stack, [worker] if worker else [])


def _tag_v2(client: docker.DockerClient, stack: contextlib.ExitStack) -> None:
    """HTTPD_V2 for rolling updates (same image, another name); untagged at the end."""
    client.images.get(HTTPD).tag(HTTPD_V2)
    stack.callback(docker_cli, "rmi", HTTPD_V2, check=False)


def _join(worker: Worker, stack: contextlib.ExitStack, images: Sequence[str]) -> None:
    """The worker gets the images, joins with its own address, and leaves before it stops."""
    copy_images(worker.url, [*images, HTTPD_V2])
    token = docker_cli("swarm", "join-token", "-q", "worker").stdout.strip()
    stack.callback(leave, worker.url)
    docker_cli("swarm", "join", "--advertise-addr", str(worker.address.ip), "--token", token,
               f"{worker.peer.ip}:2377", url=worker.url)
    deadline = time.monotonic() + 30
    while _ready_nodes() < 2:
        if time.monotonic() > deadline:
            raise SwarmSetupError(f"the worker never became ready: {worker.log_tail()}")
        time.sleep(0.2)


def _ready_nodes() -> int:
    out = docker_cli("node", "ls", "--format", "{{.Status}}").stdout.split()
    return out.count("Ready")


def _remove_marked(client: docker.DockerClient) -> None:
    """Containers we labelled that are still there (task containers survive a service rm briefly)."""
    for container in client.containers.list(all=True, filters={"label": MARK}):
        with contextlib.suppress(docker.errors.APIError):
            container.remove(force=True)


# --- haproxy in a container on the overlay ------------------------------------------------------

@dataclasses.dataclass
class HaproxyBox:
    """hdc-haproxy attached to an overlay network; its frontends published on 127.0.0.1."""

    container: Any  # docker.models.containers.Container
    config: Path  # host path, bind-mounted as the container's haproxy.cfg
    socket: Path  # host path of its admin stats socket
    ports: dict[int, int]  # container port -> host port on 127.0.0.1

    @property
    def name(self) -> str:
        return self.container.name

    def pid(self) -> int:
        self.container.reload()
        return int(self.container.attrs["State"]["Pid"])

    def curl(self, url: str, timeout: float = 2) -> subprocess.CompletedProcess[str]:
        """curl run in haproxy's network namespace: what haproxy itself can reach."""
        return run(["nsenter", "-t", str(self.pid()), "-n", "curl", "-s", "-m", str(timeout), url], check=False)


def haproxy_config(listeners: str, socket_dir: str = "/run/haproxy") -> str:
    """A config for HaproxyBox: the admin socket on the mounted run directory, then `listeners`."""
    return (f"global\n    maxconn 512\n    stats socket {socket_dir}/admin.sock mode 600 level admin "
            "expose-fd listeners\n\n"
            "defaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n\n"
            + listeners)


@contextlib.contextmanager
def haproxy_box(client: docker.DockerClient, network: str, directory: Path, config: str,
                ports: Sequence[int]) -> Iterator[HaproxyBox]:
    """Start haproxy -W on `config` (bind-mounted file, admin socket on a mounted dir); removed after."""
    run_dir = directory / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    path = directory / "haproxy.cfg"
    path.write_text(config)
    container = client.containers.run(
        HAPROXY, detach=True, name=unique("haproxy"), network=network, labels={MARK: "1"},
        ports={f"{p}/tcp": ("127.0.0.1", None) for p in ports},
        volumes={str(path): {"bind": "/usr/local/etc/haproxy/haproxy.cfg", "mode": "rw"},
                 str(run_dir): {"bind": "/run/haproxy", "mode": "rw"}})
    try:
        _wait_for(lambda: (run_dir / "admin.sock").exists(), 10, lambda: container.logs().decode())
        container.reload()
        published = {p: int(container.attrs["NetworkSettings"]["Ports"][f"{p}/tcp"][0]["HostPort"]) for p in ports}
        yield HaproxyBox(container, path, run_dir / "admin.sock", published)
    finally:
        with contextlib.suppress(docker.errors.APIError):
            container.remove(force=True)


def _wait_for(ready: Callable[[], bool], timeout: float, why: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(why())
        time.sleep(0.05)


def service_json(client: docker.DockerClient, service: str) -> str:
    """inspect_service as indented JSON, for assertion messages."""
    return json.dumps(client.api.inspect_service(service), indent=1)


# --- driving the tool in the tests ----------------------------------------------------------------

CLI = Path(sys.executable).parent / "haproxy-docker-config"
LISTEN, PORT, NETWORK = "haproxy-docker-config.listen", "haproxy-docker-config.port", "haproxy-docker-config.network"
#: Listener names no other test uses: containers of other suites sharing this dockerd may be labelled web.
WEB, API = "swweb", "swapi"
TEMPLATE = "$id ${ip}:$port check inter 1s rise 1 fall 2"
RESILIENT = "    retries 3\n    option redispatch 1\n    retry-on all-retryable-errors\n"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def listeners(template: str = TEMPLATE, **ports: int) -> str:
    """`listen NAME` sections with a #DOCKERSERVER template and the recommended retries, bound to `ports`."""
    return "".join(f"listen {name}\n    bind :{port}\n    balance roundrobin\n{RESILIENT}"
                   f"    #DOCKERSERVER {template}\n\n" for name, port in ports.items())


def get(port: int, timeout: float = 2.0) -> str:
    """GET http://127.0.0.1:port/ without any proxy: the body, which the test image makes its container's short id."""
    with _OPENER.open(f"http://127.0.0.1:{port}/", timeout=timeout) as resp:
        return resp.read().decode().strip()


def served(port: int, tries: int = 24) -> set[str]:
    """Who answers through a frontend, over several requests."""
    return {get(port) for _ in range(tries)}


def shorts(tasks: list[dict[str, Any]]) -> set[str]:
    return {container_id(t)[:12] for t in tasks}


def box_watcher(box: HaproxyBox, log: Path, *args: str) -> Any:
    """The CLI running --watch -v on a HaproxyBox (conftest's Watcher, imported here so that bench/swarm.py
    needs no pytest), its stderr in `log`."""
    from conftest import Watcher

    return Watcher(box.config, "--haproxy-container", box.name, "--runtime-socket", str(box.socket), "-v", *args,
                   log=log)


def wait_listed(port: int, wanted: set[str], watcher: Any, timeout: float = 15) -> None:
    """Wait until the frontend answers with exactly these containers (the watcher's first pass)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            if served(port, 3 * len(wanted)) == wanted:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"port {port} never served exactly {wanted}: {watcher.tail()}")
        time.sleep(0.2)


def change_under_load(sw: Swarm, service: str, outcome: Any, command: Sequence[str], count: int,
                      image: str | None = None, node: str | None = None) -> list[float]:
    """Run `docker COMMAND` while clients load the listener; wait until `count` tasks run (of `image`,
    on `node`) and every new one served a request, then 2 s more (the old tasks drain under load).
    Returns, per new task, seconds from `docker service ps` showing it running to its first request served."""
    before, seen = shorts(sw.tasks(service)), {}
    docker_cli(*command)
    new = shorts(sw.wait_running(service, count, image=image, node=node, seen=seen)) - before
    deadline = time.monotonic() + 15
    while not new <= set(outcome.first_served):
        if time.monotonic() > deadline:
            raise TimeoutError(f"never served: {new - set(outcome.first_served)}")
        time.sleep(0.05)
    time.sleep(2)
    return [outcome.first_served[short] - seen[short] for short in new]
