"""A dockerd of one's own: own socket, data root, exec root and a bridge with a free subnet.

The soak restarts its engine twice and tests stop theirs to see a watcher's health
turn; the engine everyone else on the machine uses is never touched. Published
ports go on 127.0.0.3 for the soak and the metrics test (the suite's second engine, also one of these,
has its ports published on 127.0.0.2 by the tests that use it).
"""

from __future__ import annotations

import contextlib
import re
import secrets
import subprocess
import time
from pathlib import Path

import docker
import docker.errors

HOST_IP = "127.0.0.3"


class EngineError(Exception):
    """The private engine could not be set up."""



class PrivateEngine:
    """A dockerd on a bridge of its own, as a context manager: stopping or restarting it disturbs nobody."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()
        self.url = f"unix://{root}/docker.sock"
        self.bridge = f"br-hdcp{secrets.token_hex(2)}"
        self.subnet = free_subnet()
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "PrivateEngine":
        # A bridge whose address is not set takes the lowest of its ports' and changes as containers come
        # and go; the others' cached gateway address then goes stale and their replies are lost for
        # seconds (requests through the userland proxy time out). Docker's own bridges set one; so here.
        mac = "02:" + ":".join(secrets.token_hex(5)[i:i + 2] for i in range(0, 10, 2))
        subprocess.run(["ip", "link", "add", self.bridge, "address", mac, "type", "bridge"], check=True)
        try:
            subprocess.run(["ip", "addr", "add", self.subnet, "dev", self.bridge], check=True)
            subprocess.run(["ip", "link", "set", self.bridge, "up"], check=True)
            self.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(docker.errors.DockerException, OSError):
            for c in self.client().containers.list(all=True):
                c.remove(force=True)
        self.stop()
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)

    def start(self) -> None:
        command = ["dockerd", "--host", self.url, "--data-root", str(self.root / "data"),
                   "--exec-root", str(self.root / "exec"), "--pidfile", str(self.root / "docker.pid"),
                   "--bridge", self.bridge, "--iptables=false", "--ip-masq=false"]
        with (self.root / "dockerd.log").open("ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while subprocess.run(["docker", "-H", self.url, "info"], capture_output=True).returncode != 0:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise EngineError(f"private dockerd did not start:\n{(self.root / 'dockerd.log').read_text()[-2000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.url, timeout=120)

    def load_image(self, image: str) -> None:
        """Copy an image of the main engine into this one (save and load: no registry)."""
        self.client().images.load(b"".join(docker.from_env().images.get(image).save(named=True)))


def free_subnet() -> str:
    """A /24 in 172.31.240-249 that no interface or route of this host uses yet."""
    used = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    used += subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    for third in range(240, 250):
        if not re.search(rf"\b172\.31\.{third}\.", used):
            return f"172.31.{third}.1/24"
    raise EngineError("no free 172.31.240-249.0/24 subnet for the private engine's bridge")
