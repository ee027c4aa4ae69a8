"""examples/ as users copy it, run for real: the host setup (haproxy.cfg under a master-worker haproxy,
the systemd unit's command and `systemd-analyze verify`, the cron line), the Compose project (Debian's
docker-compose 1.29) and the Swarm stack (`docker stack deploy` on the test swarm, haproxy and the tool
beside it with Compose), each with HTTP through haproxy's frontend while the app scales up and down.

The files are used as they are, but for what a test on a shared machine must change, each replacement
asserted to match: the host's ports and paths (haproxy.cfg binds :80 and names /run, /etc), and the
images and names that the Compose files take as variables (local images, a per-run container name)."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CLI, IMAGE, REPO, free_port, http_get, kill_haproxy_running, wait_until
from swarm_support import docker_cli, swarm

import load  # bench/load.py (conftest puts bench/ on the path)

EXAMPLES = REPO / "examples"
HOST = EXAMPLES / "host"
LISTEN = "haproxy-docker-config.listen"
#: The local stand-ins of the images the Compose files name (no registry here).
IMAGES = {"HAPROXY_IMAGE": "hdc-haproxy:latest", "TOOL_IMAGE": "haproxy-docker-config:latest", "APP_IMAGE": IMAGE}
#: What each example's tool runs as, and haproxy in the official image (examples/compose/docker-compose.yml).
TOOL_UID, HAPROXY_UID = 10001, 99


def replaced(text: str, replacements: dict[str, str]) -> str:
    """`text` with each key replaced by its value; each key must occur (the example still says it)."""
    for old, new in replacements.items():
        assert old in text, f"the example no longer contains {old!r}"
        text = text.replace(old, new)
    return text


def served(port: int, tries: int = 12) -> set[str]:
    """Who answers through the frontend (the test app's page is its container's short id)."""
    return {http_get(port) for _ in range(tries)}


def wait_served(port: int, wanted: set[str], explain, timeout: float = 30) -> None:
    """Until exactly `wanted` answer: the watcher caught up with the change."""
    def ok() -> bool:
        with contextlib.suppress(OSError):
            return served(port, 4 * len(wanted)) == wanted
        return False
    wait_until(ok, timeout, explain)


def test_example_configs_are_valid_without_warnings() -> None:
    configs = sorted(EXAMPLES.rglob("haproxy.cfg"))
    assert [c.relative_to(EXAMPLES).as_posix() for c in configs] == [
        "compose/haproxy/haproxy.cfg", "host/haproxy.cfg", "swarm/haproxy/haproxy.cfg"]
    for config in configs:
        checked = subprocess.run(["haproxy", "-c", "-f", str(config)], capture_output=True, text=True)
        assert (checked.returncode, checked.stdout + checked.stderr) == (0, "Configuration file is valid\n"), config


# --- the host setup -------------------------------------------------------------------------------------------

def unit_command(unit: str) -> str:
    """ExecStart= of a systemd unit."""
    lines = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert len(lines) == 1
    return lines[0]


def test_the_systemd_unit_passes_systemd_analyze_verify(tmp_path) -> None:
    """Only the program's path changes (verify checks that it exists): the venv's, not /usr/local/bin; man
    finds the page the unit's Documentation= names in this checkout, as it would once installed."""
    unit = tmp_path / "haproxy-docker-config.service"
    unit.write_text(replaced((HOST / unit.name).read_text(), {"/usr/local/bin/haproxy-docker-config": str(CLI)}))
    (tmp_path / "man" / "man1").mkdir(parents=True)
    shutil.copy(REPO / "man" / "haproxy-docker-config.1", tmp_path / "man" / "man1")
    verified = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                              env=dict(os.environ, MANPATH=str(tmp_path / "man")), timeout=120)
    assert (verified.returncode, verified.stdout + verified.stderr) == (0, "")


