"""The benchmark's running containers: started in parallel batches, all removed at the end.

Every container carries the label hdc-bench=1, and only the ids started here
are ever removed: a test suite may be running its own (hdc-test=1) containers
on the same engine at the same time.
"""

from __future__ import annotations

import concurrent.futures
import threading
from types import TracebackType

import docker
import docker.errors

IMAGE = "hdc-test-httpd:latest"
LABELS = {"hdc-bench": "1"}
PARALLEL = 8


class Fleet:
    """Grows to N running containers on request; a context manager that removes them all."""

    def __init__(self, client: docker.DockerClient) -> None:
        self._client = client
        self._lock = threading.Lock()
        self.ids: list[str] = []

    def __enter__(self) -> "Fleet":
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.remove_all()

    def grow_to(self, count: int) -> None:
        """Start containers until `count` of ours exist; the first is the benchmark's target."""
        missing = count - len(self.ids)
        with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
            list(pool.map(lambda _: self._start_one(), range(missing)))

    def _start_one(self) -> None:
        """Create, record, then start: a container that fails to start is still cleaned up."""
        # (ip, None): a random free host port on loopback, as `-p 127.0.0.1::8080`.
        container = self._client.containers.create(
            IMAGE, ports={"8080/tcp": ("127.0.0.1", None)}, labels=LABELS)  # type: ignore[dict-item]
        with self._lock:
            self.ids.append(str(container.id))
        container.start()

    def remove_all(self) -> None:
        with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
            list(pool.map(self._remove, self.ids))
        self.ids.clear()

    def _remove(self, container_id: str) -> None:
        try:
            self._client.api.remove_container(container_id, force=True)
        except docker.errors.NotFound:
            pass

    def engine_running(self) -> int:
        """Running containers on the whole engine, ours and anyone else's."""
        return len(self._client.api.containers(quiet=True))
