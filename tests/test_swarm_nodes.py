"""Docker Swarm on two nodes: a worker dockerd in a network namespace of its own, VXLAN over a veth pair."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import http_get

from swarm_support import Swarm, container_id, haproxy_box, haproxy_config, swarm, task_address


@pytest.fixture(scope="module")
def sw2() -> Iterator[Swarm]:
    """A manager (the main dockerd) and one worker, for the module; both leave before it ends."""
    with swarm(nodes=2) as made:
        yield made


def test_haproxy_on_the_manager_reaches_tasks_on_both_nodes(sw2, tmp_path) -> None:
    service = sw2.service(replicas=4, options=["--replicas-max-per-node", "2"])
    tasks = sw2.wait_running(service, 4)
    assert len({t["NodeID"] for t in tasks}) == 2
    servers = "".join(f"    server t{i} {task_address(t, sw2.network)}:8080\n" for i, t in enumerate(tasks))
    config = haproxy_config(f"listen web\n    bind :8000\n    balance roundrobin\n{servers}")
    with haproxy_box(sw2.client, sw2.network, tmp_path, config, [8000]) as box:
        seen = {http_get(box.ports[8000]) for _ in range(16)}
    assert seen == {container_id(t)[:12] for t in tasks}
