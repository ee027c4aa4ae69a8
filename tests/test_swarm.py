"""Swarm services on one node: the main dockerd as manager, services on an attachable overlay network,
haproxy in a container on that network (the task addresses are reachable from it, the VIP would not be)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator

import pytest
from conftest import FileWrites, run_cli, wait_until
from counting_proxy import CountingProxy

import haproxy_docker_config as hdc

import load  # bench/load.py (conftest puts bench/ on the path)
from swarm_support import (API, HTTPD, HTTPD_V2, LISTEN, MARK, NETWORK, PORT, TEMPLATE, WEB, HaproxyBox, Swarm,
                           box_watcher, change_under_load, container_id, docker_cli, haproxy_box, haproxy_config,
                           listeners, served, shorts, swarm, task_address, wait_listed)


def test_a_task_is_a_backend_on_its_networks_but_ingress() -> None:
    attach = lambda name, address, ingress=False: {  # noqa: E731
        "Network": {"ID": f"id-{name}", "Spec": {"Name": name, "Ingress": ingress}}, "Addresses": [address]}
    task = {"ID": "t1", "NodeID": "n1", "DesiredState": "running",
            "Status": {"State": "running", "ContainerStatus": {"ContainerID": "c" * 64}},
            "NetworksAttachments": [attach("ingress", "10.0.0.5/24", True), attach("apps", "10.1.0.7/24")]}
    service = {"ID": "s1", "Spec": {"Name": "web", "Labels": {LISTEN: WEB}}}
    backend = hdc.container_from_task(task, service, (8080,))
    assert (backend.id, backend.name, backend.service, backend.labels, backend.exposed) == (
        "c" * 64, "web.n1.t1", "web", {LISTEN: WEB}, (8080,))  # a global service's task has no slot
    assert backend.networks == {"apps": hdc.NetworkAddress("id-apps", "10.1.0.7")}
    assert hdc.Addressing().endpoint(backend, None) == hdc.Endpoint("10.1.0.7", 8080, "apps")
    assert hdc.task_name({**task, "Slot": 2}, "web") == "web.2.t1"
    assert not hdc.task_runs({**task, "DesiredState": "shutdown"})


def test_a_watch_needs_no_pass_for_events_of_unrelated_containers() -> None:
    event = lambda kind, **attributes: {"Type": kind, "Actor": {"ID": "x", "Attributes": attributes}}  # noqa: E731
    assert not hdc._may_matter(event("container", name="other", image="x"), filtered=False)
    assert hdc._may_matter(event("container", name="other"), filtered=True)  # --filter: anything may match
    assert hdc._may_matter(event("container", **{LISTEN: "web"}), filtered=False)
    assert hdc._may_matter(event("container", **{"com.docker.swarm.task.id": "t1"}), filtered=False)
    assert hdc._may_matter(event("network", container="x"), filtered=False)
    assert hdc._may_matter(event("service", name="web"), filtered=False)


@pytest.fixture(scope="module")
def sw() -> Iterator[Swarm]:
    """One swarm for the module, left before the module ends (the rest of the suite sees none)."""
    with swarm(nodes=1) as made:
        yield made


@pytest.fixture
def services(sw) -> Iterator[Callable[..., str]]:
    """Services made by one test, removed when it ends (label-driven syncs must not see another test's)."""
    made: list[str] = []

    def create(**kwargs) -> str:
        made.append(sw.service(**kwargs))
        return made[-1]

    yield create
    for name in made:
        docker_cli("service", "rm", name, check=False)


@pytest.fixture
def box(sw, tmp_path) -> Iterator[HaproxyBox]:
    """haproxy on the overlay with listeners WEB (:8000) and API (:8001), published on 127.0.0.1."""
    with haproxy_box(sw.client, sw.network, tmp_path, haproxy_config(listeners(**{WEB: 8000, API: 8001})),
                     [8000, 8001]) as made:
        yield made


def tool(box: HaproxyBox, *args: str, timeout: float = 60):
    """The CLI on the box's config, validating in its container, live changes on its stats socket."""
    return run_cli("-f", str(box.config), "--haproxy-container", box.name, "--runtime-socket", str(box.socket),
                   *args, timeout=timeout)


def gone_containers(sw: Swarm, ids: set[str], timeout: float = 30) -> None:
    """Wait until none of these containers runs any more."""
    deadline = time.monotonic() + timeout
    while {c["Id"][:12] for c in sw.client.api.containers()} & ids:
        assert time.monotonic() < deadline, f"containers {ids} still run"
        time.sleep(0.1)


def test_labelled_service_tasks_are_synced_verified_and_pruned(sw, services, box) -> None:
    service = services(replicas=3, labels={LISTEN: WEB, PORT: "8080"})
    tasks = sw.wait_running(service, 3)
    result = tool(box, "-l", WEB, "--sync", "--json")
    assert result.returncode == 0, result.stderr
    got = {(r["server"], r["ip"], r["port"], r["status"], r["network"]) for r in json.loads(result.stdout)["results"]}
    assert got == {(container_id(t)[:12], task_address(t, sw.network), 8080, "added", sw.network) for t in tasks}
    assert served(box.ports[8000]) == shorts(tasks)
    assert tool(box, "-l", WEB, "--sync").stdout == ""  # nothing changed, nothing said
    verify = tool(box, "-l", WEB, "--verify")
    assert verify.returncode == 0 and verify.stdout.count("\tfound") == 3, verify.stdout + verify.stderr
    docker_cli("service", "scale", "--detach", f"{service}=1")
    left = sw.wait_running(service, 1)
    gone_containers(sw, shorts(tasks) - shorts(left))  # a task told to stop still runs for its grace period
    verify = tool(box, "-l", WEB, "--verify")
    assert verify.returncode == 1 and verify.stdout.count("\tnot_found") == 2, verify.stdout
    prune = tool(box, "-l", WEB, "--prune")
    assert prune.returncode == 0 and prune.stdout.count("\tremoved") == 2, prune.stdout + prune.stderr
    assert served(box.ports[8000], 6) == shorts(left)


def test_add_and_delete_a_service_beside_a_plain_container(sw, services, box, docker_client) -> None:
    service = services(replicas=2, labels={PORT: "8080"})
    tasks = sw.wait_running(service, 2)
    plain = docker_client.containers.run(HTTPD, detach=True, network=sw.network, labels={MARK: "1"})
    try:
        added = tool(box, "-l", API, "--add", f"{service},{plain.short_id}:8080")
        assert added.returncode == 0, added.stderr
        lines = added.stdout.splitlines()
        assert sorted(ln.split()[0] for ln in lines) == sorted([service, service, f"{plain.short_id}:8080"])
        assert served(box.ports[8001]) == shorts(tasks) | {plain.short_id}
        deleted = tool(box, "-l", API, "--delete", service, "-v")
        assert deleted.returncode == 0 and "\tdeleted" in deleted.stdout, deleted.stderr
        assert tool(box, "-l", API, "--check", service).stdout.split() == [service, "not_balanced"]
        assert served(box.ports[8001], 6) == {plain.short_id}
    finally:
        plain.remove(force=True)


def test_name_is_the_task_container_name_and_a_port_follows_the_service_name(sw, services, box) -> None:
    replicated = services(replicas=1)  # no port label, publishes nothing, its image exposes nothing
    everywhere = services(replicas=None, options=["--mode", "global"], labels={PORT: "8080"})
    tasks = sw.wait_running(replicated, 1) + sw.wait_running(everywhere, 1)
    before = box.config.read_bytes()
    result = tool(box, "-l", WEB, "--add", replicated)
    assert result.returncode == 4
    assert result.stderr == (f"ERROR: service {replicated} exposes no tcp port; give {replicated}:PORT or the label "
                             f"{PORT}=PORT\n")
    assert box.config.read_bytes() == before
    box.config.write_text(box.config.read_text().replace(f"#DOCKERSERVER {TEMPLATE}", "#DOCKERSERVER $name ${ip}:$port"))
    result = tool(box, "-l", WEB, "--add", f"{replicated}:9090,{everywhere}", "--json")
    assert result.returncode == 0, result.stderr
    names = [sw.client.api.inspect_container(container_id(t))["Name"].lstrip("/") for t in tasks]
    assert [(r["server"], r["port"]) for r in json.loads(result.stdout)["results"]] == [(names[0], 9090), (names[1], 8080)]
    for name, task, port in zip(names, tasks, (9090, 8080)):
        assert f"server {name} {task_address(task, sw.network)}:{port}\n" in box.config.read_text()
    assert served(box.ports[8000], 8) == shorts(tasks)


def test_the_port_is_the_one_published_target_port_or_the_one_the_image_exposes(sw, services, box,
                                                                               docker_client) -> None:
    published = services(replicas=1, options=["--publish", "mode=ingress,target=8080"])  # on ingress too
    draft = docker_client.containers.create(HTTPD, labels={MARK: "1"})
    image = draft.commit("hdc-test-httpd", f"expose-{draft.short_id}", changes=["EXPOSE 9090"])
    draft.remove()
    try:
        exposing = services(replicas=1, image=image.tags[0])
        tasks = sw.wait_running(published, 1) + sw.wait_running(exposing, 1)
        result = tool(box, "-l", WEB, "--add", f"{published},{exposing}")
        assert result.returncode == 0, result.stderr
        assert [ln.split()[2] for ln in result.stdout.splitlines()] == [
            f"{task_address(tasks[0], sw.network)}:8080", f"{task_address(tasks[1], sw.network)}:9090"]
        assert served(box.ports[8000], 8) == shorts(tasks)
    finally:
        docker_cli("service", "rm", exposing, check=False)
        sw.wait_gone(exposing)
        docker_cli("rmi", image.tags[0], check=False)


def test_a_service_on_two_networks_needs_one_chosen(sw, services, box) -> None:
    other, _ = sw.overlay(101)
    service = services(replicas=1, labels={PORT: "8080"}, networks=[sw.network, other])
    (task,) = sw.wait_running(service, 1)
    before = box.config.read_bytes()
    result = tool(box, "-l", WEB, "--add", service)
    first, second = sorted([sw.network, other])
    assert (result.returncode, result.stderr) == (4, (
        f"ERROR: service {service} is on several networks ({first}, {second}); give --network NAME or the "
        f"service label {NETWORK}=NAME\n"))
    assert box.config.read_bytes() == before
    result = tool(box, "-l", WEB, "--add", service, "--network", sw.network)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[2] == f"{task_address(task, sw.network)}:8080"
    assert served(box.ports[8000], 4) == {container_id(task)[:12]}


def test_one_pass_over_two_listeners_is_one_write_and_one_reload(sw, services, box) -> None:
    """Counted where each happens: writes by inotify on the file, validations by the execs in haproxy's
    container (POST .../exec, through a counting proxy of the engine), reloads by the master's own log."""
    web = services(replicas=2, labels={LISTEN: WEB, PORT: "8080"})
    api = services(replicas=1, labels={LISTEN: API, PORT: "8080"})
    tasks = sw.wait_running(web, 2) + sw.wait_running(api, 1)
    reloads = box.container.logs().decode().count("Loading success")
    with contextlib.closing(CountingProxy()) as engine, FileWrites(box.config) as writes:
        result = tool(box, "--sync", "--no-runtime", "-h", "--docker-url", engine.url)
        requests = engine.take()[0]
        assert result.returncode == 0, result.stderr
        assert writes.count() == 1
    assert sorted(ln.split()[0] for ln in result.stdout.splitlines()) == sorted(
        [f"{WEB}/{container_id(t)[:12]}" for t in tasks[:2]] + [f"{API}/{container_id(tasks[2])[:12]}"])
    execs = [r for r in requests if r.startswith("POST ") and r.endswith(f"/containers/{box.container.name}/exec")]
    assert len(execs) == 1, requests  # one haproxy -c, of the candidate on its stdin
    assert [r for r in requests if "/archive" in r] == [], requests  # nothing copied into the container
    wait_until(lambda: box.container.logs().decode().count("Loading success") == reloads + 1, 30)
    assert box.container.logs().decode().count("Loading success") == reloads + 1
    assert served(box.ports[8000]) == shorts(tasks[:2]) and served(box.ports[8001], 4) == shorts(tasks[2:])


def test_watch_follows_scaling_and_a_rolling_update_without_a_failed_request(sw, services, box, tmp_path) -> None:
    service = services(replicas=3, labels={PORT: "8080"})
    watcher = box_watcher(box, tmp_path / "watch.log", "-l", WEB, "--service", service)
    outcome, delays = load.Outcome(), []
    try:
        wait_listed(box.ports[8000], shorts(sw.wait_running(service, 3)), watcher)
        with load.Load(box.ports[8000], 3, outcome):
            delays += change_under_load(sw, service, outcome, ["service", "scale", "--detach", f"{service}=6"], 6)
            delays += change_under_load(sw, service, outcome, ["service", "scale", "--detach", f"{service}=2"], 2)
            delays += change_under_load(sw, service, outcome, [
                "service", "update", "--detach", "--image", HTTPD_V2, "--update-order", "start-first",
                "--update-parallelism", "1", "--update-delay", "0s", service], 2, image=HTTPD_V2)
        assert served(box.ports[8000], 8) == shorts(sw.tasks(service)), watcher.tail()
    finally:
        stopped = watcher.stop()
    assert stopped == 0, watcher.tail()
    assert outcome.failures == [], outcome.failures[:5]
    assert len(outcome.latencies) > 300 and len(delays) == 5