@pytest.fixture
def host_haproxy(tmp_path) -> Iterator[tuple[Path, Path, int]]:
    """examples/host/haproxy.cfg under haproxy -W (master-worker, as Debian's unit runs it) on a loopback port
    instead of :80, its stats socket in tmp_path: (config, pidfile, port)."""
    port = free_port()
    config, pidfile = tmp_path / "haproxy.cfg", tmp_path / "haproxy.pid"
    config.write_text(replaced((HOST / "haproxy.cfg").read_text(), {
        "bind :80\n": f"bind 127.0.0.1:{port}\n", "/run/haproxy/admin.sock": str(tmp_path / "admin.sock")}))
    master = subprocess.Popen(["haproxy", "-W", "-f", str(config), "-p", str(pidfile)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: (tmp_path / "admin.sock").exists() and pidfile.exists(), 10)
        yield config, pidfile, port
    finally:
        master.kill()
        master.wait()
        kill_haproxy_running(config)


def test_host_setup_unit_and_cron_keep_haproxy_in_step(tmp_path, host_haproxy, make_container) -> None:
    """The unit's command follows apps started and stopped under load with zero failed requests and stops
    cleanly on SIGTERM; then the cron line's --sync removes an app that stopped while nothing watched."""
    config, pidfile, port = host_haproxy
    paths = {"/etc/haproxy/haproxy.cfg": str(config), "/run/haproxy.pid": str(pidfile)}
    command = replaced(unit_command((HOST / "haproxy-docker-config.service").read_text()),
                       {"/usr/local/bin/haproxy-docker-config": str(CLI), **paths})
    app = lambda: make_container(labels={LISTEN: "app"})  # noqa: E731 (docker run -d -p 127.0.0.1::8080 --label ...)
    first, second = app(), app()
    log = tmp_path / "watch.log"
    with log.open("w") as err:
        watcher = subprocess.Popen(shlex.split(command), stdout=subprocess.DEVNULL, stderr=err)
    try:
        explain = lambda: log.read_text()[-3000:]  # noqa: E731
        wait_served(port, {first.short_id, second.short_id}, explain)
        outcome = load.Outcome()
        with load.Load(port, 2, outcome):
            third = app()
            wait_served(port, {first.short_id, second.short_id, third.short_id}, explain)
            first.stop()
            wait_served(port, {second.short_id, third.short_id}, explain)
        assert outcome.failures == [] and len(outcome.latencies) > 20
    finally:
        watcher.send_signal(signal.SIGTERM)
        assert watcher.wait(timeout=60) == 0, log.read_text()[-3000:]

    cron = [line for line in (HOST / "haproxy-docker-config.cron").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert cron[0].startswith("PATH=") and len(cron) == 2
    *when, user, line = cron[1].split(None, 6)
    assert (when, user) == (["*"] * 5, "root")  # every minute, as root, in /etc/cron.d's format
    second.stop()
    line = replaced(line, {**paths, "/var/log/haproxy-docker-config.log": str(tmp_path / "cron.log")})
    ran = subprocess.run(["sh", "-c", line], env={"PATH": f"{CLI.parent}:{cron[0][5:]}"}, timeout=120)
    assert ran.returncode == 0, (tmp_path / "cron.log").read_text()
    assert f"{second.short_id:<20}\tremoved" in (tmp_path / "cron.log").read_text().splitlines()
    assert served(port) == {third.short_id}


# --- Compose and Swarm ----------------------------------------------------------------------------------------

class Project:
    """An example directory copied as its comments say (run/ for haproxy, haproxy/ for the tool), driven with
    docker-compose under a project name of its own; `down` at the end whatever happened."""

    def __init__(self, example: Path, tmp_path: Path, **variables: str) -> None:
        self.dir = tmp_path / example.name
        shutil.copytree(example, self.dir)
        (self.dir / "run").mkdir()
        os.chown(self.dir / "run", HAPROXY_UID, HAPROXY_UID)
        for path in [self.dir / "haproxy", *(self.dir / "haproxy").rglob("*")]:
            os.chown(path, TOOL_UID, -1)
        self.name = f"hdcex{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.env = dict(os.environ, **IMAGES, FRONTEND=f"127.0.0.1:{self.port}", HAPROXY_CONTAINER=f"{self.name}-haproxy",
                        DOCKER_GID=str(os.stat("/var/run/docker.sock").st_gid), **variables)

    def compose(self, *args: str) -> str:
        done = subprocess.run(["docker-compose", "-p", self.name, *args], cwd=self.dir, env=self.env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"docker-compose {' '.join(args)}: {done.stderr[-3000:]}"
        return done.stdout

    def ids(self, service: str) -> set[str]:
        return {line[:12] for line in self.compose("ps", "-q", service).split()}

    def logs(self) -> str:
        return subprocess.run(["docker-compose", "-p", self.name, "logs", "--no-color", "haproxy-docker-config"],
                              cwd=self.dir, env=self.env, capture_output=True, text=True).stdout[-3000:]

    def published(self) -> dict[str, list[str]]:
        """Each container of the project: the host ports it publishes."""
        found = {}
        for service in ("haproxy", "haproxy-docker-config", "app"):
            for cid in self.compose("ps", "-q", service).split():
                out = subprocess.run(["docker", "port", cid], capture_output=True, text=True).stdout
                found[f"{service}/{cid[:12]}"] = out.split()
        return found

    @contextlib.contextmanager
    def up(self, *args: str) -> Iterator[Project]:
        try:
            self.compose("up", "-d", *args)
            yield self
        finally:
            self.compose("down", "-v", "--remove-orphans", "-t", "5")


def scale_under_load(project: Project, scale) -> None:
    """Scale the app up and down while clients load the frontend: exactly the running containers answer,
    no request fails. `scale(n)` makes it n and returns the short ids of what runs then."""
    outcome = load.Outcome()
    with load.Load(project.port, 2, outcome):
        for count in (4, 1):
            running = scale(count)
            wait_served(project.port, running, project.logs)
    assert outcome.failures == [] and len(outcome.latencies) > 20, project.logs()


def test_the_compose_project_runs_scales_and_publishes_only_the_frontend(tmp_path, docker_client) -> None:
    project = Project(EXAMPLES / "compose", tmp_path)
    with project.up("--scale", "app=2"):
        wait_served(project.port, project.ids("app"), project.logs, timeout=60)
        assert len(project.ids("app")) == 2
        published = project.published()
        assert {key: value for key, value in published.items() if value} == {
            f"haproxy/{next(iter(project.ids('haproxy')))}": ["8080/tcp", "->", f"127.0.0.1:{project.port}"]}

        def scale(count: int) -> set[str]:
            project.compose("up", "-d", "--no-recreate", "--scale", f"app={count}")
            return project.ids("app")

        scale_under_load(project, scale)
        assert "Reloading HAProxy" not in docker_client.containers.get(f"{project.name}-haproxy").logs().decode()


def test_the_swarm_stack_runs_and_scales_with_haproxy_and_the_tool_beside_it(tmp_path) -> None:
    """stack.yml deployed on the test swarm (a one-node manager); haproxy and the tool with Compose."""
    with swarm(nodes=1):
        stack = f"hdcsw-ex{uuid.uuid4().hex[:6]}"
        env = dict(os.environ, APP_IMAGE=IMAGE)
        # --resolve-image never: the image is local, there is no registry to ask for its digest
        done = subprocess.run(["docker", "stack", "deploy", "--resolve-image", "never", "-c", "stack.yml", stack],
                              cwd=EXAMPLES / "swarm", env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        try:
            project = Project(EXAMPLES / "swarm", tmp_path, STACK=stack)

            def tasks() -> set[str]:
                out = docker_cli("ps", "-q", "--filter", f"label=com.docker.swarm.service.name={stack}_app").stdout
                return set(out.split())

            with project.up():
                wait_until(lambda: len(tasks()) == 3, 60)
                wait_served(project.port, tasks(), project.logs, timeout=60)

                def scale(count: int) -> set[str]:
                    docker_cli("service", "scale", "--detach", f"{stack}_app={count}")
                    wait_until(lambda: len(tasks()) == count, 60)
                    return tasks()

                scale_under_load(project, scale)
        finally:
            docker_cli("stack", "rm", stack, check=False)
            deadline = time.monotonic() + 60
            while docker_cli("network", "ls", "-q", "--filter", f"name={stack}_apps").stdout.strip():
                assert time.monotonic() < deadline, f"network {stack}_apps is still there"
                time.sleep(0.5)
