"""Swarm services on two nodes: a worker dockerd in a network namespace of its own, VXLAN over a veth pair;
haproxy in a container on the manager reaches the worker's tasks over the overlay network."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import run_cli, write_config

import load  # bench/load.py (conftest puts bench/ on the path)
from swarm_support import (PORT, WEB, HaproxyBox, Swarm, box_watcher, change_under_load, docker_cli, haproxy_box,
                           haproxy_config, listeners, served, shorts, swarm, wait_listed)


@pytest.fixture(scope="module")
def sw2() -> Iterator[Swarm]:
    """A manager (the main dockerd) and one worker, for the module; both leave before it ends."""
    with swarm(nodes=2) as made:
        yield made


@pytest.fixture
def box(sw2, tmp_path) -> Iterator[HaproxyBox]:
    with haproxy_box(sw2.client, sw2.network, tmp_path, haproxy_config(listeners(**{WEB: 8000})), [8000]) as made:
        yield made


def nodes(sw: Swarm) -> tuple[str, str]:
    """(manager's node id, worker's node id)."""
    info = sw.client.info()["Swarm"]
    worker = next(n["ID"] for n in sw.client.api.nodes() if n["ID"] != info["NodeID"])
    return info["NodeID"], worker


def test_watch_keeps_tasks_of_both_nodes_through_scaling_and_a_node_drain(sw2, box, tmp_path) -> None:
    manager, worker = nodes(sw2)
    service = sw2.service(replicas=3, labels={PORT: "8080"})
    watcher = box_watcher(box, tmp_path / "watch.log", "-l", WEB, "--service", service)
    outcome, delays = load.Outcome(), []
    try:
        wait_listed(box.ports[8000], shorts(sw2.wait_running(service, 3)), watcher)
        with load.Load(box.ports[8000], 3, outcome):
            delays += change_under_load(sw2, service, outcome, ["service", "scale", "--detach", f"{service}=6"], 6)
            assert {t["NodeID"] for t in sw2.tasks(service)} == {manager, worker}
            verify = run_cli("-f", str(box.config), "-l", WEB, "--verify")
            assert verify.returncode == 0 and verify.stdout.count("\tfound") == 6, verify.stdout  # on any node
            status = run_cli("-f", str(box.config), "-l", WEB, "--status", "--runtime-socket", str(box.socket))
            assert status.returncode == 0, status.stdout + status.stderr  # no drift: every task is a container
            delays += change_under_load(sw2, service, outcome, ["service", "scale", "--detach", f"{service}=4"], 4)
            delays += change_under_load(sw2, service, outcome, ["node", "update", "--availability", "drain", worker],
                                        4, node=manager)
        assert served(box.ports[8000], 12) == shorts(sw2.tasks(service)), watcher.tail()
    finally:
        docker_cli("node", "update", "--availability", "active", worker, check=False)
        stopped = watcher.stop()
    assert stopped == 0, watcher.tail()
    assert outcome.failures == [], outcome.failures[:5]
    assert len(outcome.latencies) > 300 and len(delays) >= 4


def test_a_worker_engine_keeps_todays_behaviour(sw2, tmp_path) -> None:
    service = sw2.service(replicas=2, labels={PORT: "8080"})
    sw2.wait_running(service, 2)
    cfg = write_config(tmp_path, listener=WEB)
    before = cfg.path.read_bytes()
    on_worker = ["-f", str(cfg.path), "--docker-url", sw2.workers[0].url]
    added = run_cli(*on_worker, "-l", WEB, "--add", service)
    assert (added.returncode, added.stderr) == (4, f"ERROR: no such container {service}; check the id with docker ps\n")
    synced = run_cli(*on_worker, "-l", WEB, "--service", service, "--sync", "-v")
    assert synced.returncode == 0 and synced.stdout == "", synced.stderr
    assert f"{sw2.workers[0].url} is a swarm worker" in synced.stderr
    assert cfg.path.read_bytes() == before
