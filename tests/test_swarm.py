"""Docker Swarm on one node: the main dockerd as manager, services on an attachable overlay network."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import http_get

from swarm_support import Swarm, container_id, haproxy_box, haproxy_config, swarm, task_address


@pytest.fixture(scope="module")
def sw() -> Iterator[Swarm]:
    """One swarm for the module, left before the module ends (the rest of the suite sees none)."""
    with swarm(nodes=1) as made:
        yield made


def test_haproxy_on_the_overlay_reaches_every_task_at_its_address(sw, tmp_path) -> None:
    service = sw.service(replicas=3)
    tasks = sw.wait_running(service, 3)
    servers = "".join(f"    server t{i} {task_address(t, sw.network)}:8080\n" for i, t in enumerate(tasks))
    config = haproxy_config(f"listen web\n    bind :8000\n    balance roundrobin\n{servers}")
    with haproxy_box(sw.client, sw.network, tmp_path, config, [8000]) as box:
        seen = {http_get(box.ports[8000]) for _ in range(12)}
    assert seen == {container_id(t)[:12] for t in tasks}
