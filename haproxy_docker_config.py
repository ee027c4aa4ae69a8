# PYTHON_ARGCOMPLETE_OK (argcomplete's global completion looks for this mark)
"""haproxy-docker-config: keep an HAProxy listen/backend section in step with Docker containers.

A Python port of Andreas Schmidt's 2013 Ruby tool of the same name. The config is
edited through Augeas with a lens carried here, containers are looked up through
the Docker Engine API, and haproxy itself validates every change before it
replaces the file.

A map of the sections below, in the order data flows (command line -> settings ->
containers -> text -> commit -> haproxy); each leans only on those above it:

  The command line's values     id lists, ports, filters; FileOptions, HaproxyOptions, Invocation
  Containers and how haproxy    Container (from inspect, list or a swarm task), labels checked,
    reaches them                Addressing: a published port or an address on a Docker network
  The config text               sections, the global settings, templates, server lines (pure)
  Routes                        host and path labels -> routes, precedence, the map, the frontend's
                                lines and the backends made from the #DOCKERBACKEND template (pure)
  The Augeas edge               one listener's section parsed and edited by the lens (Listener)
  What haproxy answers          versions, reload log lines, show stat / servers state, --status drift
  The Docker edge               Engine: the Docker API calls and their errors
  The file edge                 lock, read, write beside, rename or write in place
  The haproxy edge              haproxy -c, hot restart and reload, on the host or in a container
  The Runtime API edge          Runtime: live add, readdress, drain and safe delete of servers
  Actions on one listener       --add, --delete, --check, --verify, --status; Result, Report
  Committing one change         _write and Commit: validate, replace, apply live or reload, roll back
  Sync and prune                what the engines say each listener holds (Fleet), --sync, --prune,
                                and the routes of their apps
  Log lines, metrics            one line per record, said once; Prometheus metrics and /healthz
  Watching                      the Watcher: typed wake-ups, the drainer, validations known, passes
  Output                        plain (the original's), --status table, JSON/YAML
  Running one invocation        ACTIONS: what each action runs, needs and shows
  Command line                  argparse, completion, main()
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import difflib
import functools
import fcntl
import hashlib
import ipaddress
import json
import logging
import os
import queue
import re
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import weakref
from pathlib import Path
from typing import Any, Callable, Iterator, Union

__version__ = "0.1.0"

log = logging.getLogger("haproxy-docker-config")

###############################################################################
# Constants and the lens ######################################################
###############################################################################

DEFAULT_CONFIG = "/etc/haproxy/haproxy.cfg"
DEFAULT_PIDFILE = "/var/run/haproxy.pid"
DEFAULT_LOCK_TIMEOUT = 30.0
DEFAULT_DRAIN_TIMEOUT = 10.0
DEFAULT_COALESCE = 0.25
#: --watch --metrics: /healthz turns 503 when an engine was not synced within --coalesce plus this.
HEALTH_GRACE = 30.0
#: --watch --metrics: a pass runs after this many seconds without events, so that "synced" stays true.
IDLE_RESYNC = 10.0
METRICS_PREFIX = "haproxy_docker_config"
DEFAULT_SWARM_POLL = 1.0
#: --watch polls the tasks this often (at most) while one is about to run: it runs within a second or so.
STARTING_POLL = 0.2
#: --watch: a pass runs this long after a network event too: Docker's container list can show a container
#: connected to a network before it shows its address there (the pass at the event then skips it).
SETTLE_AFTER = 0.5
#: --watch: after a failed pass, retry after this many seconds, doubling up to RETRY_LAST.
RETRY_FIRST = 1.0
RETRY_LAST = 30.0
#: --watch: look at the config's inode, size and times this often, to notice edits by hand.
FILE_POLL = 0.5
#: How long an engine keeps its answer to "which container bind-mounts the config" (a watcher asks it at
#: every write; a one-shot run asks once).
MOUNTS_KEPT = 5.0
#: --watch: ask haproxy this often whether a server waiting to be deleted is unused yet.
DRAIN_POLL = 0.1
#: --watch on a swarm manager: the tasks polled (desired to run, or to stop: leaving ones are drained),
#: this often while a task moves, and for FAST_AFTER seconds after a service or node event.
POLLED_STATES = ("running", "shutdown")
FAST_POLL = 0.1
FAST_AFTER = 5.0
#: Task states of a task on its way to `running` (after `pending`: it has a node).
STARTING_STATES = ("assigned", "accepted", "preparing", "ready", "starting")

EXIT_OK = 0
EXIT_NOT_BALANCED = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_DOCKER = 4
EXIT_HAPROXY = 5

EXIT_STATUS_HELP = """exit status:
  0  done
  1  --check or --verify found a container not balanced / a server not found,
     or --status found the file, haproxy and Docker disagreeing (drift)
  2  usage error (bad option, malformed id list or port)
  3  haproxy config problem (missing or unparsable file, unknown listener,
     no template, file already rejected by haproxy, cannot lock or write)
  4  Docker problem (engine unreachable, unknown or stopped container or
     service, no published port, no network or port to reach it on)
  5  haproxy rejected the change, or its restart failed
  (an unexpected error is one line too, with status 3; -v shows the traceback)"""

#: Module name chosen so it cannot clash with a lens installed on the system.
LENS_MODULE = "Haproxy_docker_config"
LENS_NAME = LENS_MODULE + ".lns"

#: Every keyword that opens a section, for the lens and for finding section boundaries: those of haproxy
#: 2.2 to 3.0 (tests/test_versions.py asks each), and traces, log-profile (3.1) and acme (3.2).
SECTION_KEYWORDS = ("global", "defaults", "frontend", "backend", "listen", "peers", "resolvers", "userlist",
                    "mailers", "cache", "program", "http-errors", "ring", "fcgi-app", "log-forward",
                    "namespace_list", "crt-store", "traces", "log-profile", "acme")
SECTION_HEADER = re.compile(r"^[ \t]*(%s)(?=[ \t\r\n]|$)(?:[ \t]+([^ \t\r\n]+))?" % "|".join(SECTION_KEYWORDS),
                            re.MULTILINE)

#: Every line is a keyword plus the rest of the line; section keywords open a
#: subtree holding the lines that follow. Indentation is kept as a #indent child
#: so that a new server line can be indented like the template line.
LENS = r"""module Haproxy_docker_config =
let eol = del /[ \t]*\r?\n/ "\n"
let ws = del /[ \t]+/ " "
let indent = [ label "#indent" . store /[ \t]+/ ]
let rest = /[^ \t\r\n]([^\r\n]*[^ \t\r\n])?/
let section_kw = /%s/
let keyword = /[^ \t\r\n#\/][^ \t\r\n\/]*/ - section_kw
let blank = [ del /[ \t]*(#[ \t]*)?\r?\n/ "\n" ]
let comment = [ indent? . label "#comment" . del /#[ \t]*/ "#" . store rest . eol ]
let line (kw:regexp) = [ indent? . key kw . (ws . store rest)? . eol ]
let body = (line keyword | comment | blank)*
let section = [ indent? . key section_kw . (ws . store rest)? . eol . body ]
let lns = body . section*
""" % "|".join(SECTION_KEYWORDS)

STATS_SOCKET = re.compile(r"^[ \t]*stats[ \t]+socket[ \t]+([^ \t\r\n]+)([^\r\n]*)", re.MULTILINE)
STATE_FILE = re.compile(r"^[ \t]*server-state-(file|base)[ \t]+([^ \t\r\n#]+)", re.MULTILINE)
MASTER_WORKER = re.compile(r"^[ \t]*master-worker(?=[ \t\r\n]|$)", re.MULTILINE)
#: The version line of `show info` ("Version: 2.2.9-2+deb11u7") or of `haproxy -v` ("HA-Proxy version
#: 2.2.9-2+deb11u7 ..." in 2.2, "HAProxy version 2.6.12-1+deb12u4 ..." in 2.6 and later).
HAPROXY_VERSION = re.compile(r"^(?:Version:[ \t]*|HA-?Proxy version[ \t]+)((\d+)\.(\d+)[^ \t\r\n]*)", re.MULTILINE)
#: What a master-worker haproxy logs once a reload (SIGUSR2) is decided: 2.6 to 3.2 say "Loading
#: success."; 2.6 to 3.0 say "Loading failure!" after a failed load, 3.1 and later (whose new worker, not
#: the master, loads the config) "Failed to load worker (PID) exited with code 1" or "Failed to load
#: worker!"; 2.2 says neither, but "New worker #1 (PID) forked" after a good load and "Reexecuting Master
#: process in waitpid mode" after a failed one. After a failure the old workers keep serving.
RELOAD_SUCCESS = re.compile(r"Loading success|New worker #\d+ \(\d+\) forked")
RELOAD_FAILURE = re.compile(r"Loading failure|Failed to load worker|Reexecuting Master process in waitpid mode")
#: What haproxy splits a config line's words on (isspace in the C locale).
HAPROXY_SPACE = re.compile("[ \t\n\v\f\r]+")
TEMPLATE_MARK = re.compile(r"DOCKERSERVER(?:\s+|$)")
#: A #DOCKERSERVER line (its comment text), and a server line (its indent and keyword, and its value).
TEMPLATE_LINE = re.compile(r"^[ \t]*#[ \t]*(DOCKERSERVER[^\r\n]*)", re.MULTILINE)
SERVER_LINE = re.compile(r"^([ \t]*server[ \t]+)([^\r\n]*)", re.MULTILINE)
ERB_VARIABLE = re.compile(r"<%=\s*(\w+)\s*%>")
TEMPLATE_VARIABLES = ("id", "name", "ip", "port")
CONTAINER_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
WILDCARD_IPS = ("", "0.0.0.0", "::")
LABEL_LISTEN = "haproxy-docker-config.listen"
LABEL_PORT = "haproxy-docker-config.port"
LABEL_NETWORK = "haproxy-docker-config.network"
LABEL_HOST = "haproxy-docker-config.host"
LABEL_PATH = "haproxy-docker-config.path"
LABEL_WEIGHT = "haproxy-docker-config.weight"
LABEL_BACKUP = "haproxy-docker-config.backup"
LABEL_MAXCONN = "haproxy-docker-config.maxconn"
#: Every label of the tool starts so; one it does not know is a typo, and its app is skipped.
LABEL_PREFIX = "haproxy-docker-config."
#: A host name as a route takes it: DNS labels of letters, digits and '-', joined by '.'; `*.` in front
#: for a wildcard (one more label, as in a TLS certificate).
_HOST = r"(?:\*\.)?[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
#: Longest label value of the tool's read: longer ones are refused before any other look at them.
LABEL_LIMIT = 255
#: How much of a value a message quotes (the rest is counted).
QUOTE_LIMIT = 60
PORT_DIGITS = re.compile(r"[0-9]{1,5}")
#: label -> (what its value must match, what that is called, what to give instead), checked by label_value.
LABEL_RULES = {
    "haproxy-docker-config.port": (PORT_DIGITS, "a port in 1..65535", ""),
    "haproxy-docker-config.listen": (re.compile(r"[A-Za-z0-9_.:-]+"), "a listen or backend name "
                                     "(letters, digits, '_', '.', ':', '-')", ""),
    "haproxy-docker-config.network": (re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*"), "a Docker network name or id",
                                      " or give --network"),
    "haproxy-docker-config.host": (re.compile(rf"{_HOST}(?: *, *{_HOST})*"), "host names separated by commas "
                                   "(letters, digits, '-', '.'; '*.' in front for a wildcard)", ""),
    "haproxy-docker-config.path": (re.compile(r"/[A-Za-z0-9._~!&()*+=:@%/,-]*"), "a path prefix starting with "
                                   "'/' (no spaces, no '#', ';', '?', quotes or '$')", ""),
    "haproxy-docker-config.weight": (re.compile(r"[0-9]{1,3}"), "a weight in 0..256", ""),
    "haproxy-docker-config.backup": (re.compile(r"true|false"), "true or false", ""),
    "haproxy-docker-config.maxconn": (re.compile(r"[0-9]{1,6}"), "a maxconn in 0..999999", ""),
}
#: The labels that become words of the app's server line: label -> haproxy's keyword.
SERVER_OPTION_LABELS = {LABEL_WEIGHT: "weight", LABEL_MAXCONN: "maxconn", LABEL_BACKUP: "backup"}
#: What those words look like at the end of a server line the tool wrote.
SERVER_OPTIONS = r"(?:\s+(?:weight\s+[0-9]+|maxconn\s+[0-9]+|backup))*"
#: `#DOCKERROUTES [MAP]` in the frontend that routes by host and path; MAP is the map file's path as
#: haproxy reads it (default: docker-routes.map beside the config).
ROUTES_MARK = re.compile(r"^([ \t]*)#[ \t]*DOCKERROUTES(?:[ \t]+([^ \t\r\n]+))?[ \t]*\r?$", re.MULTILINE)
DEFAULT_MAP = "docker-routes.map"
MAP_PATH = re.compile(r"[A-Za-z0-9_./-]+")
#: The backend that new route backends are made from carries `#DOCKERBACKEND`; those made carry
#: `#DOCKERCREATED`, by which the tool knows them as its own to refresh and remove.
BACKEND_TEMPLATE_MARK = re.compile(r"^[ \t]*#[ \t]*DOCKERBACKEND(?=\s|$)", re.MULTILINE)
CREATED_MARK = re.compile(r"^[ \t]*#[ \t]*DOCKERCREATED(?=\s|$)", re.MULTILINE)
#: The lines the tool writes after #DOCKERROUTES: every one of them names a txn.hdc_ variable.
ROUTE_LINE = re.compile(r"[ \t]*(?:http-request|use_backend)[ \t][^\r\n]*txn\.hdc_[^\r\n]*\r?\n?")
#: The label Docker gives the container of a swarm task.
TASK_LABEL = "com.docker.swarm.task.id"
#: Docker's own networks; every other network is user-defined (`docker network create`, Compose).
DEFAULT_NETWORKS = ("bridge", "host", "none")
#: Container events, and network events, that can change which containers a listener should hold.
WATCH_EVENTS = ("create", "start", "die", "stop", "kill", "pause", "unpause", "destroy", "health_status",
                "connect", "disconnect")
#: Signals of `kill` events that end a container (docker stop sends 15): drain it at once.
STOP_SIGNALS = ("2", "3", "9", "15")
#: Service and node events of a swarm manager: a service created, scaled, updated or removed, a node drained.
SWARM_EVENTS = ("create", "update", "remove")
#: What each template variable may look like in a server line the tool wrote.
VARIABLE_PATTERNS = {"id": "[0-9a-f]{12}", "name": "[A-Za-z0-9][A-Za-z0-9_.-]*", "ip": r"\S+", "port": "[0-9]+"}

###############################################################################
# Errors ######################################################################
###############################################################################


class HdcError(Exception):
    """Base of every error the CLI reports as one line; carries its exit status."""

    status = EXIT_CONFIG

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


class UsageError(HdcError):
    status = EXIT_USAGE


class ConfigError(HdcError):
    status = EXIT_CONFIG


class DockerError(HdcError):
    status = EXIT_DOCKER


class PortError(DockerError):
    """No single port to reach a container on: --sync can point to the port label instead."""


class LabelError(DockerError):
    """A container's (or service's) label of the tool is malformed: that container is skipped, the
    others are served. `key` (container id, label) lets a watcher say it once per value."""

    def __init__(self, message: str, key: tuple[str, str]) -> None:
        super().__init__(message)
        self.key = key


class HaproxyError(HdcError):
    status = EXIT_HAPROXY


class HaproxyDied(HaproxyError):
    """The haproxy a change was being applied to stopped answering: the change is only in the file."""


###############################################################################
# The command line's values: what one invocation asks for #####################
###############################################################################


@dataclasses.dataclass(frozen=True)
class ContainerRef:
    """One ID[:PORT] item of an id list, as the user typed it."""

    ref: str
    port: int | None = None

    def __str__(self) -> str:
        return self.ref if self.port is None else f"{self.ref}:{self.port}"


def quoted(text: str, limit: int = QUOTE_LIMIT) -> str:
    """User input in a message: as typed when it is one plain word, else quoted (one error, one line);
    past `limit` characters shortened, saying how long it was."""
    if len(text) > limit:
        return f"{text[:limit]!r}... ({len(text)} characters)"
    return text if re.fullmatch(r"[\w.:/@+=~-]+", text, re.ASCII) else repr(text)


def _repr(text: str) -> str:
    """Always quoted, shortened like quoted()."""
    return repr(text) if len(text) <= QUOTE_LIMIT else quoted(text)


def is_port(text: str) -> bool:
    """1..65535 in ASCII digits (`str.isdigit` takes any script's digits, and int() of 5,000 of them raises)."""
    return bool(PORT_DIGITS.fullmatch(text)) and 1 <= int(text) <= 65535


def parse_port(text: str, context: str) -> int:
    """A TCP port number 1..65535, or a usage error naming where it came from."""
    if not re.fullmatch(r"[0-9]+", text):
        raise UsageError(f"port {_repr(text)} in {_repr(context)} is not a number; give ID:PORT with PORT in 1..65535")
    if not is_port(text):
        raise UsageError(f"port {quoted(text)} in {_repr(context)} is out of range; give a port in 1..65535")
    return int(text)


def parse_listen_address(text: str) -> tuple[str, int]:
    """`ADDR:PORT` (`[::1]:9101`, `127.0.0.1:9101`, `:9101` for every interface) as (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        raise UsageError(f"--metrics {text!r} is not ADDR:PORT; give e.g. 127.0.0.1:9101")
    return host.strip("[]"), parse_port(port, text)


def parse_id_list(text: str, allow_ports: bool) -> list[ContainerRef]:
    """Split `ID[:PORT][,ID[:PORT]...]`; every malformed item is a usage error."""
    refs: list[ContainerRef] = []
    for item in text.split(","):
        ref, sep, port = item.strip().partition(":")
        if not ref:
            raise UsageError(f"empty container id in {text!r}; give ID[,ID...] without empty items")
        if not CONTAINER_REF.fullmatch(ref):
            raise UsageError(f"{ref!r} is not a container id or name")
        if sep and not allow_ports:
            raise UsageError(f"{item!r}: only --add takes ID:PORT; give the container id alone")
        refs.append(ContainerRef(ref, parse_port(port, item) if sep else None))
    seen = [r.ref for r in refs]
    repeated = sorted({r for r in seen if seen.count(r) > 1})
    if repeated:
        raise UsageError(f"container {repeated[0]} is given more than once in {text!r}; give it once")
    return refs


def parse_filters(items: list[str]) -> dict[str, list[str]]:
    """`KEY=VALUE` items in Docker's filter syntax (`label=app=web`) as a filters dict."""
    filters: dict[str, list[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise UsageError(f"--filter {item!r} is not KEY=VALUE, e.g. label=app=web or ancestor=IMAGE")
        filters.setdefault(key, []).append(value)
    return filters


@dataclasses.dataclass(frozen=True)
class FileOptions:
    """How the config file is read, changed and replaced."""

    path: str
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    validate: bool = True
    dry_run: bool = False
    diff: bool = False
    write_in_place: bool = False
    show: bool = False


@dataclasses.dataclass(frozen=True)
class HaproxyOptions:
    """Which haproxy checks the file, and how a change reaches the running one."""

    binary: str | None = None
    container: str | None = None
    pidfile: str | None = None  # -h: hot-restart the haproxy of this pidfile
    restart: bool = False
    runtime: bool = True
    runtime_socket: str | None = None
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    state_file: str | None = None

    @property
    def reloads(self) -> bool:
        """Whether -h or -r asked for a reload after a change."""
        return self.pidfile is not None or self.restart


@dataclasses.dataclass(frozen=True)
class Invocation:
    """One invocation as decoded from the command line; run() passes this down, never argparse's Namespace."""

    action: str
    listener: str | None
    file: FileOptions
    haproxy: HaproxyOptions
    refs: tuple[ContainerRef, ...] = ()
    filters: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    docker_urls: tuple[str | None, ...] = (None,)
    host_ip: str | None = None
    network: str | None = None
    coalesce: float = DEFAULT_COALESCE
    metrics: tuple[str, int] | None = None  # --watch: serve /metrics and /healthz here
    log_format: str = "plain"
    services: tuple[str, ...] = ()  # --service: the swarm services of the listener
    swarm_poll: float = DEFAULT_SWARM_POLL



###############################################################################
# Containers and how haproxy reaches them #####################################
###############################################################################


@dataclasses.dataclass(frozen=True)
class NetworkAddress:
    """A container's place on one Docker network."""

    id: str
    ipv4: str = ""
    ipv6: str = ""


@dataclasses.dataclass(frozen=True)
class Container:
    """A running container as the actions need it, whichever API call it came from (inspect or list)."""

    id: str
    name: str
    shown: str  # how messages name it: the id the user gave, else the container's name
    aliases: frozenset[str]
    labels: dict[str, str]
    state: str  # running, paused, exited, ...
    health: str | None  # healthy, unhealthy, starting; None without a healthcheck
    networks: dict[str, NetworkAddress]
    exposed: tuple[int, ...]  # tcp ports, published or not
    published: dict[str, Any]  # in the shape of an inspect's NetworkSettings.Ports
    host_ip: str  # where the engine publishes ports
    service: str | None = None  # the swarm service of a task's container (reached on the service's network)


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Where haproxy reaches a backend; `network` is None on the published-port path."""

    ip: str
    port: int
    network: str | None = None


def container_aliases(attrs: dict[str, Any]) -> set[str]:
    """The names a server of this container may carry: full id, short id, name."""
    names = {attrs["Id"], attrs["Id"][:12], attrs.get("Name", "").lstrip("/")}
    names.update(n.lstrip("/") for n in attrs.get("Names") or ())
    return names - {""}


def _network_addresses(networks: dict[str, Any] | None) -> dict[str, NetworkAddress]:
    return {name: NetworkAddress(n.get("NetworkID", ""), n.get("IPAddress") or "", n.get("GlobalIPv6Address") or "")
            for name, n in (networks or {}).items()}


def _tcp_ports(keys: Any) -> tuple[int, ...]:
    """Port numbers of `8080/tcp`-style keys."""
    return tuple(sorted({int(k.partition("/")[0]) for k in keys or () if k.endswith("/tcp")}))


def list_ports(ports: list[dict[str, Any]] | None) -> dict[str, list[dict[str, str]]]:
    """A list call's Ports in the shape of an inspect's NetworkSettings.Ports."""
    result: dict[str, list[dict[str, str]]] = {}
    for port in ports or ():
        if port.get("PublicPort"):
            key = f"{port['PrivatePort']}/{port.get('Type', 'tcp')}"
            result.setdefault(key, []).append({"HostIp": port.get("IP", ""), "HostPort": str(port["PublicPort"])})
    return result


def container_from_inspect(attrs: dict[str, Any], host_ip: str, shown: str) -> Container:
    """A Container from `docker inspect` of a container."""
    state = attrs.get("State") or {}
    settings = attrs.get("NetworkSettings") or {}
    config = attrs.get("Config") or {}
    status = "paused" if state.get("Paused") else state.get("Status") or ("running" if state.get("Running") else "exited")
    return Container(attrs["Id"], attrs.get("Name", "").lstrip("/"), shown, frozenset(container_aliases(attrs)),
                   config.get("Labels") or {}, status, (state.get("Health") or {}).get("Status"),
                   _network_addresses(settings.get("Networks")), _tcp_ports(config.get("ExposedPorts")),
                   settings.get("Ports") or {}, host_ip)


def container_from_list(entry: dict[str, Any], host_ip: str) -> Container:
    """A Container from one item of Docker's container list (`docker ps`)."""
    name = (entry.get("Names") or ["/" + entry["Id"][:12]])[0].lstrip("/")
    health = re.search(r"\((healthy|unhealthy|health: starting)\)", entry.get("Status", ""))
    ports = entry.get("Ports") or ()
    return Container(entry["Id"], name, name, frozenset(container_aliases(entry)), entry.get("Labels") or {},
                   entry.get("State", "running"), health.group(1).replace("health: ", "") if health else None,
                   _network_addresses((entry.get("NetworkSettings") or {}).get("Networks")),
                   _tcp_ports(f"{p['PrivatePort']}/{p.get('Type', 'tcp')}" for p in ports), list_ports(ports), host_ip)


def task_runs(task: dict[str, Any]) -> bool:
    """Whether a task of GET /tasks is meant to run and does, in a container (desired and actual state)."""
    status = task.get("Status") or {}
    return task.get("DesiredState") == "running" and status.get("State") == "running" and _has_container(task)


def _has_container(task: dict[str, Any]) -> bool:
    return bool(((task.get("Status") or {}).get("ContainerStatus") or {}).get("ContainerID"))


def task_name(task: dict[str, Any], service: str) -> str:
    """The name Docker gives a task's container: SERVICE.SLOT.TASKID (SERVICE.NODEID.TASKID when global)."""
    return f"{service}.{task.get('Slot') or task.get('NodeID', '')}.{task['ID']}"


def _task_networks(task: dict[str, Any]) -> dict[str, NetworkAddress]:
    """A task's addresses by network name; not the ingress network, which only leads to the service VIP."""
    networks = {}
    for attachment in task.get("NetworksAttachments") or ():
        network = attachment.get("Network") or {}
        spec = network.get("Spec") or {}
        if spec.get("Ingress") or not spec.get("Name"):
            continue
        addresses = [a.partition("/")[0] for a in attachment.get("Addresses") or ()]
        networks[spec["Name"]] = NetworkAddress(network.get("ID", ""), next((a for a in addresses if ":" not in a), ""),
                                                next((a for a in addresses if ":" in a), ""))
    return networks


def service_ports(service: dict[str, Any]) -> tuple[int, ...]:
    """The tcp target ports a service publishes (its containers' side of `--publish`)."""
    ports = ((service.get("Spec") or {}).get("EndpointSpec") or {}).get("Ports") or ()
    return tuple(sorted({p["TargetPort"] for p in ports if p.get("Protocol", "tcp") == "tcp" and p.get("TargetPort")}))


def container_from_task(task: dict[str, Any], service: dict[str, Any], exposed: tuple[int, ...]) -> Container:
    """A Container from a task of GET /tasks: its container, on whichever node of the swarm it runs.

    It carries its service's labels (where a service says its listener, port and network) and is
    always reached on a network: the service VIP is never used, haproxy balances every task itself."""
    name = (service.get("Spec") or {}).get("Name", "")
    status = task.get("Status") or {}
    cid = (status.get("ContainerStatus") or {}).get("ContainerID", "")
    container = task_name(task, name)
    return Container(cid, container, container, frozenset({cid, cid[:12], container}),
                   (service.get("Spec") or {}).get("Labels") or {}, "running" if task_runs(task) else status.get("State", ""),
                   None, _task_networks(task), exposed, {}, "", name)


def is_backed(name: str, containers: list[Container]) -> bool:
    """Whether a server name belongs to one of these containers."""
    return any(name in b.aliases or id_prefix(name, b.id) for b in containers)


def id_prefix(given: str, full_id: str) -> bool:
    """Whether `given` names the object of `full_id` by a prefix of its id: Docker's 12 characters or more."""
    return len(given) >= 12 and full_id.startswith(given)


def container_state(container: Container) -> str:
    """A container's state as --status shows it: `unhealthy` for a running one failing its health check."""
    return "unhealthy" if container.state == "running" and container.health == "unhealthy" else container.state


def state_of_server(name: str, containers: list[Container]) -> str:
    """The state of the container a server name stands for (as --verify matches), or `absent`;
    of several (the same name on two engines) the one closest to running."""
    states = [container_state(c) for c in containers if is_backed(name, [c])]
    order = ("running", "unhealthy", "paused", "restarting")
    return min(states, key=lambda s: order.index(s) if s in order else len(order), default="absent")


def label_value(container: Container, key: str) -> str | None:
    """The value of one of the tool's labels, checked before any use with bounded work (the length first);
    None when the container (or service) has no such label; LabelError when the value is malformed."""
    value = container.labels.get(key)
    if value is None:
        return None
    what, ref = _subject(container)
    pattern, wanted, fix = LABEL_RULES[key]
    if len(value) <= LABEL_LIMIT and pattern.fullmatch(value) and _in_range(key, value):
        return value
    raise LabelError(f"{what} has label {key}={quoted(value)}, which is not {wanted}; fix the label"
                     + (f" or give {ref}:PORT" if key == LABEL_PORT else fix), key=(container.id, key))


def _in_range(key: str, value: str) -> bool:
    return is_port(value) if key == LABEL_PORT else int(value) <= 256 if key == LABEL_WEIGHT else True


def check_labels(container: Container) -> None:
    """LabelError for the first of the tool's labels that is malformed or unknown (a typo such as
    `haproxy-docker-config.wieght` would otherwise be silently ignored)."""
    for key in sorted(k for k in container.labels if k.startswith(LABEL_PREFIX)):
        if key not in LABEL_RULES:
            what = _subject(container)[0]
            known = ", ".join(k.removeprefix(LABEL_PREFIX) for k in LABEL_RULES)
            raise LabelError(f"{what} has label {quoted(key)}, which the tool does not know; use one of "
                             f"{LABEL_PREFIX}{{{known}}}", key=(container.id, key))
        label_value(container, key)
    if LABEL_PATH in container.labels and LABEL_HOST not in container.labels:
        raise LabelError(f"{_subject(container)[0]} has label {LABEL_PATH} but no {LABEL_HOST}; a path routes "
                         f"only under a host: add {LABEL_HOST}=NAME", key=(container.id, LABEL_PATH))


def server_options(container: Container) -> str:
    """The words its labels add to an app's server line (`weight 5 maxconn 100 backup`), checked."""
    words = []
    for key, keyword in SERVER_OPTION_LABELS.items():
        value = label_value(container, key)
        if key == LABEL_BACKUP:
            words += [keyword] if value == "true" else []
        elif value is not None:
            words += [keyword, str(int(value))]
    return " ".join(words)


def chosen_port(container: Container, given: int | None) -> int | None:
    """The private port asked for: ID:PORT, else the label haproxy-docker-config.port, else None."""
    if given is not None:
        return given
    label = label_value(container, LABEL_PORT)
    return None if label is None else int(label)


def published_ports(ports: dict[str, Any] | None) -> dict[int, list[dict[str, str]]]:
    """Private tcp port -> host bindings, from an inspect's NetworkSettings.Ports."""
    result: dict[int, list[dict[str, str]]] = {}
    for key, bindings in (ports or {}).items():
        number, _, proto = key.partition("/")
        if proto == "tcp" and bindings:
            result[int(number)] = bindings
    return result


def choose_endpoint(ref: ContainerRef, ports: dict[str, Any] | None, host_ip: str) -> tuple[str, int]:
    """The (ip, host port) haproxy should use to reach the container of `ref`."""
    published = published_ports(ports)
    listed = ", ".join(str(p) for p in sorted(published))
    if ref.port is not None:
        if ref.port not in published:
            hint = f"it publishes {listed}" if published else "it publishes no tcp port"
            raise PortError(f"container {ref.ref} does not publish tcp port {ref.port}; {hint}")
        bindings = published[ref.port]
    elif not published:
        raise PortError(f"container {ref.ref} publishes no tcp port; run it with -p HOSTPORT:PORT")
    elif len(published) > 1:
        raise PortError(f"container {ref.ref} publishes several tcp ports ({listed}); give {ref.ref}:PORT")
    else:
        bindings = next(iter(published.values()))
    binding = sorted(bindings, key=lambda b: ":" in b.get("HostIp", ""))[0]
    ip = binding.get("HostIp", "")
    return (host_ip if ip in WILDCARD_IPS else ip), int(binding["HostPort"])


@dataclasses.dataclass(frozen=True)
class Published:
    """Reach a container through a port it publishes on its engine's host (the 2013 way)."""

    def endpoint(self, container: Container, port: int | None) -> Endpoint:
        return Endpoint(*choose_endpoint(ContainerRef(container.shown, port), container.published, container.host_ip))

    def reaches(self, container: Container) -> bool:
        return True


@dataclasses.dataclass(frozen=True)
class OnNetwork:
    """Reach a container at its address on a Docker network, on the port the application listens on."""

    network: str

    def endpoint(self, container: Container, port: int | None) -> Endpoint:
        address = self._address(container)
        if address is None:
            on = ", ".join(sorted(container.networks)) or "no network"
            raise DockerError(f"{_subject(container)[0]} is not attached to network {quoted(self.network)} "
                              f"(it is on {on}); connect it or give another --network")
        return Endpoint(address.ipv4 or address.ipv6, port or _exposed_port(container), self.network)

    def reaches(self, container: Container) -> bool:
        return self._address(container) is not None

    def _address(self, container: Container) -> NetworkAddress | None:
        """Its address on the network named, or whose id (or id prefix) is given; None if not attached."""
        for name, address in container.networks.items():
            if self.network in (name, address.id) or id_prefix(self.network, address.id):
                return address if address.ipv4 or address.ipv6 else None
        return None


def _service_network(container: Container) -> str:
    """The one network a task's service is attached to; several or none is an error naming them."""
    if len(container.networks) == 1:
        return next(iter(container.networks))
    if container.networks:
        raise DockerError(f"service {container.service} is on several networks ({', '.join(sorted(container.networks))}); "
                          f"give --network NAME or the service label {LABEL_NETWORK}=NAME")
    raise DockerError(f"service {container.service} is on no network but ingress, which leads only to its VIP; "
                      f"attach it to an overlay network (docker service update --network-add NAME)")


def _subject(container: Container) -> tuple[str, str]:
    """How a message names a container, and what to give as WHAT:PORT: the service for a task."""
    if container.service is not None:
        return f"service {container.service}", container.service
    return f"container {container.shown}", container.shown


def _exposed_port(container: Container) -> int:
    """The one tcp port a container exposes (image EXPOSE, --expose, or published)."""
    if len(container.exposed) == 1:
        return container.exposed[0]
    what, ref = _subject(container)
    if container.exposed:
        listed = ", ".join(map(str, container.exposed))
        raise PortError(f"{what} exposes several tcp ports ({listed}); give {ref}:PORT")
    raise PortError(f"{what} exposes no tcp port; give {ref}:PORT or the label {LABEL_PORT}=PORT")


@dataclasses.dataclass(frozen=True)
class Addressing:
    """Chooses, per container, how haproxy reaches it: the seam every action resolves addresses through."""

    network: str | None = None  # --network
    shared_with: frozenset[str] | None = None  # user-defined networks of --haproxy-container's container
    haproxy: str | None = None

    def reach_for(self, container: Container) -> Published | OnNetwork:
        """The container's (or service's) label wins, then --network, then the one network a task's service
        is on, or the one network a container shares with haproxy's container."""
        chosen = label_value(container, LABEL_NETWORK) or self.network
        if chosen:
            return OnNetwork(chosen)
        if container.service is not None:
            return OnNetwork(_service_network(container))
        shared = sorted(set(container.networks) & (self.shared_with or frozenset()))
        if len(shared) > 1:
            raise DockerError(f"container {container.shown} shares several networks with haproxy's container "
                              f"{self.haproxy} ({', '.join(shared)}); give --network NAME")
        if shared:
            log.info("%s: reached on network %s, which it shares with haproxy's container %s",
                     container.shown, shared[0], self.haproxy)
            return OnNetwork(shared[0])
        return Published()

    def endpoint(self, container: Container, port: int | None) -> Endpoint:
        return self.reach_for(container).endpoint(container, chosen_port(container, port))


def template_values(container: Container, endpoint: Endpoint) -> dict[str, Any]:
    """The variables a #DOCKERSERVER template may use."""
    return {"id": container.id[:12], "name": container.name, "ip": endpoint.ip, "port": endpoint.port}



###############################################################################
# The config text: sections, templates, server lines ##########################
###############################################################################


def sections(text: str) -> list[tuple[str, str, int, int]]:
    """(keyword, name, start, end) of every section, split on the lens's own section keywords."""
    heads = [(m.start(), m.group(1), m.group(2) or "") for m in SECTION_HEADER.finditer(text)]
    ends = [start for start, _, _ in heads[1:]] + [len(text)]
    return [(kind, name, start, end) for (start, kind, name), end in zip(heads, ends)]


@dataclasses.dataclass(frozen=True)
class StatsSocket:
    """A `stats socket` of the global section: where the Runtime API answers."""

    address: str
    admin: bool
    expose_fd: bool


@dataclasses.dataclass
class GlobalSettings:
    """What the tool needs from the global section."""

    sockets: list[StatsSocket] = dataclasses.field(default_factory=list)
    master_worker: bool = False
    state_file: str | None = None  # server-state-file, joined to server-state-base

    def admin_socket(self) -> str | None:
        return next((s.address for s in self.sockets if s.admin), None)

    def exposed_socket(self) -> str | None:
        """A unix stats socket with `expose-fd listeners`, for -x."""
        return next((s.address.removeprefix("unix@") for s in self.sockets
                     if s.expose_fd and re.fullmatch(r"(unix@)?[^@]*/[^@]*", s.address)), None)


def global_settings(text: str) -> GlobalSettings:
    """Stats sockets, master-worker mode and server state file of the global section."""
    found, paths = GlobalSettings(), {}
    for kind, _, start, end in sections(text):
        if kind != "global":
            continue
        found.master_worker = found.master_worker or bool(MASTER_WORKER.search(text, start, end))
        paths.update((m.group(1), m.group(2)) for m in STATE_FILE.finditer(text, start, end))
        for match in STATS_SOCKET.finditer(text, start, end):
            words = match.group(2).split("#", 1)[0].split()
            pairs = dict(zip(words, words[1:]))
            found.sockets.append(StatsSocket(match.group(1), pairs.get("level", "operator") == "admin",
                                             pairs.get("expose-fd") == "listeners"))
    if "file" in paths:
        found.state_file = os.path.join(paths.get("base", ""), paths["file"])
    return found


def templated_listeners(text: str) -> list[str]:
    """The listen and backend sections that carry a #DOCKERSERVER template line, in file order."""
    mark = re.compile(r"^[ \t]*#[ \t]*DOCKERSERVER(?=\s|$)", re.MULTILINE)
    return [name for kind, name, start, end in sections(text)
            if kind in ("listen", "backend") and mark.search(text, start, end)]


def template_of(comment: str) -> str | None:
    """The server line template of a `#DOCKERSERVER ...` comment, or None."""
    match = TEMPLATE_MARK.match(comment)
    return comment[match.end():].strip() if match else None


def render_template(template: str, values: dict[str, Any]) -> str:
    """Render `$id ${ip}:$port ...`; the original's `<%= id %>` form means the same."""
    text = ERB_VARIABLE.sub(lambda m: "${" + m.group(1) + "}", template)
    try:
        line = string.Template(text).substitute(values)
    except KeyError as exc:
        known = ", ".join("$" + v for v in TEMPLATE_VARIABLES)
        raise ConfigError(f"template {template!r} uses unknown variable ${exc.args[0]}; use {known}") from None
    except ValueError:
        raise ConfigError(f"template {template!r} has a stray '$'; write $$ for a literal dollar sign") from None
    if not line.split():
        raise ConfigError(f"template {template!r} renders an empty server line")
    return line


def template_pattern(template: str) -> re.Pattern[str]:
    """Matches the server lines this template renders: the servers the tool manages."""
    marks = {name: f"\0{name}\0" for name in TEMPLATE_VARIABLES}
    words = render_template(template, marks).split()
    pattern = r"\s+".join(re.escape(word) for word in words)
    for name, mark in marks.items():
        pattern = pattern.replace(re.escape(mark), VARIABLE_PATTERNS[name])
    return re.compile(pattern + SERVER_OPTIONS)


def _words(line: str) -> list[str]:
    """The words of a line as haproxy splits them: on C's isspace, not on Python's wider whitespace
    (a name holding 0x1c or 0xa0, say, is one word to haproxy)."""
    return [word for word in HAPROXY_SPACE.split(line) if word]


def server_name(line: str | None) -> str:
    """The name of a server from the value of its line (`NAME ADDR:PORT ...`)."""
    words = _words(line or "")
    return words[0] if words else ""


def server_address(line: str) -> tuple[str | None, int | None]:
    """(ip, port) of a server line's value (`NAME ADDR:PORT ...`); None where it has none."""
    words = _words(line)
    return split_address(words[1]) if len(words) > 1 else (None, None)


def split_address(address: str) -> tuple[str | None, int | None]:
    """`ip:port` of a server line as (ip, port), port None when there is none."""
    host, sep, port = address.rpartition(":")
    if sep and port.isdigit():
        return host.strip("[]"), int(port)
    return address, None


def unified_diff(path: str, old: str, new: str) -> str:
    """The change as a unified diff labelled before/after."""
    lines = difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True),
        fromfile=f"{path} (before)", tofile=f"{path} (after)")
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


@dataclasses.dataclass(frozen=True)
class LivePlan:
    """What one listener's change asks of the running haproxy."""

    upserts: list[str]  # server lines to add or update
    removals: list[str]  # server names to remove
    kept: frozenset[str]  # the names the file holds after the change
    before: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> line, of those updated


def live_changes(before: dict[str, str], after: dict[str, str]) -> LivePlan:
    """The live plan between two server sets (name -> line) of a listener."""
    upserts = [line for name, line in after.items() if before.get(name) != line]
    return LivePlan(upserts, [name for name in before if name not in after], frozenset(after),
                    {name: before[name] for name in map(server_name, upserts) if name in before})


def option_changes(old: str, new: str) -> tuple[list[str], bool]:
    """What changed of the labels' server options between two lines of one server: the Runtime API
    commands' words for weight and maxconn, and whether `backup` changed (which only a reload applies)."""
    def options(line: str) -> dict[str, str]:
        words = _words(line)
        found = {w: words[i + 1] for i, w in enumerate(words[:-1]) if w in ("weight", "maxconn")}
        return found | ({"backup": ""} if "backup" in words[2:] else {})

    was, now = options(old), options(new)
    asks = [f"{key} {now.get(key, '1' if key == 'weight' else '0')}" for key in ("weight", "maxconn")
            if was.get(key) != now.get(key)]
    return asks, ("backup" in was) != ("backup" in now)


def _without_servers(text: str) -> str:
    """The config without its server lines: what a hand edit changed beyond the servers."""
    return re.sub(r"^[ \t]*server[ \t][^\n]*\n?", "", text, flags=re.MULTILINE)


def listener_span(text: str, name: str, source: str) -> tuple[int, int, int]:
    """(start, end, first line) of the `listen NAME` or `backend NAME` section in text."""
    named = [(kind, start, end) for kind, n, start, end in sections(text) if n == name]
    usable = [(start, end) for kind, start, end in named if kind in ("listen", "backend")]
    if len(usable) > 1:
        raise ConfigError(f"{source}: listener {quoted(name)} is defined {len(usable)} times; keep one")
    if not usable and named:
        raise ConfigError(f"{source}: {quoted(name)} is a {named[0][0]} section; -l needs a listen or backend section")
    if not usable:
        raise ConfigError(f"{source}: no listen or backend section named {quoted(name)}; check -l and -f")
    (start, end), = usable
    return start, end, text.count("\n", 0, start) + 1


def section_servers(text: str, name: str, source: str) -> tuple[dict[str, str], str | None]:
    """The server lines (name -> value, in file order) and the one #DOCKERSERVER template (or None) of a
    listener, read without Augeas: what a watcher needs after each pass, in a fraction of a parse's time.
    The values are what the lens reads (the rest of the line, trailing blanks off)."""
    start, end, _ = listener_span(text, name, source)
    section = text[start:end]
    lines = {}
    for match in SERVER_LINE.finditer(section):
        value = match.group(2).rstrip(" \t\r")
        lines.setdefault(server_name(value), value)
    return lines, _section_template(section)


def _section_template(section: str) -> str | None:
    found = [template_of(m.group(1)) for m in TEMPLATE_LINE.finditer(section)]
    found = [f for f in found if f]
    return found[0] if len(found) == 1 else None


def _simple(template: str) -> bool:
    """Template variables in the name and address words only, the address holding the ip and the port."""
    words = ERB_VARIABLE.sub(lambda m: "${" + m.group(1) + "}", template).split()
    return len(words) > 1 and "$" not in " ".join(words[2:]) and "ip" in words[1] and "port" in words[1]


def validation_key(text: str) -> str:
    """The digest Validations knows a text by (see there)."""
    shaped = text
    for kind, _, start, end in reversed(sections(text)):
        template = _section_template(text[start:end]) if kind in ("listen", "backend") else None
        if template is None or not _simple(template):
            continue
        shape = template_pattern(template)
        body = SERVER_LINE.sub(lambda m: m.group(1) + template if shape.fullmatch(m.group(2)) else m.group(0),
                               text[start:end])
        shaped = shaped[:start] + body + shaped[end:]
    return hashlib.sha256(shaped.encode("latin-1", "replace")).hexdigest()


def _name_pattern(template: str | None) -> re.Pattern[str] | None:
    """The shape of the names the template gives servers; None without one template."""
    try:
        return template_pattern(template.split()[0]) if template else None
    except (ConfigError, IndexError):
        return None



###############################################################################
# Routes: host names and paths from labels, the map and the sections they need #
###############################################################################


@dataclasses.dataclass(frozen=True)
class Route:
    """One host (exact or `*.` wildcard) and path prefix, sent to one backend."""

    host: str  # lower case
    path: str  # a prefix; "/" when the app gave none
    backend: str

    @property
    def key(self) -> str:
        """The map's key: what the frontend's lookup begins with (`shop.example.com/api`, `.example.com/`)."""
        return self.host.removeprefix("*") + self.path

    def rank(self) -> tuple[bool, int, str, str]:
        """Precedence, most specific first: exact hosts before wildcards, longer paths before shorter."""
        return self.host.startswith("*."), -len(self.path), self.host, self.path

    def document(self) -> dict[str, str]:
        """As the JSON/YAML documents list it."""
        return dataclasses.asdict(self) | {"key": self.key}


def backend_for_host(host: str) -> str:
    """The backend a route gets without a listen label: its first host, which is a valid haproxy name
    (letters, digits, '-', '.'), `*.` of a wildcard spelled `wildcard.`."""
    return "wildcard" + host[1:] if host.startswith("*.") else host


def container_routes(container: Container) -> list[Route]:
    """The routes the labels of a container (or service) ask for; LabelError when one is malformed."""
    hosts = label_value(container, LABEL_HOST)
    if hosts is None:
        return []
    names = list(dict.fromkeys(h.strip().lower() for h in hosts.split(",")))
    path = label_value(container, LABEL_PATH) or "/"
    backend = label_value(container, LABEL_LISTEN) or backend_for_host(names[0])
    return [Route(host, path, backend) for host in names]


def route_table(claims: list[tuple[Route, str]]) -> list[Route]:
    """The routes in precedence order, from (route, who asks for it). Two backends claiming the same
    host and path: the backend whose name sorts first wins, and a warning names both."""
    by_key: dict[str, dict[str, tuple[Route, str]]] = {}
    for route, who in claims:
        by_key.setdefault(route.key, {}).setdefault(route.backend, (route, who))
    table = []
    for key, backends in by_key.items():
        winner = min(backends)
        for loser in sorted(backends)[1:]:
            log.warning("warning: %s and %s both route %s%s (backends %s and %s); backend %s gets it (the name "
                        "that sorts first): give one of them another host or path", backends[winner][1],
                        backends[loser][1], backends[winner][0].host, backends[winner][0].path, winner, loser,
                        winner, extra={"once": ("route", key, winner, loser)})
        table.append(backends[winner][0])
    return sorted(table, key=Route.rank)


def map_text(routes: list[Route]) -> str:
    """The map file: one `KEY BACKEND` line per route, in precedence order (map_beg takes the first match)."""
    head = "# haproxy-docker-config: the routes of #DOCKERROUTES, most specific first; rewritten on every change\n"
    return head + "".join(f"{r.key} {r.backend}\n" for r in routes)


def map_entries(text: str) -> list[tuple[str, str]]:
    """(key, backend) of a map file's text or of `show map`'s answer (whose lines start with an id)."""
    entries = []
    for line in text.splitlines():
        words = line.split()
        if words and words[0].startswith("0x"):
            words = words[1:]
        if len(words) >= 2 and not words[0].startswith("#"):
            entries.append((words[0], words[1]))
    return entries


@dataclasses.dataclass(frozen=True)
class RoutesMark:
    """The `#DOCKERROUTES` line of the config: the section that routes, and its map file."""

    section: str
    map_ref: str  # the map's path as haproxy reads it (in the config, and on the Runtime API)
    map_file: Path  # where the tool writes it: the ref's file name, beside the config

    def read_map(self) -> str | None:
        """The map file's text; None when there is none yet."""
        try:
            return self.map_file.read_bytes().decode("latin-1")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError(f"cannot read the routes' map {self.map_file} ({exc.strerror}); "
                              f"fix its permissions") from None


def routes_mark(text: str, config: Path, source: str) -> RoutesMark | None:
    """The one #DOCKERROUTES line, in a frontend or listen section; None when the config has none."""
    found = [(kind, name, m) for kind, name, start, end in sections(text)
             for m in ROUTES_MARK.finditer(text, start, end)]
    if not found:
        return None
    if len(found) > 1:
        raise ConfigError(f"{source} has {len(found)} #DOCKERROUTES lines; keep one, in the frontend that routes")
    (kind, name, match), = found
    if kind not in ("frontend", "listen"):
        raise ConfigError(f"{source}: #DOCKERROUTES is in the {kind} section {name}; put it in a frontend")
    ref = match.group(2) or str(config.parent / DEFAULT_MAP)
    if not MAP_PATH.fullmatch(ref) or not ref.startswith("/"):
        raise ConfigError(f"{source}: #DOCKERROUTES {quoted(ref)} is no absolute map path; give one of letters, "
                          f"digits, '_', '.', '/', '-', such as /etc/haproxy/{DEFAULT_MAP}")
    return RoutesMark(name, ref, config.parent / Path(ref).name)


def route_lines(ref: str, indent: str, newline: str) -> str:
    """What the tool writes after #DOCKERROUTES: the request's host (lower case, without its port) and
    path in two variables, looked up in the map as `host/path`, then as `.domain/path` for wildcards."""
    key = "var(txn.hdc_host),concat(,txn.hdc_path)"
    wild = "var(txn.hdc_host),regsub(^[^.]*,),concat(,txn.hdc_path)"
    lines = ["http-request set-var(txn.hdc_host) req.hdr(host),field(1,:),lower",
             "http-request set-var(txn.hdc_path) path"]
    lines += [f"use_backend %[{k},map_beg({ref})] if {{ {k},map_beg({ref}) -m found }}" for k in (key, wild)]
    return "".join(indent + line + newline for line in lines)


def with_route_lines(text: str, mark: RoutesMark) -> str:
    """The config with the tool's lines right after #DOCKERROUTES (those there before replaced)."""
    match = ROUTES_MARK.search(text)
    assert match is not None
    after = text.index("\n", match.start()) + 1 if "\n" in text[match.start():] else len(text)
    end = after
    while (line := ROUTE_LINE.match(text, end)) and line.end() > end:
        end = line.end()
    newline = "\r\n" if match.group(0).endswith("\r") else "\n"
    head = text[:after] if after > match.end() else text + newline
    return head + route_lines(mark.map_ref, match.group(1) or "    ", newline) + text[end:]


def _content_end(text: str, start: int, end: int) -> int:
    """Where a section's last line that is not blank or a comment ends (its #DOCKERSERVER line counts):
    what follows belongs to whatever the next section is, for the reader."""
    last = start
    for match in re.finditer(r"^([^\n]*)(\n|$)", text[start:end], re.MULTILINE):
        stripped = match.group(1).strip()
        if stripped and (not stripped.startswith("#") or TEMPLATE_MARK.match(stripped.lstrip("#").strip())):
            last = start + match.end()
    return last


def backend_template(text: str, source: str) -> tuple[str, str] | None:
    """(name, body) of the backend marked #DOCKERBACKEND: what a created backend is made of, its mark and
    its server lines left out; None when there is none."""
    found = [(name, start, end) for kind, name, start, end in sections(text)
             if kind == "backend" and BACKEND_TEMPLATE_MARK.search(text, start, end)]
    if len(found) > 1:
        raise ConfigError(f"{source} has {len(found)} backends marked #DOCKERBACKEND; keep one template")
    if not found:
        return None
    (name, start, end), = found
    section = text[start:_content_end(text, start, end)]
    body = section.split("\n", 1)[1] if "\n" in section else ""
    lines = [line for line in body.splitlines(keepends=True)
             if line.strip() and not BACKEND_TEMPLATE_MARK.match(line) and not SERVER_LINE.match(line)]
    return name, "".join(lines)


def created_section(name: str, template: tuple[str, str], newline: str = "\n") -> str:
    """A backend made for routes: the template's body under a #DOCKERCREATED line saying whose it is."""
    mark = (f"    #DOCKERCREATED by haproxy-docker-config from backend {template[0]} for the routes of its "
            f"containers; removed when none is left{newline}")
    body = template[1] if template[1].endswith("\n") or not template[1] else template[1] + newline
    return f"backend {name}{newline}{mark}{body}"


@dataclasses.dataclass
class RouteChange:
    """What a pass changes of the routing: the config text and the map, old and new."""

    mark: RoutesMark
    routes: list[Route]
    old_map: str | None  # None: there was no map file
    new_map: str
    created: list[str] = dataclasses.field(default_factory=list)
    refreshed: list[str] = dataclasses.field(default_factory=list)
    removed: list[str] = dataclasses.field(default_factory=list)
    lines_changed: bool = False

    @property
    def map_changed(self) -> bool:
        return self.old_map != self.new_map

    @property
    def needs_reload(self) -> bool:
        """Sections made, changed or removed, or the frontend's lines changed: only a reload applies them."""
        return bool(self.created or self.refreshed or self.removed or self.lines_changed)


def route_config(text: str, mark: RoutesMark, routes: list[Route], source: str,
                 old_map: str | None) -> tuple[str, RouteChange]:
    """The config with the frontend's lines and the backends the routes need: a backend the file lacks is
    made from the #DOCKERBACKEND template, one made earlier that no route names is removed, one made
    from an older template is made again. A route to a backend the file lacks, with no template, is
    dropped with a warning. Returns the text and the change (whose routes are those served)."""
    new = with_route_lines(text, mark)
    change = RouteChange(mark, [], old_map, "", lines_changed=new != text)
    template = backend_template(new, source)
    wanted = {r.backend for r in routes}
    newline = "\r\n" if "\r\n" in text else "\n"
    for kind, name, start, end in reversed(sections(new)):
        if kind != "backend" or not CREATED_MARK.search(new, start, end):
            continue
        stop = _content_end(new, start, end)
        if name not in wanted or template is None:
            new = new[:start] + new[stop:]
            change.removed.append(name)
        elif _without_servers(new[start:stop]) != _without_servers(created_section(name, template, newline)):
            new = new[:start] + created_section(name, template, newline) + new[stop:]
            change.refreshed.append(name)
    present = {name for kind, name, _, _ in sections(new) if kind in ("backend", "listen")}
    served = []
    for route in routes:
        if route.backend in present:
            served.append(route)
        elif template is not None:
            new = (new if new.endswith("\n") or not new else new + newline) + created_section(route.backend, template,
                                                                                               newline)
            present.add(route.backend)
            change.created.append(route.backend)
            served.append(route)
        else:
            log.warning("warning: the route %s%s needs backend %s, which %s lacks; write it, or a template "
                        "backend holding a #DOCKERBACKEND line; route skipped", route.host, route.path,
                        route.backend, source, extra={"once": ("no backend", route.backend)})
    change.routes, change.new_map = served, map_text(served)
    return new, change



###############################################################################
# The Augeas edge: one listener's section edited through the lens #############
###############################################################################


@contextlib.contextmanager
def _lens_dir() -> Iterator[str]:
    """A directory holding the lens file, for Augeas's loadpath.

    Written once per lens version into a private cache directory, so that a run
    killed mid-parse leaves nothing behind; a temp dir when there is no cache.
    """
    name = LENS_MODULE.lower() + ".aug"
    try:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "haproxy-docker-config"
        directory = cache / ("lens-" + hashlib.sha256(LENS.encode()).hexdigest()[:16])
        if not (directory / name).is_file():
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            temp = directory / f".{name}.{os.getpid()}"
            temp.write_text(LENS)
            os.replace(temp, directory / name)
    except (OSError, RuntimeError):  # no writable home: a private temp dir for this run
        with tempfile.TemporaryDirectory(prefix="hdc-lens-") as temp_dir:
            Path(temp_dir, name).write_text(LENS)
            yield temp_dir
        return
    yield str(directory)


#: Bytes that cannot go through Augeas as they are: libaugeas keeps 0x01-0x04 for markers of its own
#: (0x04 aborts the process, 0x01-0x03 fail text_retrieve), and the lens ends lines at a CR it cannot
#: hold alone. Each goes through as a character of the private use area instead: config texts are read
#: as latin-1 (read_config), so none of those can be in them, and every other byte but NUL round-trips.
_TO_AUGEAS = {chr(byte): chr(0xF700 + byte) for byte in (1, 2, 3, 4, 13)}


_FROM_AUGEAS = str.maketrans({v: k for k, v in _TO_AUGEAS.items()})


_UNSAFE = re.compile("[\x01-\x04]|\r(?!\n)")


def _to_augeas(text: str) -> str:
    """text with the bytes Augeas cannot hold replaced by their stand-ins."""
    return _UNSAFE.sub(lambda m: _TO_AUGEAS[m.group()], text) if _UNSAFE.search(text) else text


def _from_augeas(text: str) -> str:
    """What Augeas holds, with the stand-ins turned back into the bytes they stand for."""
    return text.translate(_FROM_AUGEAS)


class ConfigDoc:
    """One haproxy.cfg parsed by the lens into an Augeas tree under /cfg.

    The text goes through Augeas's text_store/text_retrieve, so Augeas never
    touches a file: reading, locking, validating and replacing stay ours. Values
    cross into the tree through _set/_get, which swap the bytes Augeas cannot hold.
    """

    def __init__(self, text: str, source: str, first_line: int = 1) -> None:
        import augeas

        self.source = source
        self._servers: dict[str, list[tuple[str, str]]] = {}  # section -> its server lines, until the tree changes
        self._first_line = first_line
        self._crlf = "\r\n" in text and text.count("\n") == text.count("\r\n")
        self._newline = "" if text.endswith("\n") or not text else "\r\n" if self._crlf else "\n"
        flags = augeas.Augeas.NO_MODL_AUTOLOAD | augeas.Augeas.NO_STDINC | augeas.Augeas.NO_LOAD
        with _lens_dir() as lensdir:
            self.aug = augeas.Augeas(root="/", loadpath=lensdir, flags=flags)
            # python-augeas frees its native handle (megabytes) only when the cycle collector
            # finds it, which in a long --watch can be many passes later: free it with this doc.
            weakref.finalize(self, self.aug.close)
            self._set("/input", text + self._newline)
            self._store()

    def _get(self, path: str) -> str | None:
        value = self.aug.get(path)
        return None if value is None else _from_augeas(value)

    def _set(self, path: str, value: str) -> None:
        self._servers.clear()
        self.aug.set(path, _to_augeas(value))

    def _store(self) -> None:
        try:
            self.aug.text_store(LENS_NAME, "/input", "/cfg")
        except (ValueError, RuntimeError, OSError):
            pass  # the details are in /augeas/text/cfg/error
        if self.aug.get("/augeas/text/cfg/error") is None:
            return
        line = int(self.aug.get("/augeas/text/cfg/error/line") or 0)
        message = self.aug.get("/augeas/text/cfg/error/message") or "parse failed"
        text = (self.aug.get("/input") or "").split("\n")
        bad = _from_augeas(text[line - 1]).strip() if 0 < line <= len(text) else ""
        where = self._first_line + line - 1
        raise ConfigError(f"{self.source}:{where}: cannot parse {bad!r} ({message}); fix this line")

    def text(self) -> str:
        """The config as it is now, with untouched lines byte for byte as read."""
        self.aug.text_retrieve(LENS_NAME, "/input", "/cfg", "/output")
        text = self.aug.get("/output") or ""
        if self._crlf:
            text = re.sub(r"(?<!\r)\n", "\r\n", text)
        if self._newline and text.endswith(self._newline):
            text = text[:-len(self._newline)]
        return _from_augeas(text)

    def servers(self, section: str) -> list[tuple[str, str]]:
        """(path, value) of every `server` line of a section, in file order; kept until the tree changes
        (a pass reads them several times: 500 servers cost about 7 ms a read)."""
        if section not in self._servers:
            self._servers[section] = [(p, self._get(p) or "") for p in self.aug.match(f"{section}/server")]
        return list(self._servers[section])

    def template(self, section: str) -> tuple[str, str, str]:
        """(path, template, indent) of the section's one #DOCKERSERVER comment."""
        found = [(p, template_of(self._get(p) or "")) for p in self.aug.match(f"{section}/#comment")]
        found = [(p, t) for p, t in found if t is not None]
        name = server_name(self._get(section))
        if not found:
            raise ConfigError(f"{self.source}: listener {name} has no #DOCKERSERVER template line; "
                              f"add one such as '#DOCKERSERVER $id $ip:$port check'")
        if len(found) > 1:
            raise ConfigError(f"{self.source}: listener {name} has {len(found)} #DOCKERSERVER "
                              f"template lines; keep one")
        (path, template), = found
        if not template:
            raise ConfigError(f"{self.source}: the #DOCKERSERVER template of listener {name} is empty")
        return path, template, self._get(path + "/#indent") or ""

    def put_server(self, section: str, line: str, indent: str) -> None:
        """Rewrite the server of the same name, or add it after the last server line."""
        name = server_name(line)
        servers = self.servers(section)
        for path, value in servers:
            if server_name(value) == name:
                if value != line:
                    self._set(path, line)
                return
        anchor = servers[-1][0] if servers else self.template(section)[0]
        self._servers.clear()
        self.aug.insert(anchor, "server", before=False)
        new = f"{section}/server[last()]" if servers else f"{section}/server[1]"
        self._set(new, line)
        if indent:
            self._set(new + "/#indent", indent)

    def remove_servers(self, section: str, names: set[str]) -> list[str]:
        """Remove the servers with one of these names; return the names removed."""
        removed = []
        for path, value in reversed(self.servers(section)):
            if server_name(value) in names:
                self._servers.clear()
                self.aug.remove(path)
                removed.append(server_name(value))
        return removed[::-1]


class Listener:
    """The listener's section of a config.

    Only this section goes through Augeas; the text around it is kept as the
    exact bytes read. On a 15,000-line config that is the difference between
    about 3 s and a few milliseconds (see bench/).
    """

    section = "/cfg/*[1]"

    def __init__(self, text: str, name: str, source: str) -> None:
        self._start, self._end, line = listener_span(text, name, source)
        self._text = text
        self.doc = ConfigDoc(text[self._start:self._end], source, line)

    def text(self) -> str:
        """The whole config with the edited section spliced in."""
        return self._text[:self._start] + self.doc.text() + self._text[self._end:]

    def servers(self) -> list[tuple[str, str]]:
        return self.doc.servers(self.section)

    def template(self) -> tuple[str, str, str]:
        return self.doc.template(self.section)

    def put_server(self, line: str, indent: str) -> None:
        self.doc.put_server(self.section, line, indent)

    def remove_servers(self, names: set[str]) -> list[str]:
        return self.doc.remove_servers(self.section, names)


def _server_lines(listener: Listener) -> dict[str, str]:
    return {server_name(value): value for _, value in listener.servers()}


def _managed_pattern(listener: Listener) -> re.Pattern[str] | None:
    """The shape of the servers the template renders; None for a listener without one template."""
    try:
        return template_pattern(listener.template()[1])
    except ConfigError:
        return None



###############################################################################
# What haproxy answers: versions, reloads, servers, drift #####################
###############################################################################


@dataclasses.dataclass(frozen=True)
class HaproxyVersion:
    """A haproxy version as it reports itself; its branch says what its Runtime API can do."""

    text: str               # "2.2.9-2+deb11u7", "3.1-dev4"
    branch: tuple[int, int]

    def __str__(self) -> str:
        return self.text

    def without_dynamic_servers(self) -> str | None:
        """Why `add server`/`del server` are not for this version, or None when they are (2.5 and newer).
        2.4 has them only behind `experimental-mode on`, which the tool does not switch on for you."""
        name = "haproxy %d.%d" % self.branch
        if self.branch < (2, 4):
            return f"{name} has no dynamic servers"
        return f"{name} has dynamic servers only in experimental mode" if self.branch < (2, 5) else None


def parse_haproxy_version(text: str) -> HaproxyVersion | None:
    """The version in `show info` or `haproxy -v` output; None when there is none."""
    match = HAPROXY_VERSION.search(text)
    return HaproxyVersion(match.group(1), (int(match.group(2)), int(match.group(3)))) if match else None


def reload_outcome(logs: str) -> tuple[bool | None, str]:
    """How a master-worker haproxy's log since SIGUSR2 says the reload went: (True, the line saying so),
    (False, that line), or (None, "") while it has not said yet. Failure wins: it is what must not be missed."""
    for verdict, pattern in ((False, RELOAD_FAILURE), (True, RELOAD_SUCCESS)):
        match = pattern.search(logs)
        if match:
            start = logs.rfind("\n", 0, match.start()) + 1
            end = logs.find("\n", match.end())
            return verdict, logs[start:end if end >= 0 else len(logs)].strip()
    return None, ""


@dataclasses.dataclass(frozen=True)
class LiveServer:
    """One server as the running haproxy reports it (`show servers state` joined with `show stat`)."""

    ip: str | None
    port: int | None
    state: str  # UP, DOWN, MAINT, DRAIN or NOLB
    check: str | None  # the last check's status (L4OK, L7STS, ...), None without checks
    sessions: int | None


@dataclasses.dataclass(frozen=True)
class ServerStatus:
    """One row of --status: what the file, the running haproxy and Docker say about one server."""

    server: str
    ip: str | None
    port: int | None
    container: str  # running, unhealthy, paused, exited, ... or absent
    haproxy: str | None  # None: no haproxy answered
    check: str | None
    sessions: int | None
    in_file: bool
    in_runtime: bool | None
    drift: list[str]
    listener: str | None = None


def servers_state_rows(answer: str) -> dict[str, dict[str, str]]:
    """name -> its row of `show servers state BACKEND` (format 1: a version line, then a `# be_id ...`
    header naming the columns, 20 of them in 2.2 and 25 later)."""
    lines = answer.splitlines()
    header = lines[1][2:].split() if len(lines) > 1 and lines[1].startswith("# ") else []
    rows = (dict(zip(header, line.split())) for line in lines[2:])
    return {row["srv_name"]: row for row in rows if "srv_name" in row}


def parse_servers_state(answer: str) -> dict[str, tuple[str, int]]:
    """name -> (address, port) from the table `show servers state BACKEND` answers."""
    return {name: (row.get("srv_addr", ""), int(row["srv_port"]))
            for name, row in servers_state_rows(answer).items() if row.get("srv_port", "").isdigit()}


def stat_rows(answer: str) -> dict[str, dict[str, str]]:
    """server name -> its row of the CSV of `show stat BACKEND 4 -1`, by the header's column names
    (they differ between haproxy versions); not the FRONTEND and BACKEND rows."""
    lines = answer.splitlines()
    if not lines or not lines[0].startswith("# "):
        return {}
    header = lines[0][2:].split(",")
    rows = (dict(zip(header, line.split(","))) for line in lines[1:] if line)
    return {row["svname"]: row for row in rows if row.get("svname") not in ("FRONTEND", "BACKEND", None)}


def parse_stat(answer: str) -> dict[str, tuple[str, str | None, int | None]]:
    """name -> (state, check status, current sessions) from the CSV of `show stat BACKEND 4 -1`."""
    return {name: (haproxy_state(row.get("status", "")), row.get("check_status", "").lstrip("* ") or None,
                   int(row["scur"]) if row.get("scur", "").isdigit() else None)
            for name, row in stat_rows(answer).items()}


def haproxy_state(status: str) -> str:
    """`show stat`'s status as one word: `UP 1/3` (going down) is UP, `no check` is UP,
    `MAINT (via b/s)` is MAINT."""
    word = re.match(r"[A-Z]+", status)
    return word.group(0) if word else "UP" if status == "no check" else status or "UP"


def join_live(addresses: dict[str, tuple[str, int]],
              stats: dict[str, tuple[str, str | None, int | None]]) -> dict[str, LiveServer]:
    """The servers of one backend in the running haproxy, from its two answers."""
    return {name: LiveServer(ip, port or None, *stats.get(name, ("UP", None, None)))
            for name, (ip, port) in addresses.items()}


def server_drift(line: str | None, live: LiveServer | None, answered: bool, container: str,
                 docker_checked: bool) -> list[str]:
    """Where the file, the running haproxy and Docker disagree about one server.

    `answered`: a haproxy answered for this backend; `docker_checked`: the server is one of
    Docker's (the template renders it, or a container carries its name)."""
    drift = []
    if answered and line is not None and live is None:
        drift.append("not_in_runtime")
    if live is not None and line is None:
        drift.append("not_in_file")
    if line is not None and live is not None and _address_differs(server_address(line), (live.ip, live.port)):
        drift.append("address_differs")
    if live is not None and docker_checked and live.state == "UP" and container not in ("running", "unhealthy"):
        drift.append("up_without_container")
    if live is not None and live.state == "MAINT" and container == "running":
        drift.append("maint_while_healthy")
    return drift


def _address_differs(in_file: tuple[str | None, int | None], live: tuple[str | None, int | None]) -> bool:
    """Compare what can be compared: a host name in the file is resolved by haproxy, not here;
    a line without a port takes the client's."""
    try:
        differs = ipaddress.ip_address(in_file[0] or "") != ipaddress.ip_address(live[0] or "")
    except ValueError:
        differs = False
    return differs or (in_file[1] is not None and in_file[1] != live[1])


def status_rows(listener: str, lines: dict[str, str], live: dict[str, LiveServer] | None,
                containers: Callable[[str], str], managed: re.Pattern[str] | None) -> list[ServerStatus]:
    """One row per server of the file (in file order), then per server only haproxy has.

    `lines`: server name -> line in the file; `live`: None when no haproxy answered;
    `containers`: server name -> container state; `managed`: the template's shape, if any."""
    rows = []
    for name in [*lines, *(n for n in live or {} if n not in lines)]:
        line, server = lines.get(name), (live or {}).get(name)
        ip, port = server_address(line) if line is not None else (server.ip, server.port)  # type: ignore[union-attr]
        container = containers(name)
        ours = container != "absent" or bool(line is not None and managed and managed.fullmatch(line))
        rows.append(ServerStatus(
            name, ip, port, container, server.state if server else None, server.check if server else None,
            server.sessions if server else None, line is not None, None if live is None else server is not None,
            server_drift(line, server, live is not None, container, ours), listener))
    return rows



###############################################################################
# The Docker edge #############################################################
###############################################################################


def _root_cause(exc: BaseException) -> str:
    """The innermost reason of a library error, e.g. 'Permission denied'."""
    while exc.__cause__ or exc.__context__:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def default_host_ip(docker_url: str | None) -> str:
    """Address of a remote engine's published ports: its URL's host, else loopback."""
    url = docker_url or os.environ.get("DOCKER_HOST", "")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme in ("tcp", "ssh", "http", "https") and parts.hostname:
        return parts.hostname
    return "127.0.0.1"


class Engine:
    """A Docker Engine reached lazily: show and check without ids never import docker."""

    def __init__(self, url: str | None, timeout: float = 30.0, host_ip: str | None = None) -> None:
        self.url = url
        self.timeout = timeout
        self.host_ip = host_ip or default_host_ip(url)
        self._api: Any = None
        self.answered_at = float("-inf")  # monotonic time of its last answered list call
        self.listed: list[Container] = []  # what containers() last returned
        self._role: str | None = None  # "manager", "worker" or "" (no swarm), once asked
        self._image_ports: dict[str, tuple[int, ...]] = {}
        self._services: list[dict[str, Any]] | None = None
        self._shared: dict[str, frozenset[str] | None] = {}  # haproxy's container -> its networks
        self._mounts: dict[str, tuple[float, str | None]] = {}  # path -> (when asked, who mounts it)
        #: (monotonic time, tasks) of a watcher's last task poll, desired state in POLLED_STATES
        self.fresh_tasks: tuple[float, list[dict[str, Any]]] = (float("-inf"), [])

    def describe(self) -> str:
        return self.url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"

    @property
    def api(self) -> Any:
        if self._api is None:
            self._api = self._connect()
        return self._api

    def forget(self) -> None:
        """Drop the connection, so the next use reconnects (after the engine restarted)."""
        self._api, self._role = None, None
        self.forget_cached()

    def forget_cached(self) -> None:
        """Ask again for the services and haproxy's networks (after an event that changes them)."""
        self._services, self._shared = None, {}

    def _connect(self) -> Any:
        import docker

        env = dict(os.environ, DOCKER_HOST=self.url) if self.url else None
        try:
            client = docker.from_env(environment=env, timeout=self.timeout,
                                     use_ssh_client=self.describe().startswith("ssh://"))
        except _docker_failures() as exc:
            raise self._failure("reach the Docker engine at", exc) from exc
        return client.api

    def _failure(self, what: str, exc: BaseException) -> DockerError:
        """The engine failed: the next call reconnects (it may be back by then)."""
        self.forget()
        return DockerError(f"cannot {what} {self.describe()} ({_docker_reason(exc)}); start dockerd or give "
                           f"--docker-url")

    def inspect(self, ref: str) -> dict[str, Any] | None:
        """docker inspect of a container by id, unique prefix or name; None if unknown."""
        import docker

        try:
            return self.api.inspect_container(ref)
        except docker.errors.NotFound:
            return None
        except docker.errors.APIError as exc:
            raise DockerError(f"container {ref}: {_docker_reason(exc)}; give a longer id or the name") from exc
        except _docker_failures() as exc:
            raise self._failure("reach the Docker engine at", exc) from exc

    def running(self) -> list[Container]:
        """Every running container, in one API call."""
        return self.containers({"status": ["running"]})

    def containers(self, filters: dict[str, list[str]], everything: bool = False) -> list[Container]:
        """The containers Docker's own filters select, in one API call."""
        self.listed = [container_from_list(entry, self.host_ip) for entry in self._listed(filters, everything)]
        return self.listed

    def mounting(self, path: str) -> str | None:
        """The name of a running container that mounts this host path, if any: one API call, listing every
        running container (a large answer on a busy host), so a watcher's engine keeps the answer for
        MOUNTS_KEPT seconds."""
        asked, answer = self._mounts.get(path, (float("-inf"), None))
        if time.monotonic() - asked > MOUNTS_KEPT:
            answer = next((c["Names"][0].lstrip("/") for c in self._listed({"status": ["running"]})
                           if any(m.get("Source") == path for m in c.get("Mounts") or ())), None)
            self._mounts[path] = (time.monotonic(), answer)
        return answer

    def _listed(self, filters: dict[str, list[str]], everything: bool = False) -> list[dict[str, Any]]:
        try:
            listed = self.api.containers(all=everything, filters=filters)
        except _docker_failures() as exc:
            raise self._failure("list containers at", exc) from exc
        self.answered_at = time.monotonic()
        return listed

    def _call(self, what: str, call: Callable[[], Any]) -> Any:
        """A Docker API call; a failure is a DockerError saying what could not be done."""
        try:
            return call()
        except _docker_failures() as exc:
            raise self._failure(what, exc) from exc

    def swarm_role(self) -> str | None:
        """"manager" or "worker" of a swarm, or None; asked once per connection (GET /info)."""
        if self._role is None:
            swarm = self._call("reach the Docker engine at", self.api.info).get("Swarm") or {}
            active = swarm.get("LocalNodeState") == "active"
            self._role = ("manager" if swarm.get("ControlAvailable") else "worker") if active else ""
            log.info("%s is %s", self.describe(), f"a swarm {self._role}" if self._role else "not in a swarm")
        return self._role or None

    def tasks(self, filters: dict[str, list[str]]) -> list[dict[str, Any]]:
        """GET /tasks: the swarm's tasks on every node (a manager only). A watcher's poller has just asked
        (see `fresh_tasks`): its answer serves a pass that asks for what it holds."""
        taken, tasks = self.fresh_tasks
        wanted = set(filters.get("desired-state", ()))
        if set(filters) == {"desired-state"} and wanted <= set(POLLED_STATES) and time.monotonic() - taken < 1:
            return [task for task in tasks if task.get("DesiredState") in wanted]
        return self._call("list swarm tasks at", lambda: self.api.tasks(filters=filters))

    def services(self) -> list[dict[str, Any]]:
        """GET /services, kept until forget() (a watcher forgets them on every service event)."""
        if self._services is None:
            self._services = self._call("list swarm services at", self.api.services)
        return self._services

    def task_containers(self, wanted: Callable[[dict[str, Any]], bool], everything: bool = False) -> list[Container]:
        """The running tasks (every task with a container, with `everything`) of the services `wanted`
        picks, on every node: GET /services and GET /tasks; none on an engine that is no manager."""
        if self.swarm_role() != "manager":
            return []
        services = {s["ID"]: s for s in self.services() if wanted(s)}
        if not services:
            return []
        tasks = self.tasks({} if everything else {"desired-state": ["running"]})
        return [container_from_task(t, services[t["ServiceID"]], self._exposed(services[t["ServiceID"]]))
                for t in tasks if t.get("ServiceID") in services and (_has_container(t) if everything else task_runs(t))]

    def service(self, ref: str) -> dict[str, Any] | None:
        """docker service inspect by name or id; None when there is none, or this engine is no manager."""
        import docker

        if self.swarm_role() != "manager":
            return None
        try:
            return self.api.inspect_service(ref)
        except docker.errors.NotFound:
            return None
        except _docker_failures() as exc:
            raise self._failure("reach the Docker engine at", exc) from exc

    def _exposed(self, service: dict[str, Any]) -> tuple[int, ...]:
        """A service's tcp ports: the target ports it publishes, and what its image EXPOSEs when this
        engine has the image (asked once per image: an image does not change)."""
        image = ((service["Spec"].get("TaskTemplate") or {}).get("ContainerSpec") or {}).get("Image", "")
        if image not in self._image_ports:

            attrs = None
            for ref in dict.fromkeys(r for r in (image, image.partition("@")[0]) if r):
                with contextlib.suppress(*_docker_failures()):
                    attrs = attrs or self.api.inspect_image(ref)
            self._image_ports[image] = _tcp_ports(((attrs or {}).get("Config") or {}).get("ExposedPorts"))
        return tuple(sorted(set(service_ports(service)) | set(self._image_ports[image])))

    def network_name(self, ref: str) -> str:
        """The name of the network --network names (by name, id or id prefix)."""
        import docker

        try:
            return self.api.inspect_network(ref)["Name"]
        except docker.errors.NotFound:
            raise DockerError(f"no Docker network {quoted(ref)}; check the name with docker network ls") from None
        except _docker_failures() as exc:
            raise self._failure("reach the Docker engine at", exc) from exc

    def shared_networks(self, container: str) -> frozenset[str] | None:
        """The user-defined networks of haproxy's container; None in host mode (it uses published ports).
        Kept until forget() (a watcher forgets them on every network event)."""
        if container not in self._shared:
            self._shared[container] = self._haproxy_networks(container)
        return self._shared[container]

    def _haproxy_networks(self, container: str) -> frozenset[str] | None:
        attrs = self.inspect(container)
        if attrs is None:
            raise DockerError(f"no container {quoted(container)} for --haproxy-container; check the name "
                              f"with docker ps")
        if (attrs.get("HostConfig") or {}).get("NetworkMode") == "host":
            return None
        networks = (attrs.get("NetworkSettings") or {}).get("Networks") or {}
        return frozenset(networks) - set(DEFAULT_NETWORKS)


def _feed(stream: Any, data: bytes) -> str:
    """Write `data` to an exec's attached socket, close its input, and read its output to the end."""
    from docker.utils.socket import frames_iter

    raw = getattr(stream, "_sock", stream)
    try:
        raw.sendall(data)
        raw.shutdown(socket.SHUT_WR)
        return b"".join(chunk for _, chunk in frames_iter(stream, tty=False)).decode(errors="replace")
    finally:
        stream.close()


def _docker_failures() -> tuple[type[BaseException], ...]:
    """What a Docker API call raises when the engine fails: docker's errors, and requests' for a connection
    that broke under a client made while the engine was up (docker-py does not wrap those)."""
    import docker
    import requests

    return docker.errors.DockerException, requests.exceptions.RequestException


def _docker_reason(exc: BaseException) -> str:
    """Why a Docker call failed, in words: the engine's own explanation, not the request's URL."""
    import docker

    if isinstance(exc, docker.errors.APIError):
        explanation = exc.explanation.decode(errors="replace") if isinstance(exc.explanation, bytes) \
            else exc.explanation
        return str(explanation or f"HTTP {exc.status_code}")
    return _root_cause(exc)


def running_container(ref: ContainerRef, attrs: dict[str, Any] | None, host_ip: str) -> Container:
    """The container of `ref` as a Container, or a Docker error saying why it cannot be balanced."""
    if attrs is None:
        raise DockerError(f"no such container {ref.ref}; check the id with docker ps")
    state = attrs.get("State") or {}
    if not state.get("Running") or state.get("Paused"):
        how = "paused" if state.get("Paused") else state.get("Status", "stopped")
        raise DockerError(f"container {ref.ref} is not running ({how}); start it first")
    return container_from_inspect(attrs, host_ip, ref.ref)



###############################################################################
# The file edge: reading, locking, replacing ##################################
###############################################################################


@contextlib.contextmanager
def config_lock(target: Path, timeout: float) -> Iterator[None]:
    """Hold an exclusive lock beside the config across read, write and restart."""
    lock_path = target.with_name(target.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot create lock file {lock_path} ({exc.strerror}); "
                          f"run as a user who may write {target.parent}") from exc
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ConfigError(f"{lock_path} is held by another haproxy-docker-config "
                                      f"for over {timeout:g}s; retry later or raise --lock-timeout") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


def read_config(path: Path) -> str:
    """The config's text; bytes map 1:1 to characters so any encoding round-trips."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; give the haproxy config with -f") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path} ({exc.strerror}); check its permissions") from None
    if b"\0" in data:
        raise ConfigError(f"{path} is not a text file; give the haproxy config with -f")
    return data.decode("latin-1")


def _write_beside(target: Path, data: bytes, suffix: str) -> Path:
    """Write data to a new temp file beside target with target's owner and mode, fsynced."""
    st = target.stat()
    try:
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix)
    except OSError as exc:
        raise ConfigError(f"cannot write in {target.parent} ({exc.strerror}); "
                          f"run as a user who may write there") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), st.st_mode & 0o7777)
            with contextlib.suppress(PermissionError):
                os.fchown(handle.fileno(), st.st_uid, st.st_gid)
            os.fsync(handle.fileno())
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)


def in_place_reason(target: Path, forced: bool, engine: Engine | None) -> str | None:
    """Why the config must be rewritten in place rather than renamed over, or None.

    A rename gives the file a new inode: a container with the file bind-mounted
    keeps reading the old one, a mount point cannot be renamed over, and other
    hard links would keep the old content.
    """
    if forced:
        return "--write-in-place"
    with contextlib.suppress(OSError):
        mount_points = {line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()}
        if str(target) in mount_points:
            return "it is a mount point"
    links = target.stat().st_nlink
    if links > 1:
        return f"it has {links} hard links"
    with contextlib.suppress(DockerError):
        mounter = engine.mounting(str(target)) if engine else None
        if mounter:
            return f"container {mounter} bind-mounts it"
    return None


def _write_in_place(target: Path, data: bytes) -> None:
    """Rewrite the content of the same inode (not crash-atomic: the .bak is the way back)."""
    with open(target, "r+b") as handle:
        handle.write(data)
        handle.truncate()
        handle.flush()
        os.fsync(handle.fileno())


def _remove_stale_temps(target: Path) -> None:
    """Remove temp files of runs that were killed; only called under the lock."""
    for stale in target.parent.glob(f".{target.name}.*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()
            log.info("removed %s, left by an interrupted run", stale)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _say_owner_change(shown: str, before: os.stat_result, after: os.stat_result) -> None:
    """A user who may not give a file its owner or group (not root, not in that group) changes them by
    rewriting it: said once (a watcher writes again and again), with how to avoid it."""
    if (before.st_uid, before.st_gid) == (after.st_uid, after.st_gid):
        return
    log.warning("warning: %s now belongs to %d:%d instead of %d:%d: uid %d may not give a file that owner or "
                "group; run the tool as the file's owner, in its group (docker run --group-add %d), or give "
                "the file a group this user is in", shown, after.st_uid, after.st_gid, before.st_uid,
                before.st_gid, os.geteuid(), before.st_gid, extra={"once": ("owner", shown)})



###############################################################################
# The haproxy edge: checking and reloading, on this host or in a container ####
###############################################################################


def _alerts(output: str, candidate: str, target: str) -> str:
    """haproxy's alert lines, naming the user's file rather than our temp file."""
    lines = [ln.replace(candidate, target) for ln in output.splitlines() if "ALERT" in ln]
    return "\n".join(lines or output.replace(candidate, target).strip().splitlines()[-5:])


def haproxy_binary(explicit: str | None) -> str:
    found = shutil.which(explicit or "haproxy")
    if not found:
        raise HaproxyError(f"haproxy not found ({explicit or 'not on PATH'}); install it, "
                           f"give --haproxy-bin, or --no-validate")
    return found


def haproxy_check(binary: str, path: str, label: str) -> tuple[bool, str]:
    """Run `haproxy -c -f path`; (accepted, alert lines naming `label`)."""
    proc = subprocess.run([binary, "-c", "-f", path], capture_output=True, text=True,
                          errors="replace", timeout=120)
    return proc.returncode == 0, _alerts(proc.stdout + proc.stderr, path, label)


def _pids_from(pidfile: str) -> list[int]:
    try:
        text = Path(pidfile).read_text()
    except OSError as exc:
        raise HaproxyError(f"cannot read pidfile {pidfile} ({exc.strerror}); is haproxy running? "
                           f"give its pidfile with -h PIDFILE") from None
    pids = [int(word) for word in text.split() if word.isdigit()]
    alive = [pid for pid in pids if _alive(pid)]
    if not alive:
        raise HaproxyError(f"pidfile {pidfile} names no running haproxy; start haproxy or use -r")
    return alive


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def hot_restart(binary: str, config: str, pidfile: str, expose_socket: str | None, master_worker: bool) -> None:
    """Reload haproxy so that the old processes finish their connections.

    A master-worker haproxy is reloaded by its master (SIGUSR2). Otherwise a new
    haproxy starts with -sf; with -x it takes over the listening sockets from the
    old one through a stats socket with `expose-fd listeners`, so no connection
    is refused while the two swap.
    """
    old = _pids_from(pidfile)
    if master_worker or _is_master(old[0]):
        return _reload_master(old[0])
    seamless = ["-x", expose_socket] if expose_socket else []
    command = [binary, "-f", config, "-p", pidfile, "-D", *seamless, "-sf", *map(str, old)]
    log.info("running %s", " ".join(command))
    with tempfile.TemporaryFile("w+") as out:  # not a pipe: the daemon may keep it open
        code = subprocess.run(command, stdout=out, stderr=out, timeout=60).returncode
        out.seek(0)
        output = out.read()
    if code != 0:
        raise HaproxyError(f"hot restart failed, {_who_serves(old)}: "
                           + (_alerts(output, config, config) or f"exit {code}"))


def _who_serves(old: list[int]) -> str:
    """After a failed reload: whether the old haproxy really keeps serving (it may have died before)."""
    alive = [str(pid) for pid in old if _alive(pid)]
    if alive:
        return "the old haproxy keeps serving"
    return f"and the old haproxy (pid {', '.join(map(str, old))}) is gone too: no haproxy runs; start it"


def _is_master(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"-W" in argv or b"-Ws" in argv


def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(stat.parent.name))
    return found


def _reload_master(master: int) -> None:
    """SIGUSR2 to the master, then wait for the new worker that proves the reload worked."""
    before = _children(master)
    log.info("reloading haproxy master %d (SIGUSR2)", master)
    os.kill(master, signal.SIGUSR2)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if _children(master) - before:
            return
        time.sleep(0.05)
    raise HaproxyError(f"haproxy master {master} started no new worker after SIGUSR2; "
                       f"the old workers keep serving; see haproxy's log")


def service_restart() -> None:
    """Restart haproxy through systemd when it runs, else through `service`."""
    if shutil.which("systemctl") and os.path.isdir("/run/systemd/system"):
        command = ["systemctl", "restart", "haproxy"]
    elif shutil.which("service"):
        command = ["service", "haproxy", "restart"]
    else:
        raise HaproxyError("neither systemctl nor service found to restart haproxy; use -h instead")
    log.info("running %s", " ".join(command))
    proc = subprocess.run(command, capture_output=True, text=True, errors="replace", timeout=120)
    sys.stderr.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise HaproxyError(f"{' '.join(command)} failed with exit {proc.returncode}; see the lines above")


class HostHaproxy:
    """haproxy on this host: checked with `haproxy -c`, reloaded with -sf or the service manager."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.where = f"{binary} -v"

    def check(self, path: Path, shown: str) -> tuple[bool, str]:
        return haproxy_check(self.binary, str(path), shown)

    def version(self) -> HaproxyVersion | None:
        proc = subprocess.run([self.binary, "-v"], capture_output=True, text=True, errors="replace", timeout=30)
        return parse_haproxy_version(proc.stdout)

    def hot_restart(self, config: str, pidfile: str, settings: GlobalSettings) -> None:
        hot_restart(self.binary, config, pidfile, settings.exposed_socket(), settings.master_worker)

    def restart(self) -> None:
        service_restart()


class ContainerHaproxy:
    """haproxy in a container: checked with `haproxy -c` through docker exec, reloaded by
    signalling its master (SIGUSR2; the official image runs haproxy -W as PID 1)."""

    def __init__(self, engine: Engine, name: str) -> None:
        self.engine, self.name = engine, name
        self.where = f"haproxy -v in container {name}"

    def _call(self, what: str, call: Callable[[], Any]) -> Any:
        import docker

        try:
            return call()
        except docker.errors.NotFound as exc:
            raise HaproxyError(f"no container {quoted(self.name)} for --haproxy-container ({_docker_reason(exc)}); "
                               f"check the name with docker ps") from exc
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # "Container ... is not running" (or paused, restarting)
                raise HaproxyError(f"haproxy's container {quoted(self.name)} is not running (cannot {what} "
                                   f"there); start it: docker start {self.name}") from exc
            raise HaproxyError(f"cannot {what} in container {self.name} ({_docker_reason(exc)}); "
                               f"check --haproxy-container") from exc
        except _docker_failures() as exc:
            raise HaproxyError(f"cannot {what} in container {self.name} ({_docker_reason(exc)}); "
                               f"check --haproxy-container") from exc

    def check(self, path: Path, shown: str) -> tuple[bool, str]:
        """Run haproxy -c in the container on the file's text, given on its stdin (`-f /dev/stdin`, which
        2.2 to 3.2 read): no archive to upload, nothing left in the container."""
        code, output = self._exec(["haproxy", "-c", "-f", "/dev/stdin"], "run haproxy -c", path.read_bytes())
        return code == 0, _alerts(output, "/dev/stdin", shown)

    def version(self) -> HaproxyVersion | None:
        return parse_haproxy_version(self._exec(["haproxy", "-v"], "run haproxy -v")[1])

    def _exec(self, command: list[str], what: str, stdin: bytes | None = None) -> tuple[int, str]:
        """Run a command in the container, `stdin` on its standard input: (exit code, output)."""
        api = self.engine.api
        exec_id = self._call(what, lambda: api.exec_create(self.name, command, stdin=stdin is not None)["Id"])
        if stdin is None:
            output = self._call(what, lambda: api.exec_start(exec_id)).decode(errors="replace")
        else:
            output = self._call(what, lambda: _feed(api.exec_start(exec_id, socket=True), stdin))
        while (state := self._call(what, lambda: api.exec_inspect(exec_id)))["Running"]:
            time.sleep(0.01)  # the output ended a moment before the process did
        return state["ExitCode"], output

    def hot_restart(self, config: str, pidfile: str, settings: GlobalSettings) -> None:
        """SIGUSR2 to the master, then wait for its log to say how loading went (each version says
        it its own way: reload_outcome)."""
        since = time.time()  # not whole seconds: a start or reload just before must not answer for this one
        log.info("reloading haproxy in container %s (SIGUSR2 to its master)", self.name)
        self._call("signal haproxy", lambda: self.engine.api.kill(self.name, "SIGUSR2"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            logs = self._call("read the logs", lambda: self.engine.api.logs(self.name, since=since)).decode(
                errors="replace")
            worked, said = reload_outcome(logs)
            if worked:
                log.info("haproxy in container %s reloaded: %s", self.name, said)
                return
            if worked is False:
                raise HaproxyError(f"haproxy in container {self.name} failed to reload; the old workers "
                                   f"keep serving", "\n".join(ln for ln in logs.splitlines() if "ALERT" in ln))
            time.sleep(0.1)
        raise HaproxyError(f"haproxy in container {self.name} did not report a reload within 10 s; "
                           f"is it running haproxy -W (master-worker)? use -r to restart the container")

    def restart(self) -> None:
        log.info("restarting container %s", self.name)
        self._call("restart", lambda: self.engine.api.restart(self.name, timeout=30))


def _haproxy(options: HaproxyOptions, validate: bool, engine: Engine) -> HostHaproxy | ContainerHaproxy | None:
    """Which haproxy validates and restarts: the one in --haproxy-container, else the host's
    (None when --no-validate and no restart needs it)."""
    if options.container:
        return ContainerHaproxy(engine, options.container)
    if not validate and options.pidfile is None:
        return None
    return HostHaproxy(haproxy_binary(options.binary))



###############################################################################
# The Runtime API edge: changes applied to the running haproxy ################
###############################################################################


class RuntimeUnavailable(Exception):
    """No haproxy answers on the stats socket: only the file changes."""


def _connect(address: str) -> socket.socket:
    """A connection to a stats socket written as haproxy writes it (path, unix@, abns@, ipv4@, ip:port)."""
    family = re.match(r"(unix|abns|ipv4|ipv6|tcp|tcp4|tcp6)@", address)
    kind = family.group(1) if family else ""
    rest = address[family.end():] if family else address
    if kind.startswith(("ip", "tcp")) or (not kind and re.fullmatch(r"[^/]*:\d+", rest)):
        host, _, port = rest.rpartition(":")
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        target: Any = (host.strip("[]"), int(port))
    else:
        sock = socket.socket(socket.AF_UNIX)
        # haproxy binds an abns@ name as the whole sun_path, padded with NULs: so must the client
        target = ("\0" + rest).ljust(108, "\0") if kind == "abns" else rest
    sock.settimeout(10)
    try:
        sock.connect(target)
    except BaseException:
        sock.close()
        raise
    return sock


class Runtime:
    """haproxy's Runtime API on a stats socket at level admin, one connection per command."""

    def __init__(self, address: str) -> None:
        self.address = address

    def ask(self, command: str, *accepted: str) -> str:
        """Send one command; unless its answer starts with one of `accepted`, haproxy refused it
        (said in one line: an unknown command makes older versions answer with their whole help)."""
        log.info("runtime> %s", command)
        answer = self._exchange(command)
        for line in (answer or "(ok)").splitlines():
            log.info("haproxy< %s", line)
        if accepted and not any(answer.startswith(a) if a else not answer for a in accepted):
            raise HaproxyError(f"haproxy refused '{command}': {answer.splitlines()[0] if answer else 'no answer'}")
        return answer

    def version(self) -> HaproxyVersion | None:
        """The running haproxy's version, from `show info` (None if it names none)."""
        log.info("runtime> show info")
        version = parse_haproxy_version(self._exchange("show info"))
        log.info("haproxy< Version: %s", version or "(none)")
        return version

    def _exchange(self, command: str) -> str:
        try:
            with _connect(self.address) as sock:
                sock.sendall(command.encode() + b"\n")
                return b"".join(iter(lambda: sock.recv(65536), b"")).decode(errors="replace").strip()
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise RuntimeUnavailable(f"no haproxy answers on {self.address} ({exc.strerror})") from exc
        except OSError as exc:
            raise HaproxyError(f"cannot use haproxy's stats socket {self.address} ({_root_cause(exc)})") from exc

    def servers(self, backend: str) -> dict[str, tuple[str, int]]:
        """Live servers of a backend: name -> (address, port)."""
        return parse_servers_state(self.ask(f"show servers state {backend}", "1\n#"))

    def backend(self, backend: str) -> dict[str, LiveServer]:
        """Every server of a backend as haproxy runs it; {} when it does not know the backend."""
        answer = self.ask(f"show servers state {backend}")
        if answer.startswith("Can't find backend"):
            return {}
        if not answer.startswith("1\n#"):
            raise HaproxyError(f"haproxy refused 'show servers state {backend}': {answer or 'no answer'}")
        return join_live(parse_servers_state(answer), parse_stat(self.ask(f"show stat {backend} 4 -1", "# ")))

    def ready(self, backend: str) -> set[str]:
        """Live servers of a backend that are not in maintenance (admin state 0)."""
        return {name for name, admin in self._admin_states(backend).items() if admin == 0}

    def disabled(self, backend: str) -> set[str]:
        """Live servers of a backend put in maintenance through this API (`disable server`: admin bit 0x1)."""
        return {name for name, admin in self._admin_states(backend).items() if admin & 1}

    def _admin_states(self, backend: str) -> dict[str, int]:
        rows = servers_state_rows(self.ask(f"show servers state {backend}", "1\n#"))
        return {name: int(row["srv_admin_state"]) for name, row in rows.items()
                if row.get("srv_admin_state", "").isdigit()}

    def sessions(self, backend: str, name: str) -> int:
        """Current plus queued sessions of one server."""
        row = stat_rows(self.ask(f"show stat {backend} 4 -1", "# pxname")).get(name, {})
        return sum(int(row.get(column) or 0) for column in ("scur", "qcur"))

    def streams(self, backend: str, name: str) -> int:
        """Streams whose target is this server, from `show sess`: also those that wait to retry a refused
        connection, which no counter shows (their session left `scur` with the refusal)."""
        needle = f" be={backend} srv={name} "
        return sum(needle in line for line in self.ask("show sess").splitlines())

    def connections(self, backend: str, name: str) -> int:
        """Used plus idle connections of one server (`show servers conn`, 2.5 and newer; 0 where not known)."""
        answer = self.ask(f"show servers conn {backend}")
        lines = answer.splitlines()
        if not lines or not lines[0].startswith("# bkname/svname"):
            return 0
        header = lines[0][2:].split()
        for row in (dict(zip(header, line.split())) for line in lines[1:]):
            if row.get("bkname/svname") == f"{backend}/{name}":
                return sum(int(row.get(k, "0")) for k in ("used_cur", "idle_cur") if row.get(k, "").isdigit())
        return 0

    def in_use(self, backend: str, name: str) -> bool:
        """Whether anything in haproxy may still use the server: sessions, queued requests, streams
        that point at it, connections."""
        return bool(self.sessions(backend, name) or self.streams(backend, name) or self.connections(backend, name))

    def map(self, ref: str) -> list[tuple[str, str]]:
        """The entries of a map as haproxy runs it, in its order."""
        answer = self.ask(f"show map {ref}")
        if answer.startswith(("Unknown map", "Missing map")):
            raise HaproxyError(f"haproxy has no map {ref}: {answer.splitlines()[0]}")
        return map_entries(answer)

    def replace_map(self, ref: str, entries: list[tuple[str, str]]) -> None:
        """Make a map hold these entries, in this order, at once: a new version is filled, then committed
        (`prepare map`, `add map @V`, `commit map @V`), so no request sees it half made."""
        answer = self.ask(f"prepare map {ref}", "New version created:")
        version = answer.rsplit(":", 1)[1].strip()
        for key, value in entries:
            self.ask(f"add map @{version} {ref} {key} {value}", "")
        self.ask(f"commit map @{version} {ref}", "")

    def process(self) -> str:
        """The pid the stats socket's haproxy gives in `show info` (RuntimeUnavailable when none answers)."""
        match = re.search(r"^Pid:[ \t]*(\d+)", self._exchange("show info"), re.MULTILINE)
        return match.group(1) if match else ""


def apply_live(runtime: Runtime, backend: str, plan: LivePlan, drain: float, drainer: Drainer | None = None) -> None:
    """Apply the file's change to the running haproxy; HaproxyError when it refuses. With a drainer (a
    watcher's), a server leaves at once and is deleted later, off the pass; without, the delete waits
    here (at most `drain` seconds)."""
    live = runtime.servers(backend)
    for line in plan.upserts:
        _upsert_live(runtime, backend, line, live, drainer, plan.before.get(server_name(line)))
    for name in plan.removals:
        if name in live and drainer is not None:
            drainer.remove(backend, name)
        elif name in live:
            _remove_live(runtime, backend, name, drain)
    if set(live) - plan.kept - set(plan.removals):
        _sweep_live(runtime, backend, set(plan.kept), live)


def _upsert_live(runtime: Runtime, backend: str, line: str, live: dict[str, tuple[str, int]],
                 drainer: Drainer | None = None, old: str | None = None) -> None:
    name, *words = line.split("#", 1)[0].split()
    target = f"{backend}/{name}"
    ip, port = split_address(words[0]) if words else (None, None)
    if name in live:
        asks, backup = option_changes(old or line, line)
        if backup:
            raise HaproxyError(f"server {target} became or stopped being a backup, which haproxy takes only "
                               f"from its config")
        for ask in asks:  # "weight 5" -> set server B/S weight 5; "maxconn 10" -> set maxconn server B/S 10
            key, value = ask.split()
            runtime.ask(f"set server {target} weight {value}" if key == "weight" else
                        f"set maxconn server {target} {value}", "")
        if live[name] != (ip, port):
            runtime.ask(f"set server {target} addr {ip} port {port}", "IP changed", "no need to change")
            if "check" in words[1:]:  # the health seen at the old address says nothing of the new one
                runtime.ask(f"set server {target} health up", "")
        if drainer is not None and drainer.cancel(backend, name):  # back before it was deleted
            runtime.ask(f"enable server {target}", "")
        return
    runtime.ask(f"add server {target} {' '.join(words)}", "New server registered")
    if "check" in words[1:]:
        runtime.ask(f"enable health {target}", "")
    if "disabled" not in words[1:]:
        runtime.ask(f"enable server {target}", "")


def _remove_live(runtime: Runtime, backend: str, name: str, drain: float) -> None:
    """Stop sending new requests, then delete the server once nothing in haproxy uses it any more.

    `del server` frees the server; a stream still pointing at it then crashes haproxy (2.6 before
    2.6.16 checks only sessions, queue and idle connections, not a stream waiting to retry a refused
    connection). So the delete waits until no session, queued request, stream or connection is left;
    a server still in use after `drain` seconds stays disabled (it gets no request) for a later try."""
    target = f"{backend}/{name}"
    runtime.ask(f"disable server {target}", "")
    deadline = time.monotonic() + drain
    while True:
        if not runtime.in_use(backend, name):
            answer = runtime.ask(f"del server {target}", "Server deleted", "Server still has connections")
            if answer.startswith("Server deleted"):
                return
        if time.monotonic() >= deadline:
            log.warning("warning: %s is still in use after --drain-timeout %gs; it stays disabled (no new "
                        "request) and is deleted by a later change or the next reload", target, drain)
            return
        time.sleep(0.1)


def _sweep_live(runtime: Runtime, backend: str, kept: set[str], live: dict[str, tuple[str, int]]) -> None:
    """Delete the servers an earlier change left disabled because they were in use: in haproxy, in
    forced maintenance, no longer in the file, and used by nothing now."""
    disabled = runtime.disabled(backend)
    for name in sorted(set(live) - kept):
        if name in disabled and not runtime.in_use(backend, name):
            runtime.ask(f"del server {backend}/{name}", "Server deleted", "Server still has connections")


def _runtime_address(options: HaproxyOptions, settings: GlobalSettings) -> str | None:
    return options.runtime_socket or settings.admin_socket() if options.runtime else None


def _reading_socket(options: HaproxyOptions, settings: GlobalSettings) -> str | None:
    """A stats socket to read from: reading needs no admin level."""
    return options.runtime_socket or settings.admin_socket() or next((s.address for s in settings.sockets), None)


def _still_the_same(runtime: Runtime, pid: str) -> None:
    """After a change: haproxy still answers (RuntimeUnavailable when it does not), as the same process."""
    now = runtime.process()
    if pid and now != pid:
        log.warning("warning: haproxy on %s is a new process (pid %s, was %s): it was restarted while the "
                    "change was applied; it read the file, which holds the change", runtime.address, now, pid)


def _has_dynamic_servers(runtime: Runtime, config: str, reloads: bool, report: Report) -> bool:
    """Ask the running haproxy its version: one without dynamic servers is not sent `add server`;
    it gets the change by reload, or the file waits for one (a warning, not an error: the original tool's way)."""
    version = runtime.version()
    why_not = version.without_dynamic_servers() if version else None
    if why_not is None:
        log.info("haproxy %s on %s has dynamic servers: applying the change live", version or "(no version said)",
                 runtime.address)
        return True
    report.runtime = "unsupported"
    if reloads:
        log.info("%s; reloading instead", why_not)
    else:
        log.warning("warning: %s; %s is updated: reload haproxy to apply it, or give -h", why_not, config)
    return False


def _say_why_not_live(no_runtime: bool, haproxy: HostHaproxy | ContainerHaproxy | None) -> None:
    """With -v: why the change reaches haproxy only by reload, and which haproxy that is."""
    if not log.isEnabledFor(logging.INFO):
        return  # `haproxy -v` costs a process or an exec: only for this line
    why = "--no-runtime" if no_runtime else "no stats socket at level admin (in global, or --runtime-socket)"
    version = haproxy.version() if haproxy else None
    which = f"haproxy {version} ({haproxy.where})" if haproxy and version else "haproxy"
    log.info("%s: the change reaches %s only by a reload (-h/-r)", why, which)


def _save_server_state(options: HaproxyOptions, settings: GlobalSettings) -> None:
    """Dump `show servers state` where the reloaded haproxy will read it, so servers known
    to be down stay down (load-server-state-from-file)."""
    path = options.state_file or (None if options.container else settings.state_file)
    address = _reading_socket(options, settings)
    if not path or not address:
        return
    try:
        state = Runtime(address).ask("show servers state", "1\n#")
    except RuntimeUnavailable as exc:
        log.info("%s; no server state saved", exc)
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.tmp")
    temp.write_text(state + "\n")
    os.replace(temp, target)
    log.info("saved the servers' state to %s", path)



###############################################################################
# Actions on one listener #####################################################
###############################################################################


@dataclasses.dataclass
class Result:
    """The outcome for one container id or server."""

    id: str
    status: str
    server: str | None = None
    ip: str | None = None
    port: int | None = None
    listener: str | None = None
    network: str | None = None


@dataclasses.dataclass
class Report:
    """Everything one invocation has to say; rendered as plain text, JSON or YAML."""

    listener: str | None
    action: str
    results: list[Result] = dataclasses.field(default_factory=list)
    #: --status: one row per server (the document shows them as its results)
    rows: list[ServerStatus] = dataclasses.field(default_factory=list, metadata={"internal": True})
    changed: bool = False
    restarted: bool = False
    runtime: str | None = None
    servers: list[str] | None = None
    #: the routes of #DOCKERROUTES as the run left them (host, path, backend, key), when the config has them
    routes: list[dict[str, str]] | None = None
    diff: str | None = None
    #: the config as the run left it (not in the JSON/YAML document): a watcher tells hand edits by it
    text: str | None = dataclasses.field(default=None, metadata={"internal": True})

    def absorb(self, part: Report) -> None:
        """Add the outcome of one listener's pass (sync over several listeners, watch)."""
        self.results += part.results
        self.changed |= part.changed
        self.restarted |= part.restarted
        self.runtime = part.runtime or self.runtime
        self.diff = (self.diff or "") + part.diff if part.diff else self.diff
        self.text = part.text or self.text
        self.routes = self.routes if part.routes is None else part.routes

    @property
    def status(self) -> int:
        """1 when the action found what it looks for amiss (see Action.amiss), else 0."""
        return EXIT_NOT_BALANCED if ACTIONS[self.action].amiss(self) else EXIT_OK


Edit = Callable[[Listener], list[Result]]


def add_containers(listener: Listener, refs: list[ContainerRef], engine: Engine,
                   addressing: Addressing) -> list[Result]:
    """Render one server line per container (per running task of a service) and put it in the
    section; all or nothing."""
    _, template, indent = listener.template()
    lines: dict[str, tuple[ContainerRef, Endpoint, str]] = {}
    for ref in refs:
        for container in resolve(ref, engine):
            endpoint = addressing.endpoint(container, ref.port)
            line = render_template(template, template_values(container, endpoint))
            if server_name(line) in lines:
                raise UsageError(f"{ref.ref} and {lines[server_name(line)][0].ref} are the same container; "
                                 f"give it once")
            lines[server_name(line)] = (ref, endpoint, line)
    for _, _, line in lines.values():
        listener.put_server(line, indent)
    return [Result(str(ref), "balanced", server_name(line), e.ip, e.port, network=e.network)
            for ref, e, line in lines.values()]


def _any_service(service: dict[str, Any]) -> bool:
    return True


def resolve(ref: ContainerRef, engine: Engine) -> list[Container]:
    """The running container `ref` names; on a swarm manager, else the running tasks of the service it names."""
    attrs = engine.inspect(ref.ref)
    if attrs is not None or engine.swarm_role() != "manager":
        return [running_container(ref, attrs, engine.host_ip)]
    service = engine.service(ref.ref)
    if service is None:
        raise DockerError(f"no such container or service {ref.ref}; check the id with docker ps or docker service ls")
    tasks = engine.task_containers(lambda s: s["ID"] == service["ID"])
    if not tasks:
        raise DockerError(f"service {ref.ref} has no running task; see docker service ps {ref.ref}")
    return tasks


def _matching(listener: Listener, ref: ContainerRef, engine: Engine) -> set[str]:
    """Server names of the section that stand for `ref`: exact names, then Docker's view (a container,
    or on a swarm manager every task of a service, past ones too)."""
    names = {server_name(v) for _, v in listener.servers()}
    direct = names & {ref.ref, ref.ref[:12]}
    if direct:
        return direct
    try:
        attrs = engine.inspect(ref.ref)
        if attrs:
            return names & container_aliases(attrs)
        service = engine.service(ref.ref)
        tasks = engine.task_containers(lambda s: s["ID"] == service["ID"], everything=True) if service else []
    except DockerError as exc:
        log.warning("warning: %s; matched %s by server name only", exc, ref.ref)
        return set()
    return names & {alias for task in tasks for alias in task.aliases}


def delete_containers(listener: Listener, refs: list[ContainerRef], engine: Engine) -> list[Result]:
    results = []
    for ref in refs:
        removed = listener.remove_servers(_matching(listener, ref, engine))
        results.append(Result(ref.ref, "deleted" if removed else "not_balanced", ", ".join(removed) or None))
    return results


def check_containers(listener: Listener, refs: list[ContainerRef], engine: Engine) -> list[Result]:
    if not refs:
        return [_server_result(value, "balanced") for _, value in listener.servers()]
    results = []
    for ref in refs:
        found = sorted(_matching(listener, ref, engine))
        results.append(Result(ref.ref, "balanced" if found else "not_balanced", ", ".join(found) or None))
    return results


def verify_servers(listener: Listener, engine: Engine, addressing: Addressing) -> list[Result]:
    """A server is found when it names a running container that haproxy can reach the way it is addressed,
    or on a swarm manager a running task's container on any node (asked only when a server is not found
    among the local containers)."""
    running = engine.running()
    found = {server_name(value): _reachable(server_name(value), running, addressing) for _, value in listener.servers()}
    if not all(found.values()):
        tasks = engine.task_containers(_any_service)
        found = {name: ok or is_backed(name, tasks) for name, ok in found.items()}
    return [_server_result(value, "found" if found[server_name(value)] else "not_found")
            for _, value in listener.servers()]


def _reachable(name: str, running: list[Container], addressing: Addressing) -> bool:
    for container in (b for b in running if is_backed(name, [b])):
        with contextlib.suppress(DockerError):
            if addressing.reach_for(container).reaches(container):
                return True
    return False


def status_servers(text: str, path: str, names: list[str], runtime: Runtime | None,
                   engines: list[Engine]) -> list[ServerStatus]:
    """--status: each server of these listeners as the file, the running haproxy and Docker see it.
    Docker is asked (one list call per engine) only when there is a server to ask about; a swarm
    manager's tasks only when a server is no container here."""
    sides = []
    for name in names:
        listener = Listener(text, name, path)
        live, runtime = _live_servers(runtime, name)
        sides.append((name, _server_lines(listener), live, _managed_pattern(listener)))
    servers = {n for _, lines, live, _ in sides for n in [*lines, *(live or {})]}
    containers = [c for e in engines for c in e.containers({}, everything=True)] if servers else []
    if any(not is_backed(n, containers) for n in servers):
        containers += [t for e in engines for t in e.task_containers(_any_service, everything=True)]
    return [row for name, lines, live, managed in sides
            for row in status_rows(name, lines, live, lambda n: state_of_server(n, containers), managed)]


def _live_servers(runtime: Runtime | None, name: str) -> tuple[dict[str, LiveServer] | None, Runtime | None]:
    """haproxy's servers of one backend, and the runtime to ask next (None once no haproxy answered)."""
    if runtime is None:
        return None, None
    try:
        return runtime.backend(name), runtime
    except RuntimeUnavailable as exc:
        log.warning("warning: %s; haproxy's side is not compared", exc)
        return None, None


def _with_servers(file: FileOptions, report: Report, listener: Listener) -> None:
    """-s (or --show alone): the report carries the listener's server lines as the file has them now."""
    if file.show or report.action == "show":
        report.servers = [value for _, value in listener.servers()]



###############################################################################
# Committing one change: validate, replace, apply live or reload ##############
###############################################################################


@dataclasses.dataclass
class Commit:
    """One change of the config, from the text read under the lock to the running haproxy: validate and
    replace the file, apply the live plan or reload, and roll back an unvalidated change whose reload failed."""

    file: FileOptions
    options: HaproxyOptions
    old: str
    new: str
    plans: dict[str, LivePlan]  # per listener
    haproxy: HostHaproxy | ContainerHaproxy | None  # validates and reloads
    engine: Engine
    report: Report
    drainer: Drainer | None = None  # a watcher's: deletes happen off the pass
    checks: Validations | None = None  # a watcher's: what haproxy -c said before
    routes: RouteChange | None = None  # the map and sections of #DOCKERROUTES, when they change

    def __post_init__(self) -> None:
        self.target = Path(os.path.realpath(self.file.path))
        self.settings = global_settings(self.old)
        self.address = None if self.file.dry_run else _runtime_address(self.options, self.settings)
        self.checker = self.haproxy if self.file.validate else None

    def run(self) -> None:
        if self.checker is None and not self.file.dry_run:
            log.warning("warning: --no-validate: %s is replaced without haproxy -c", self.file.path)
        with concurrent.futures.ThreadPoolExecutor(1) as pool, contextlib.ExitStack() as draining:
            for name, plan in self.plans.items():
                draining.enter_context(self._draining_first(name, plan.removals))
            engine = None if self.file.dry_run else self.engine
            asked = pool.submit(in_place_reason, self.target, self.file.write_in_place, engine)
            with self._new_map() as new_map:
                if self.new != self.old:
                    self.replace(self.new, self.old, self.checker, asked.result, new_map)
                if new_map is not None and not self.file.dry_run:
                    os.replace(new_map, self.routes.mark.map_file)  # type: ignore[union-attr]
                    log.info("wrote the map %s", self.routes.mark.map_file)  # type: ignore[union-attr]
        if self.file.dry_run:
            return
        in_place = asked.result()
        try:
            if self.routes is not None and self.routes.needs_reload:
                self.report.restarted = self.reload()
                if not self.report.restarted:
                    log.warning("warning: %s changed sections for its routes (%s), which haproxy reads only when "
                                "it reloads: reload haproxy, or give -h or -r", self.file.path, self._sections())
            elif not self.apply_live():
                self.report.restarted = self.reload()
        except HaproxyError as exc:
            if self.checker is not None:
                raise
            self.replace(self.old, self.new, None, lambda: in_place)
            raise HaproxyError(f"{exc}; the change was not validated, so the previous {self.file.path} "
                               f"is restored", exc.details) from exc

    def _sections(self) -> str:
        routes = self.routes
        assert routes is not None
        said = [f"made {', '.join(routes.created)}"] if routes.created else []
        said += [f"made again {', '.join(routes.refreshed)}"] if routes.refreshed else []
        said += [f"removed {', '.join(routes.removed)}"] if routes.removed else []
        return "; ".join(said) or "the lines after #DOCKERROUTES"

    @contextlib.contextmanager
    def _new_map(self) -> Iterator[Path | None]:
        """The new map file, written beside the config (where the candidate's validation reads it), to be
        renamed into place once the config is; removed if it is not."""
        if self.routes is None or not self.routes.map_changed:
            yield None
            return
        temp = _write_beside(self.target, self.routes.new_map.encode("latin-1"), ".map.tmp")
        try:
            yield temp
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)

    @contextlib.contextmanager
    def _draining_first(self, backend: str, names: list[str]) -> Iterator[None]:
        """Servers on their way out get no new request while the change is validated (which can take a
        second through docker exec); they get requests again if the change does not go through."""
        runtime, drained = Runtime(self.address) if self.address and names else None, []
        with contextlib.suppress(RuntimeUnavailable, HaproxyError):
            ready = runtime.ready(backend) if runtime else set()
            for name in (n for n in names if n in ready):
                runtime.ask(f"disable server {backend}/{name}", "")  # type: ignore[union-attr]
                drained.append(name)
        try:
            yield
        except BaseException:
            with contextlib.suppress(RuntimeUnavailable, HaproxyError):
                for name in drained:
                    runtime.ask(f"enable server {backend}/{name}", "")  # type: ignore[union-attr]
            raise

    def replace(self, text: str, backup: str, checker: HostHaproxy | ContainerHaproxy | None,
                why_in_place: Callable[[], str | None], new_map: Path | None = None) -> None:
        """Validate `text` beside the target, keep `backup` as the .bak, then rename it over the target
        (or rewrite the target in place, when a rename would not reach its readers). With `new_map`, the
        text validated reads that map instead of the one in place."""
        target, shown = self.target, self.file.path
        candidate = _write_beside(target, text.encode("latin-1"), ".tmp")
        checked = candidate
        try:
            if checker and new_map is not None and self.routes is not None:
                ref = self.routes.mark.map_ref
                swapped = text.replace(f"map_beg({ref})", f"map_beg({Path(ref).parent / new_map.name})")
                checked = _write_beside(target, swapped.encode("latin-1"), ".check.tmp")
            if checker:
                _validate(checker, checked, target, shown, self.checks, (text, backup))
            if self.file.dry_run:
                log.info("dry run: %s not written", shown)
                return
            in_place = why_in_place()
            saved = _write_beside(target, backup.encode("latin-1"), ".bak.tmp")
            os.replace(saved, target.with_name(target.name + ".bak"))
            before = target.stat()
            if in_place:
                _write_in_place(target, text.encode("latin-1"))
            else:
                os.replace(candidate, target)
            _fsync_dir(target.parent)
            _say_owner_change(shown, before, target.stat())
            how = f"in place, because {in_place}" if in_place else "by atomic rename"
            log.info("wrote %s %s (previous version in %s.bak)", shown, how, target.name)
        finally:
            for temp in {candidate, checked}:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)

    def apply_live(self) -> bool:
        """Apply each listener's plan through the Runtime API when there is an admin stats socket and the
        haproxy behind it has dynamic servers; False when the change needs a reload instead."""
        if self.address is None:
            _say_why_not_live(not self.options.runtime, self.haproxy)
            return False
        runtime, report, shown = Runtime(self.address), self.report, self.file.path
        try:
            pid = runtime.process()
            if not _has_dynamic_servers(runtime, shown, self.options.reloads, report):
                return False
        except RuntimeUnavailable as exc:
            log.info("%s; only the file is changed", exc)
            report.runtime = "unavailable"
            return False
        try:
            for name, plan in self.plans.items():
                apply_live(runtime, name, plan, self.options.drain_timeout, self.drainer)
            if self.routes is not None and self.routes.map_changed:
                runtime.replace_map(self.routes.mark.map_ref, map_entries(self.routes.new_map))
            _still_the_same(runtime, pid)
        except RuntimeUnavailable as exc:
            raise HaproxyDied(f"haproxy (pid {pid or '?'}) stopped answering on {self.address} while the change "
                              f"was applied: it died or was stopped; {shown} holds the change, no running "
                              f"haproxy does: start haproxy (it reads the file), see its log for why it "
                              f"stopped") from exc
        except HaproxyError as exc:
            report.runtime = "refused"
            if not self.options.reloads:
                raise HaproxyError(f"{exc}; {shown} is updated: reload haproxy to apply it, or give -h") from exc
            log.warning("warning: %s; restarting haproxy instead", exc)
            return False
        log.info("applied live through %s", self.address)
        report.runtime = "applied"
        return True

    def reload(self) -> bool:
        """-h or -r: reload haproxy (its servers' state saved first); False when neither was asked for."""
        options, haproxy = self.options, self.haproxy
        if not options.reloads or haproxy is None:
            return False
        _save_server_state(options, self.settings)
        if options.pidfile is not None:
            haproxy.hot_restart(self.file.path, options.pidfile, self.settings)
            log.info("haproxy hot-restarted")
        else:
            haproxy.restart()
        return True


def _validate(checker: HostHaproxy | ContainerHaproxy, candidate: Path, target: Path, shown: str,
              checks: Validations | None = None, texts: tuple[str, str] = ("", "")) -> None:
    """haproxy -c of the candidate; when it fails, of the file as it is, to say which of them is wrong.
    `texts`: (the candidate's, the file's), by which a watcher's `checks` know what haproxy said before."""
    def check(path: Path, text: str) -> tuple[bool, str]:
        return checks.check(path, text, shown) if checks else checker.check(path, shown)

    accepted, alerts = check(candidate, texts[0])
    if accepted:
        log.info("haproxy -c accepts the new %s", shown)
        return
    was_valid, old_alerts = check(target, texts[1])
    if not was_valid:
        raise ConfigError(f"haproxy already rejects {shown} as it is, before any change; "
                          f"fix it first (haproxy -c -f {shown})", old_alerts)
    raise HaproxyError(f"haproxy rejects the changed {shown}; the file is left untouched", alerts)


class Validations:
    """--watch: what haproxy -c said of the texts a watcher wrote or is about to write, so that a pass
    does not wait for a validation whose answer is known, and can have it made before it needs it.

    A text is known by a digest of it in which every server line of a simple template's making (its
    name and address are the only words with template variables) stands as the template itself: such
    lines differ only in a server name the tool made from a container's id or name (letters, digits,
    `_.-`), an IP address from Docker and a port number, tokens that haproxy takes in those places
    whatever their values. So once haproxy accepted a listener with N such servers, it accepts any N.
    Every other line, and every other template, counts byte for byte. A rejected text stays rejected."""

    LIMIT = 1000  # digests kept; the oldest go first

    def __init__(self, checker: HostHaproxy | ContainerHaproxy) -> None:
        self.checker = checker
        self.lock = threading.Lock()
        self.said: dict[str, tuple[bool, str]] = {}
        self.running: dict[str, threading.Event] = {}

    def check(self, path: Path, text: str, shown: str) -> tuple[bool, str]:
        """haproxy -c of the candidate at `path` (holding `text`), unless its answer is known or on its way."""
        key = validation_key(text)
        with self.lock:
            known, running = self.said.get(key), self.running.get(key)
        if known is None and running is not None:
            running.wait(120)  # prepared in the background: its answer is coming
            with self.lock:
                known = self.said.get(key)
        if known is not None:
            log.info("haproxy -c %s this text before; not asked again", "accepted" if known[0] else "rejected")
            return known
        return self._ask(key, path, shown)

    def prepare(self, build: Callable[[], list[str]], shown: str) -> None:
        """In a thread of its own: validate the texts `build` makes, each written to a private temp file
        (not beside the config, where a pass would take it for a killed run's and remove it)."""
        threading.Thread(target=self._prepare, args=(build, shown), daemon=True).start()

    def _prepare(self, build: Callable[[], list[str]], shown: str) -> None:
        with contextlib.suppress(HdcError, OSError):
            for text in build():
                key = validation_key(text)
                with self.lock:
                    if key in self.said or key in self.running:
                        continue
                with tempfile.NamedTemporaryFile("wb", prefix="hdc-candidate-", suffix=".cfg") as candidate:
                    candidate.write(text.encode("latin-1"))
                    candidate.flush()
                    self._ask(key, Path(candidate.name), shown)

    def _ask(self, key: str, path: Path, shown: str) -> tuple[bool, str]:
        done = threading.Event()
        with self.lock:
            self.running[key] = done
        try:
            answer = self.checker.check(path, shown)
        finally:
            with self.lock:
                del self.running[key]
            done.set()
        with self.lock:
            self.said[key] = answer
            if len(self.said) > self.LIMIT:
                del self.said[next(iter(self.said))]
        return answer


Routing = Callable[[str], tuple[str, "RouteChange | None"]]


def _write(file: FileOptions, options: HaproxyOptions, report: Report, edits: dict[str, Edit], engine: Engine,
           skip: bool = False, drainer: Drainer | None = None, checks: Validations | None = None,
           routing: Routing | None = None, optional: frozenset[str] = frozenset()) -> Report:
    """Edit listeners under the lock, all in one text: one validation, one write, at most one restart,
    and only when the bytes (of the config or of the routes' map) really changed. With `skip`, a
    listener the config lacks (or with no template) is skipped with a warning instead of stopping the
    others; one in `optional` (no running container names it) quietly. `routing` first puts in the routes."""
    path = Path(file.path)
    target = Path(os.path.realpath(path))
    haproxy = _haproxy(options, file.validate, engine)
    with config_lock(target, file.lock_timeout):
        _remove_stale_temps(target)
        old = read_config(path)
        if not os.access(target, os.W_OK):
            raise ConfigError(f"{path} is read-only; make it writable or run as a user who may write it")
        new, changes, listener = old, {}, None
        new, routed = routing(old) if routing else (old, None)
        present = {name for kind, name, _, _ in sections(new) if kind in ("listen", "backend")}
        for name, edit in edits.items():
            if name in optional and name not in present:
                continue
            try:
                listener = Listener(new, name, str(path))
                before = _server_lines(listener)
                report.results += edit(listener)
            except ConfigError as exc:
                if not skip:
                    raise
                log.warning("warning: %s; listener %s skipped, the others are synced", exc, quoted(name),
                            extra={"once": ("listener", name)})
                continue
            new = listener.text()
            changes[name] = live_changes(before, _server_lines(listener))
        if routed is not None:
            report.results += route_results(routed)
            report.routes = [r.document() for r in routed.routes]
        report.changed = new != old or (routed is not None and routed.map_changed)
        report.diff = _diff(str(path), old, new, routed) if file.diff else None
        report.text = old if file.dry_run else new
        if report.changed:
            Commit(file, options, old, new, changes, haproxy, engine, report, drainer, checks,
                   routed if routed and (routed.map_changed or routed.needs_reload) else None).run()
        else:
            log.info("%s unchanged; nothing written, haproxy not restarted", path)
        if listener is not None:
            _with_servers(file, report, listener)
    return report


def _diff(path: str, old: str, new: str, routed: RouteChange | None) -> str:
    """--diff: the config's change, then the map's."""
    diff = unified_diff(path, old, new)
    if routed is not None and routed.map_changed:
        diff += unified_diff(str(routed.mark.map_file), routed.old_map or "", routed.new_map)
    return diff


#: The statuses of a route's result: its id is the map's key, its server the backend.
ROUTE_STATUSES = ("routed", "unrouted")


def route_results(routed: RouteChange) -> list[Result]:
    """One result per route added to or removed from the map, per backend made or removed."""
    old = dict(map_entries(routed.old_map or ""))
    new = dict(map_entries(routed.new_map))
    results = [Result(key, "routed", backend, listener=routed.mark.section) for key, backend in new.items()
               if old.get(key) != backend]
    results += [Result(key, "unrouted", backend, listener=routed.mark.section) for key, backend in old.items()
                if key not in new]
    results += [Result(name, "created", name, listener="backend") for name in routed.created]
    return results + [Result(name, "removed", name, listener="backend") for name in routed.removed]


def reconcile(file: FileOptions, options: HaproxyOptions, listeners: list[str], drainer: Drainer) -> None:
    """--watch, after each pass: the running haproxy's servers of these listeners as the file has them
    (a server written by hand, a change that a haproxy missed while it was down). Missing servers are
    added and moved ones readdressed live; a server of the template's shape that the file no longer
    has is disabled, and deleted once nothing uses it; what haproxy refuses is said once and waits
    for a reload. The routes' map is made what the file's map says. Nothing is asked of a haproxy
    without dynamic servers."""
    if file.dry_run:
        return
    text = read_config(Path(file.path))
    address = _runtime_address(options, global_settings(text))
    if address is None:
        return
    runtime = Runtime(address)
    try:
        version = runtime.version()
        if version is not None and version.without_dynamic_servers():
            return
        for name in listeners:
            with contextlib.suppress(ConfigError):  # a listener the file lacks: the pass said so
                _reconcile_listener(runtime, *section_servers(text, name, file.path), name, drainer)
        with contextlib.suppress(ConfigError):  # a bad #DOCKERROUTES line, an unreadable map: the pass said so
            _reconcile_map(runtime, routes_mark(text, Path(os.path.realpath(file.path)), file.path))
    except RuntimeUnavailable:
        return  # the watcher's liveness check says it


def _reconcile_map(runtime: Runtime, mark: RoutesMark | None) -> None:
    """The running haproxy's routes as the map file has them (a haproxy that missed a change, a `del map`
    by hand); a map haproxy does not know yet (its lines are new: a reload is due) is left alone."""
    if mark is None or (text := mark.read_map()) is None:
        return
    try:
        wanted = map_entries(text)
        if runtime.map(mark.map_ref) != wanted:
            log.info("haproxy's routes differ from %s; replacing them", mark.map_file)
            runtime.replace_map(mark.map_ref, wanted)
    except HaproxyError as exc:
        log.info("routes not compared with haproxy's: %s", exc)


def _reconcile_listener(runtime: Runtime, lines: dict[str, str], template: str | None, backend: str,
                        drainer: Drainer) -> None:
    live = runtime.servers(backend)
    for name, line in lines.items():
        if name not in live or _address_differs(server_address(line), live[name]) or \
                (backend, name) in drainer.disabled:
            try:
                _upsert_live(runtime, backend, line, live, drainer)
            except HaproxyError as exc:
                log.warning("warning: %s; server %s of the file waits for a reload of haproxy", exc, name,
                            extra={"once": ("reconcile", backend, line)})
    shape = _name_pattern(template)
    for name in (n for n in live if n not in lines and shape is not None and shape.fullmatch(n)):
        drainer.remove(backend, name)



###############################################################################
# Sync and prune: what the engines say each listener holds ####################
###############################################################################


@dataclasses.dataclass
class Fleet:
    """What the engines say: the selected running containers, and who owns what when one is down."""

    selected: list[Container]
    known: list[Container] | None = None  # every container of the engines that answered, if one did not

    def may_remove(self, name: str) -> bool:
        """A server is only removed when its container is known to an engine that answered."""
        return self.known is None or is_backed(name, self.known)


ServicePicker = Callable[[dict[str, Any]], bool]


def gather(engines: list[Engine], filters: dict[str, list[str]], everything: bool = False,
           excluded: frozenset[str] = frozenset(), services: ServicePicker | None = None) -> Fleet:
    """List the selected containers of every engine, and on swarm managers the running tasks of the
    services `services` picks; an engine that is down keeps its servers.

    `excluded`: ids that events said died or turned unhealthy, which the list may not show yet.
    A task's container is listed once, as a task, also where its node's engine lists it too.
    """
    selected: dict[str, Container] = {}
    down = []
    for engine in engines:
        try:
            found = engine.containers(filters, everything) + (engine.task_containers(services) if services else [])
        except DockerError as exc:
            log.warning("warning: %s; its servers are left as they are", exc)
            down.append(engine)
            continue
        selected.update((b.id, b) for b in found if b.id not in excluded)
    if len(down) == len(engines):
        raise DockerError(f"no Docker engine answered ({', '.join(e.describe() for e in engines)}); "
                          f"start dockerd or check --docker-url")
    if not down:
        return Fleet(list(selected.values()))
    return Fleet(list(selected.values()), [b for e in engines if e not in down for b in
                                           e.containers({}, everything=True) + e.task_containers(_any_service, True)])


def desired_servers(template: str, fleet: Fleet, addressing: Addressing) -> dict[str, tuple[str, Endpoint]]:
    """Server name -> (line, endpoint) for every selected healthy container; others are skipped."""
    wanted = {}
    for container in fleet.selected:
        if container.state != "running":
            continue
        if container.health == "unhealthy":
            log.info("%s is unhealthy; it stays out of balancing", container.name)
            continue
        endpoint = app_endpoint(container, addressing)
        if endpoint is None:
            continue
        line = render_template(template, template_values(container, endpoint))
        options = server_options(container)
        line = f"{line} {options}" if options else line
        wanted[server_name(line)] = (line, endpoint)
    return wanted


def app_endpoint(container: Container, addressing: Addressing) -> Endpoint | None:
    """Where haproxy reaches an app, its labels checked; None, with a warning said once, when it cannot."""
    try:
        check_labels(container)
        return addressing.endpoint(container, None)
    except LabelError as exc:
        log.warning("warning: %s; skipped", exc, extra={"once": exc.key})
    except PortError as exc:
        hint = "" if LABEL_PORT in str(exc) or LABEL_PORT in container.labels else f" (or label it {LABEL_PORT}=PORT)"
        log.warning("warning: %s%s; skipped", exc, hint, extra=_once(container, "port"))
    except DockerError as exc:
        log.warning("warning: %s; skipped", exc, extra=_once(container, "address"))
    return None


def sync_listener(listener: Listener, fleet: Fleet, addressing: Addressing) -> list[Result]:
    """Add or update every selected container; remove managed servers no longer selected."""
    _, template, indent = listener.template()
    current = _server_lines(listener)
    wanted = desired_servers(template, fleet, addressing)
    results = []
    for name, (line, end) in wanted.items():
        if current.get(name) != line:
            listener.put_server(line, indent)
            results.append(Result(name, "updated" if name in current else "added", name, end.ip, end.port,
                                  network=end.network))
    return results + _remove_managed(listener, template, lambda name: name not in wanted and fleet.may_remove(name))


def prune_listener(listener: Listener, fleet: Fleet) -> list[Result]:
    """Remove the managed servers whose containers no longer run."""
    return _remove_managed(listener, listener.template()[1],
                           lambda name: not is_backed(name, fleet.selected) and fleet.may_remove(name))


def _remove_managed(listener: Listener, template: str, unwanted: Callable[[str], bool]) -> list[Result]:
    managed = template_pattern(template)
    gone = {server_name(v) for _, v in listener.servers() if managed.fullmatch(v) and unwanted(server_name(v))}
    return [Result(name, "removed", name) for name in listener.remove_servers(gone)]


def _server_result(value: str, status: str) -> Result:
    name = server_name(value)
    return Result(name, status, name, *server_address(value))


def _addressing(mode: Invocation, engine: Engine) -> Addressing:
    """How this run reaches containers: --network, else the networks haproxy's container is on."""
    if mode.network:
        return Addressing(network=engine.network_name(mode.network))
    if mode.haproxy.container:
        return Addressing(shared_with=engine.shared_networks(mode.haproxy.container), haproxy=mode.haproxy.container)
    return Addressing()


def sync(mode: Invocation, prune: bool, engines: list[Engine], remembered: frozenset[str] = frozenset(),
         excluded: frozenset[str] = frozenset(), drainer: Drainer | None = None,
         checks: Validations | None = None) -> tuple[Report, dict[str, Fleet]]:
    """--sync / --prune: one pass over the listener -l, or every listener that labels name (and those
    `remembered`), in one write; the report and what each listener it covered holds."""
    action = "prune" if prune else "sync"
    routed = not prune and mode.listener is None and _has_routes(mode.file)
    fleets = _fleets(mode, prune, engines, remembered, excluded, routed)
    if not fleets and not routed:
        return Report(mode.listener, action), {}
    reach = Addressing() if prune else _addressing(mode, engines[0])
    edits = {name: functools.partial(_sync_edit, prune, name, fleet, reach) for name, fleet in fleets.items()}
    routing = functools.partial(_route_edit, fleets, reach, mode.file.path) if routed else None
    optional = frozenset(name for name, fleet in fleets.items()  # a backend for routes comes and goes with them:
                         if all(LABEL_HOST in c.labels for c in fleet.selected)) if routed else frozenset()  # said why
    report = _write(mode.file, mode.haproxy, Report(mode.listener, action), edits, engines[0],
                    skip=mode.listener is None, drainer=drainer, checks=checks, routing=routing, optional=optional)
    if mode.listener is None:
        report.servers = None
    return report, fleets


def _has_routes(file: FileOptions) -> bool:
    """Whether the config has a #DOCKERROUTES line (read without the lock: the write reads it again)."""
    try:
        return bool(ROUTES_MARK.search(read_config(Path(file.path))))
    except ConfigError:
        return False  # the write says what is wrong with the file


def _route_edit(fleets: dict[str, Fleet], reach: Addressing, source: str, text: str) -> tuple[str, RouteChange | None]:
    """The config with the routes the running apps of these fleets ask for (see route_config), those that
    haproxy can reach (an app skipped for its port or network gets no route either; an unhealthy one
    keeps its route, whose backend answers 503 until it is healthy); while an engine is down, the routes
    of the map stay as well."""
    mark = routes_mark(text, Path(os.path.realpath(source)), source)
    if mark is None:
        return text, None
    old_map = mark.read_map()
    claims = [(route, _subject(c)[0]) for fleet in fleets.values() for c in fleet.selected
              if c.state == "running" and app_endpoint(c, reach) is not None for route in container_routes(c)]
    if any(fleet.known is not None for fleet in fleets.values()):
        claimed = {route.key for route, _ in claims}
        claims += [(route, "the map") for route in _map_routes(old_map or "") if route.key not in claimed]
    return route_config(text, mark, route_table(claims), source, old_map)


def _map_routes(text: str) -> list[Route]:
    """The routes a map file holds (keys `host/path`, `.domain/path` for a wildcard)."""
    routes = []
    for key, backend in map_entries(text):
        host, slash, path = key.partition("/")
        routes.append(Route("*" + host if host.startswith(".") else host, slash + path, backend))
    return routes


def _sync_edit(prune: bool, name: str, fleet: Fleet, reach: Addressing, listener: Listener) -> list[Result]:
    results = prune_listener(listener, fleet) if prune else sync_listener(listener, fleet, reach)
    for result in results:
        result.listener = name
    return results


def _fleets(mode: Invocation, prune: bool, engines: list[Engine], remembered: frozenset[str],
            excluded: frozenset[str], routed: bool = False) -> dict[str, Fleet]:
    """What each listener should hold. Containers: --filter, else the listen label; services (on a
    swarm manager): --service, else the service's listen label. --prune: everything that runs. With
    routes, also the containers and services with a host label, in the backend their routes name."""
    if prune:
        return {mode.listener: gather(engines, {"status": ["running"]}, services=_any_service)}
    if mode.listener:
        default = {"label": [f"{LABEL_LISTEN}={mode.listener}"]}
        selection = dict(mode.filters or default, status=["running"])
        return {mode.listener: gather(engines, selection, excluded=excluded,
                                      services=_service_picker(mode.listener, mode.services))}
    keys = (LABEL_LISTEN, LABEL_HOST) if routed else (LABEL_LISTEN,)
    labelled = gather(engines, {} if routed else {"label": [LABEL_LISTEN]}, True, excluded,
                      lambda s: any(k in (s["Spec"].get("Labels") or {}) for k in keys))
    if routed:
        labelled.selected = [c for c in labelled.selected if any(k in c.labels for k in keys)]
    return _labelled_fleets(labelled, remembered)


def _service_picker(listener: str, names: tuple[str, ...]) -> ServicePicker:
    """The services of a listener: those named (name, id, or id prefix of 12 or more), else those labelled."""
    if names:
        return lambda s: any(n in (s["Spec"]["Name"], s["ID"]) or id_prefix(n, s["ID"])
                             for n in names)
    return lambda s: (s["Spec"].get("Labels") or {}).get(LABEL_LISTEN) == listener


def _labelled_fleets(fleet: Fleet, remembered: frozenset[str]) -> dict[str, Fleet]:
    """One fleet per listener that a container's label names (any state, so emptied ones are synced too),
    or its route's backend; a container with a bad label is skipped with a warning."""
    named: dict[str, list[Container]] = {}
    for container in fleet.selected:
        try:
            check_labels(container)
            routes = container_routes(container)
            named.setdefault(routes[0].backend if routes else label_value(container, LABEL_LISTEN) or "",
                             []).append(container)
        except LabelError as exc:
            log.warning("warning: %s; skipped", exc, extra={"once": exc.key})
    named.pop("", None)
    return {name: Fleet(named.get(name, []), fleet.known) for name in sorted(remembered | set(named))}


def _once(container: Container, what: str) -> dict[str, Any]:
    """The `extra` of a warning about one container that a watcher says once (until its text changes)."""
    return {"once": (container.id, what)}



###############################################################################
# Log lines: one line each, said once, plain or JSON ##########################
###############################################################################


def one_line(text: str) -> str:
    """What goes to stderr is one line: line breaks and other unprintable characters in what a message
    quotes (a label, a config line, haproxy's answer) are shown escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class PlainLines(logging.Formatter):
    """Plain stderr lines: each record one line (a traceback under -v is the one exception)."""

    def format(self, record: logging.LogRecord) -> str:
        message = one_line(record.getMessage())
        return message + ("\n" + self.formatException(record.exc_info) if record.exc_info else "")


class SayOnce(logging.Filter):
    """In a watch, a warning logged with extra={"once": key} is said once per key, and again only when its
    text changes (a label fixed to another bad value): a bad container does not fill the log every pass."""

    LIMIT = 10_000  # keys remembered; the oldest is forgotten first

    def __init__(self) -> None:
        super().__init__()
        self.said: dict[Any, str] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = getattr(record, "once", None)
        if key is None:
            return True
        text = record.getMessage()
        if self.said.get(key) == text:
            return False
        self.said.pop(key, None)
        self.said[key] = text
        if len(self.said) > self.LIMIT:
            del self.said[next(iter(self.said))]
        return True


class JsonLines(logging.Formatter):
    """--log-format json: every stderr line one JSON object with the same keys, for log shippers."""

    KEYS = ("listener", "action", "server", "address", "engine")

    def format(self, record: logging.LogRecord) -> str:
        message, level = record.getMessage(), "info"  # the module logs at WARNING only to be seen without -v
        for prefix in ("ERROR: ", "warning: "):
            if message.startswith(prefix):
                message, level = message[len(prefix):], prefix.rstrip(": ").lower()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        change = getattr(record, "change", {})
        return json.dumps({"time": stamp, "level": level, **{k: change.get(k) for k in self.KEYS},
                           "message": message})


def _change_fields(result: Result, engines: list[Engine]) -> dict[str, Any]:
    """A watch line's fields; the engine is the one whose last listing has the container (unknown
    for a container gone from one of several engines)."""
    engine = engines[0] if len(engines) == 1 else next(
        (e for e in engines if result.server and is_backed(result.server, e.listed)), None)
    return {"listener": result.listener, "action": result.status, "server": result.server,
            "address": f"{result.ip}:{result.port}" if result.port else None,
            "engine": engine.describe() if engine else None}



###############################################################################
# What a watcher tells about itself: metrics and health #######################
###############################################################################


class Observer:
    """What a watcher reports about itself as it goes: nothing, unless --metrics (see Metrics)."""

    idle_resync: float | None = None  # run a pass after this many seconds without events

    def event(self, url: str) -> None:
        """A container event arrived from this engine."""

    def reconnected(self, url: str) -> None:
        """This engine's event stream is back after it dropped."""

    def passed(self, report: Report | None, answered: list[Engine], listeners: list[str], error: str = "") -> None:
        """A pass ended: its report (None when it failed, saying `error`), the engines that answered in
        it, the listeners."""

    def haproxy(self, answers: bool | None, lost: str) -> None:
        """After a pass: whether haproxy answers on the stats socket (None: no socket to ask), and why a
        haproxy that answered before no longer does ("" while it answers, or never did)."""

    def close(self) -> None:
        """The watch is over."""


class Metrics(Observer):
    """--metrics: Prometheus metrics at /metrics and the watcher's health at /healthz, served from a thread.

    prometheus_client is imported here only, so a watcher without --metrics does not need it."""

    idle_resync = IDLE_RESYNC

    def __init__(self, address: tuple[str, int], engines: list[Engine], config: str, coalesce: float) -> None:
        try:
            import prometheus_client
        except ImportError:
            raise UsageError("--metrics needs the prometheus_client library; "
                             "pip install haproxy-docker-config[metrics]") from None
        self.config, self.stale_after = config, coalesce + HEALTH_GRACE
        self.synced: dict[str, float] = {}
        self.lost = ""  # why the haproxy that answered no longer does
        self.error = ""  # why the last pass failed
        self.urls = [e.describe() for e in engines]
        self.registry = prometheus_client.CollectorRegistry()
        self._declare(prometheus_client)
        self.server = _serve(address, self)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _declare(self, prom: Any) -> None:
        def metric(kind: Any, name: str, doc: str, labels: tuple[str, ...] = ()) -> Any:
            return kind(f"{METRICS_PREFIX}_{name}", doc, labels, registry=self.registry)

        self.events = metric(prom.Counter, "events", "Container events received", ("engine",))
        self.reconnects = metric(prom.Counter, "engine_reconnects", "Event streams re-established after a drop",
                                 ("engine",))
        self.passes = metric(prom.Counter, "sync_passes", "Sync passes run (after events, reconnects, idle)")
        self.failures = metric(prom.Counter, "failed_passes", "Sync passes that failed (an ERROR line)")
        self.failing = metric(prom.Gauge, "pass_failing", "1 while the last pass failed (it is retried with "
                              "backoff), else 0")
        self.changes = metric(prom.Counter, "server_changes", "Servers added, updated and removed",
                              ("listener", "change"))
        self.applied = metric(prom.Counter, "writes", "Config writes by how haproxy took them: live (Runtime "
                              "API), reload, or file only", ("applied",))
        self.managed = metric(prom.Gauge, "managed_servers", "Managed servers in the listener's section",
                              ("listener",))
        since = metric(prom.Gauge, "seconds_since_sync", "Seconds since the last successful pass this engine "
                       "answered in (+Inf before the first)", ("engine",))
        self.haproxy_up = metric(prom.Gauge, "haproxy_up", "1 while haproxy answers on the stats socket, 0 when "
                                 "it does not (NaN: no stats socket to ask)")
        self.haproxy_up.set(float("nan"))
        for url in self.urls:  # zeros from the start, not only after the first event
            self.events.labels(url)
            self.reconnects.labels(url)
            since.labels(url).set_function(lambda url=url: self.age(url))
        for how in ("live", "reload", "file"):
            self.applied.labels(how)
        prom.ProcessCollector(namespace=METRICS_PREFIX, registry=self.registry)

    def age(self, url: str) -> float:
        return time.monotonic() - self.synced.get(url, float("-inf"))

    def healthy(self) -> tuple[bool, str]:
        stale = [url for url in self.urls if self.age(url) > self.stale_after]
        said = ([f"not synced within {self.stale_after:g} s: {', '.join(stale)}\n"] if stale else []) + \
            ([f"the last pass failed: {one_line(self.error)}\n"] if stale and self.error else []) + \
            ([self.lost + "\n"] if self.lost else [])
        return (False, "".join(said)) if said else (True, "ok\n")

    def haproxy(self, answers: bool | None, lost: str) -> None:
        self.haproxy_up.set(float("nan") if answers is None else float(answers))
        self.lost = lost

    def event(self, url: str) -> None:
        self.events.labels(url).inc()

    def reconnected(self, url: str) -> None:
        self.reconnects.labels(url).inc()

    def passed(self, report: Report | None, answered: list[Engine], listeners: list[str], error: str = "") -> None:
        self.passes.inc()
        self.error = error
        self.failing.set(report is None)
        if report is None:
            self.failures.inc()
            return
        self.synced.update((e.describe(), time.monotonic()) for e in answered)
        for r in report.results:
            if isinstance(r, Result):
                self.changes.labels(r.listener or "", r.status).inc()
        if report.changed:
            self.applied.labels("reload" if report.restarted else "live" if report.runtime == "applied"
                                else "file").inc()
        self._count_managed(listeners)

    def _count_managed(self, listeners: list[str]) -> None:
        """Count the servers of the template's shape, as the file has them now."""
        try:
            text = read_config(Path(self.config))
            for name in listeners:
                listener = Listener(text, name, self.config)
                shape = template_pattern(listener.template()[1])
                self.managed.labels(name).set(sum(1 for _, v in listener.servers() if shape.fullmatch(v)))
        except ConfigError as exc:
            log.info("managed servers not counted: %s", exc)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _serve(address: tuple[str, int], metrics: Metrics) -> Any:
    """An HTTP server for GET /metrics and GET /healthz (not yet serving; see Metrics)."""
    import http.server

    import prometheus_client

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path == "/metrics":
                code, body = 200, prometheus_client.generate_latest(metrics.registry)
                kind = prometheus_client.CONTENT_TYPE_LATEST
            elif self.path == "/healthz":
                ok, text = metrics.healthy()
                code, body, kind = (200 if ok else 503), text.encode(), "text/plain; charset=utf-8"
            else:
                code, body, kind = 404, b"not found; try /metrics or /healthz\n", "text/plain; charset=utf-8"
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            """Scrapes are not the watcher's news."""

    host, port = address
    try:
        return http.server.ThreadingHTTPServer((host, port), Handler)
    except OSError as exc:
        raise UsageError(f"--metrics {host}:{port}: cannot listen there ({_root_cause(exc)}); "
                         f"give a free ADDR:PORT") from exc



###############################################################################
# Watching: wake-ups, drains and passes #######################################
###############################################################################


@dataclasses.dataclass(frozen=True)
class Connected:
    """An engine's event stream is (again) there: a full pass, so that events missed meanwhile are not lost."""

    url: str


@dataclasses.dataclass(frozen=True)
class DockerEvent:
    """A container, network, service or node event that can change what a listener holds."""

    url: str
    event: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class TasksMoved:
    """A swarm manager's running tasks changed (tasks on other nodes make no event here): what it answered."""

    url: str
    tasks: list[dict[str, Any]] = dataclasses.field(hash=False, compare=False)
    taken: float = dataclasses.field(default_factory=time.monotonic)


@dataclasses.dataclass(frozen=True)
class FileChanged:
    """The config's inode, size or times changed: maybe an edit by hand."""


Wake = Union[Connected, DockerEvent, TasksMoved, FileChanged]


class Backoff:
    """When to try again after failed passes: 1 s, doubling to 30 s, back to 1 s after a pass that worked."""

    def __init__(self) -> None:
        self.failures, self.due, self.said = 0, float("inf"), ""

    def failed(self, message: str) -> None:
        """Say a failure in one ERROR line, the same one again only with -v; schedule the retry."""
        delay = min(RETRY_FIRST * 2 ** self.failures, RETRY_LAST)
        self.failures += 1
        self.due = time.monotonic() + delay
        same = re.sub(r"\(\d+\) :", "(PID) :", message)  # haproxy's alerts name its pid, new at each -c
        if same != self.said:
            log.warning("ERROR: %s; retrying in %gs", message, delay)
        else:
            log.info("still failing (retrying in %gs): %s", delay, message)
        self.said = same

    def worked(self) -> None:
        if self.said:
            log.warning("the pass works again")
        self.failures, self.due, self.said = 0, float("inf"), ""


def _leaving(event: dict[str, Any]) -> bool:
    """A container event that takes it out of the balancing: it dies, stops, is told to stop (kill with
    TERM, INT, QUIT or KILL: docker stop sends TERM) or turns unhealthy."""
    status = event.get("status", "")
    signal_number = ((event.get("Actor") or {}).get("Attributes") or {}).get("signal")
    return status in ("die", "stop") or status.startswith("health_status: unhealthy") or \
        (status == "kill" and signal_number in STOP_SIGNALS)


def _back(event: dict[str, Any]) -> bool:
    status = event.get("status", "")
    return status in ("start", "unpause", "destroy") or status.startswith("health_status: healthy")


class Drainer:
    """--watch: a leaving container's servers get no new request within milliseconds of the event, from
    the thread that saw it, whatever a pass is doing; their deletes wait for the servers to be unused
    in a thread of their own (run), never in a pass. A server added again before its delete is enabled."""

    def __init__(self, drain_timeout: float, stop: threading.Event) -> None:
        self.drain_timeout, self.stop = drain_timeout, stop
        self.lock = threading.Lock()
        self.address: str | None = None  # the admin stats socket, as the last pass found it
        self.servers_of: dict[str, list[tuple[str, str]]] = {}  # container id -> (listener, server)
        self.disabled: dict[tuple[str, str], str] = {}  # disabled here (not by an operator), for which container
        self.gone: set[str] = set()  # containers whose events said they leave, until one says they are back
        self.pending: dict[tuple[str, str], float] = {}  # to delete, and until when to try

    def follow(self, mode: Invocation, text: str | None, fleets: dict[str, Fleet]) -> None:
        """After a pass: which server of which listener stands for which container, and where haproxy is."""
        if text is None:
            return
        self.address = _runtime_address(mode.haproxy, global_settings(text))
        servers_of: dict[str, list[tuple[str, str]]] = {}
        for listener, fleet in fleets.items():
            by_alias = {alias: c.id for c in fleet.selected for alias in c.aliases}
            with contextlib.suppress(ConfigError):
                for name in section_servers(text, listener, mode.file.path)[0]:
                    cid = by_alias.get(name) or by_alias.get(name[:12], "")
                    if cid and (name in by_alias or id_prefix(name, cid)):
                        servers_of.setdefault(cid, []).append((listener, name))
        self.servers_of = servers_of

    def leaving(self, cid: str) -> None:
        """Called by the thread that saw the container (or task) leave: `disable server` at once."""
        with self.lock:
            self.gone.add(cid)
        for backend, name in self.servers_of.get(cid, ()):
            self._disable(backend, name, cid)

    def back(self, cid: str) -> None:
        """The container runs (healthy) again: a pass may enable its servers."""
        with self.lock:
            self.gone.discard(cid)

    def remove(self, backend: str, name: str) -> None:
        """A pass took the server out of the file: disable it (if not yet) and delete it once unused."""
        self._disable(backend, name, "")
        with self.lock:
            self.pending.setdefault((backend, name), time.monotonic() + self.drain_timeout)

    def cancel(self, backend: str, name: str) -> bool:
        """The server is wanted again: no delete; True when it was disabled here (so enable it). A pass
        that still counts a container whose events said it leaves (it listed the containers before the
        event) does not bring its server back."""
        with self.lock:
            cid = self.disabled.get((backend, name))
            if cid is None or cid in self.gone:
                return False
            self.pending.pop((backend, name), None)
            del self.disabled[(backend, name)]
            return True

    def _disable(self, backend: str, name: str, cid: str) -> None:
        with self.lock:
            if self.address is None or (backend, name) in self.disabled:
                return
            self.disabled[(backend, name)] = cid
        try:
            Runtime(self.address).ask(f"disable server {backend}/{name}", "")
        except (RuntimeUnavailable, HaproxyError) as exc:
            with self.lock:
                self.disabled.pop((backend, name), None)
            log.info("could not disable %s/%s now (%s); the next pass takes it out", backend, name, exc)
            return
        log.info("disabled %s/%s: its container is leaving", backend, name)

    def run(self) -> None:
        """Delete pending servers as soon as nothing uses them; past --drain-timeout leave them disabled
        (a later pass's sweep deletes them once unused)."""
        while not self.stop.wait(DRAIN_POLL):
            with self.lock:
                pending = list(self.pending.items())
            for (backend, name), until in pending:
                self._try_delete(backend, name, until)

    def _try_delete(self, backend: str, name: str, until: float) -> None:
        try:
            runtime = Runtime(self.address) if self.address else None
            deleted = runtime is not None and not runtime.in_use(backend, name) and runtime.ask(
                f"del server {backend}/{name}", "Server deleted", "Server still has connections",
                "No such server").startswith(("Server deleted", "No such server"))
        except (RuntimeUnavailable, HaproxyError):
            deleted = False
        if deleted or time.monotonic() >= until:
            if not deleted:
                log.warning("warning: %s/%s is still in use after --drain-timeout %gs; it stays disabled (no new "
                            "request) and is deleted by a later pass", backend, name, self.drain_timeout)
            with self.lock:
                self.pending.pop((backend, name), None)
                self.disabled.pop((backend, name), None)


def _validations(mode: Invocation, engine: Engine) -> Validations | None:
    """A watcher's record of validations, with a haproxy (and Docker connection) of its own."""
    if not mode.file.validate:
        return None
    try:
        checker = _haproxy(mode.haproxy, True, Engine(engine.url, host_ip=engine.host_ip))
    except HaproxyError:
        return None  # no haproxy to validate with: the passes say so
    return Validations(checker) if checker is not None else None


def _more(path: Path, listener: str, coming: int) -> list[str]:
    """The config with 1 to `coming` more servers of a simple template in the listener (placeholders
    standing for any container: see Validations); none where that says nothing."""
    text = read_config(path)
    section = Listener(text, listener, str(path))
    _, template, indent = section.template()
    if not _simple(template):
        return []
    texts = []
    for n in range(1, coming + 1):
        values = {"id": f"{n:012x}", "name": f"hdc-placeholder-{n}", "ip": "192.0.2.1", "port": n}
        line = render_template(template, values)
        if server_name(line) in _server_lines(section):
            break
        section.put_server(line, indent)
        texts.append(section.text())
    return texts


class Watcher:
    """--watch: one pass now, then one per burst of wake-ups, until SIGTERM/SIGINT.

    The threads only post typed wake-ups (each with its own Docker connection); the state a watch keeps
    between passes lives here, and only the loop in run() changes it."""

    def __init__(self, mode: Invocation, engines: list[Engine]) -> None:
        self.mode, self.engines = mode, engines
        self.wakes: queue.Queue[Wake] = queue.Queue()
        self.stop = threading.Event()
        self.observer = Metrics(mode.metrics, engines, mode.file.path, mode.coalesce) if mode.metrics else Observer()
        self.total = Report(mode.listener, "watch")
        self.listeners: frozenset[str] = frozenset()  # every listener a label named: served also once emptied
        self.excluded: set[str] = set()  # ids that events said stopped or turned unhealthy
        self.retry = Backoff()
        self.liveness = Liveness()
        self.drainer = Drainer(mode.haproxy.drain_timeout, self.stop)
        self.checks = _validations(mode, engines[0])
        self.text: str | None = None  # the config as the last pass left it: other text is a hand edit
        self.last_pass = float("-inf")  # when the last pass that wrote started (monotonic)
        self.settle = float("inf")  # when to look again after a network event (monotonic)
        self.fast_until = float("-inf")  # the task pollers ask fast until then (after a service event)
        self.signalled = False  # SIGTERM or SIGINT came: the loop stops the threads (see _stopping)

    def run(self) -> Report:
        handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        once = SayOnce()
        log.addFilter(once)
        try:
            self._start_threads()
            while (burst := self._next_burst()) is not None:
                self._note(burst)
                self._pass()
        finally:
            self.stop.set()
            log.removeFilter(once)
            self.observer.close()
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        log.warning("stopped watching; %s is complete", self.mode.file.path)
        return self.total

    def _on_signal(self, *_: object) -> None:
        """Only a flag: a handler that took a lock (Event.set) deadlocks when a second signal comes while the
        first one's handler holds it (systemd's SIGTERM, then an operator's)."""
        self.signalled = True

    def _stopping(self) -> bool:
        """Whether to stop: asked to by a signal (then the threads are told) or by a thread."""
        if self.signalled and not self.stop.is_set():
            self.stop.set()
        return self.stop.is_set()

    def _start_threads(self) -> None:
        """Per engine an event follower and a task poller, and one watcher of the file; each connection
        posts Connected first, which starts with a full pass."""
        filtered = bool(self.mode.filters)
        for engine in self.engines:
            for target, args in ((_follow, (filtered,)), (_poll_tasks, (self.mode.swarm_poll,))):
                threading.Thread(target=target, args=(Engine(engine.url, host_ip=engine.host_ip), self, *args),
                                 daemon=True).start()
        threading.Thread(target=_watch_file, args=(Path(self.mode.file.path), self), daemon=True).start()
        threading.Thread(target=self.drainer.run, daemon=True).start()

    def post(self, wake: Wake) -> None:
        self.wakes.put(wake)

    def prepare(self, labels: dict[str, str], coming: int = 1) -> None:
        """A container was created, or swarm tasks are on their way (they run next): have haproxy -c say now
        what the pass that adds them will need, the listener with 1 to `coming` servers more (see
        Validations), so that the pass need not wait for it."""
        host = labels.get(LABEL_HOST, "").split(",")[0].strip().lower()
        listener = self.mode.listener or labels.get(LABEL_LISTEN) or (backend_for_host(host) if host else "")
        if self.checks is not None and LABEL_RULES[LABEL_LISTEN][0].fullmatch(listener[:LABEL_LIMIT + 1]):
            self.checks.prepare(functools.partial(_more, Path(self.mode.file.path), listener, coming),
                                self.mode.file.path)

    def _next_burst(self) -> list[Wake] | None:
        """Wait for a wake-up; None once asked to stop; an empty burst when a retry is due, or after the
        idle resync time without any. Leading edge: the first wake-up after a quiet spell starts a pass at
        once; wake-ups that come sooner than --coalesce after the last pass that wrote started wait for that
        long, and all that arrived meanwhile make one pass (a burst gives at most one write per --coalesce)."""
        burst: list[Wake] = []
        idle = self.observer.idle_resync
        wait_until = min(self.retry.due, self.settle, time.monotonic() + idle if idle is not None else float("inf"))
        while not burst:
            try:
                burst.append(self.wakes.get(timeout=0.2))
            except queue.Empty:
                if self._stopping():
                    return None
                if time.monotonic() >= wait_until:
                    return []
        deadline = self.last_pass + self.mode.coalesce
        while not self._stopping() and (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(queue.Empty):
                burst.append(self.wakes.get(timeout=min(left, 0.2)))
        with contextlib.suppress(queue.Empty):
            while True:
                burst.append(self.wakes.get_nowait())
        return None if self._stopping() else burst

    def _note(self, burst: list[Wake]) -> None:
        """What the wake-ups tell the next pass. Docker's container list can lag its events (a `die`
        before the state says exited), and a container told to stop may still finish its requests: what
        the events said wins, until the container starts again. A task poll's answer serves the pass;
        a service, node or network event makes it ask again for services and haproxy's networks."""
        engines = {e.describe(): e for e in self.engines}
        self.settle = float("inf")
        for wake in burst:
            if isinstance(wake, TasksMoved) and wake.url in engines:
                engines[wake.url].fresh_tasks = (wake.taken, wake.tasks)
            if not isinstance(wake, DockerEvent):
                continue
            if wake.event.get("Type") in ("service", "node", "network") and wake.url in engines:
                engines[wake.url].forget_cached()
            if wake.event.get("Type") == "network":  # the list may not show the address yet: look again soon
                self.settle = time.monotonic() + SETTLE_AFTER
            if _leaving(wake.event):
                self.excluded.add(wake.event.get("id", ""))
            elif _back(wake.event):
                self.excluded.discard(wake.event.get("id", ""))

    def _pass(self) -> None:
        """One sync, then the running haproxy's servers brought in step with the file; a failure is said
        once and retried with backoff, the watch goes on."""
        started = time.monotonic()
        try:
            self._hand_edit()
            report, fleets = sync(self.mode, False, self.engines, self.listeners, frozenset(self.excluded),
                                  self.drainer, self.checks)
            self.listeners |= set(fleets)
            reconcile(self.mode.file, self.mode.haproxy, list(fleets), self.drainer)
            self.text = report.text or self.text
            self.drainer.follow(self.mode, self.text, fleets)
            if report.changed:
                self.last_pass = started
        except Exception as exc:  # noqa: BLE001 (a bug or a surprise of the system must not end the watch either)
            log.debug("the pass failed", exc_info=True)
            said = str(exc) if isinstance(exc, HdcError) else f"unexpected {type(exc).__name__}: {exc}"
            self.retry.failed(one_line(said))
            self.observer.passed(None, [], [], said)
        else:
            self.retry.worked()
            self._say(report)
            self.total.absorb(report)
            self.observer.passed(report, [e for e in self.engines if e.answered_at >= started],
                                 [self.mode.listener] if self.mode.listener else sorted(self.listeners))
        self.observer.haproxy(*self.liveness.check(self.mode))

    def _hand_edit(self) -> None:
        """When the file is not as the last pass left it (edited by hand), haproxy must accept it as it is
        before anything is applied from it. What the watcher applies of a hand edit is its server lines
        (this pass brings haproxy's servers in step); for the rest it says once that a reload is the
        operator's. A rejected edit fails the pass, and every retry looks again."""
        path = Path(self.mode.file.path)
        text = read_config(path)
        if self.text is None or text == self.text:
            self.text = text
            return
        checker = _haproxy(self.mode.haproxy, self.mode.file.validate, self.engines[0])
        if checker is not None and self.mode.file.validate:
            accepted, alerts = checker.check(path, str(path))
            if not accepted:
                raise ConfigError(f"haproxy rejects {path} as it was edited (haproxy -c: "
                                  f"{alerts.splitlines()[0] if alerts else 'no alert line'}); fix it")
        if _without_servers(text) != _without_servers(self.text):
            log.warning("warning: %s was edited beyond its server lines; the watcher applies only server "
                        "lines: reload haproxy to apply the rest", path)
        self.text = text

    def _say(self, report: Report) -> None:
        for r in report.results:
            if isinstance(r, Result):
                where = f" {r.ip}:{r.port}" if r.port else f" -> {r.server}" if r.status in ROUTE_STATUSES else ""
                log.warning("%s %s/%s%s", r.status, r.listener, r.id if r.status in ROUTE_STATUSES else r.server,
                            where, extra={"change": _change_fields(r, self.engines)})


class Liveness:
    """Whether the haproxy behind the stats socket answers, as a watcher sees it after each pass.

    A haproxy that answered and no longer does has died or was stopped (a crash, an OOM kill): said
    once, in one line, and kept as the reason /healthz fails until it answers again. One that never
    answered is the file-only case (the change waits for haproxy to start): said once, as a warning."""

    def __init__(self) -> None:
        self.pid: str | None = None  # the pid that answered last; None before any answered
        self.lost = ""
        self.warned = False

    def check(self, mode: Invocation) -> tuple[bool | None, str]:
        """(answers, why a haproxy that answered no longer does); answers None without a stats socket."""
        try:
            address = _runtime_address(mode.haproxy, global_settings(read_config(Path(mode.file.path))))
        except ConfigError:
            return None, self.lost
        if address is None:
            return None, ""
        try:
            pid = Runtime(address).process()
        except (RuntimeUnavailable, HaproxyError) as exc:
            return False, self._gone(address, exc)
        if self.lost:
            log.warning("haproxy answers on %s again (pid %s)", address, pid)
        elif self.pid is not None and pid != self.pid:
            log.info("haproxy on %s is a new process (pid %s, was %s)", address, pid, self.pid)
        self.pid, self.lost = pid, ""
        return True, ""

    def _gone(self, address: str, exc: Exception) -> str:
        if self.pid is None:
            if not self.warned:
                log.warning("warning: %s; changes go to the file only until haproxy answers there", exc)
                self.warned = True
            return ""
        if not self.lost:
            self.lost = (f"haproxy (pid {self.pid}) stopped answering on {address} ({_root_cause(exc)}): it died "
                         f"or was stopped; changes go to the file only until it answers again")
            log.warning("ERROR: %s", self.lost)
        return self.lost


def _watch_file(path: Path, watcher: Watcher) -> None:
    """Post FileChanged when the config's inode, size or times change (an editor's rename-over, `sed -i`,
    a write in place), every FILE_POLL seconds; the passes tell the tool's own writes apart by content."""
    def signature() -> tuple[int, ...] | None:
        with contextlib.suppress(OSError):
            st = path.stat()
            return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns
        return None

    seen = signature()
    while not watcher.stop.wait(FILE_POLL):
        now = signature()
        if now != seen:
            seen = now
            watcher.post(FileChanged())


def _follow(engine: Engine, watcher: Watcher, filtered: bool) -> None:
    """Feed one engine's events that can matter to the watcher; reconnect with backoff when it drops."""
    backoff, connections = 0.5, 0
    url = engine.describe()
    while not watcher.stop.is_set():
        reason = "the stream ended"
        try:
            swarm = engine.swarm_role() == "manager"  # services and nodes too: their events come from managers
            stream = engine.api.events(decode=True, filters={
                "type": ["container", "network"] + (["service", "node"] if swarm else []),
                "event": list(WATCH_EVENTS) + (list(SWARM_EVENTS) if swarm else [])})
            watcher.post(Connected(url))
            if connections:
                watcher.observer.reconnected(url)
            backoff, connections = 0.5, connections + 1
            for event in stream:
                watcher.observer.event(url)
                if not _may_matter(event, filtered):
                    continue
                if event.get("Type") == "container" and event.get("Action") == "create":
                    watcher.prepare((event.get("Actor") or {}).get("Attributes") or {})  # no pass: not running
                    continue
                if _leaving(event):
                    watcher.drainer.leaving(event.get("id", ""))
                elif _back(event):
                    watcher.drainer.back(event.get("id", ""))
                if event.get("Type") in ("service", "node"):
                    watcher.fast_until = time.monotonic() + FAST_AFTER
                watcher.post(DockerEvent(url, event))
                actor = event.get("Actor") or {}
                log.info("event %s %s %s", event.get("Type"), event.get("Action"),
                         (actor.get("Attributes") or {}).get("container", actor.get("ID", ""))[:12])
        except Exception as exc:  # any failure of the stream means: reconnect
            reason = _root_cause(exc)
        if watcher.stop.is_set():
            return
        log.warning("warning: lost the events of %s (%s); retrying in %gs", url, reason, backoff)
        engine.forget()
        watcher.stop.wait(backoff)
        backoff = min(backoff * 2, 10.0)


def _may_matter(event: dict[str, Any], filtered: bool) -> bool:
    """Whether an event can change what a pass finds. Without --filter, containers are selected by the
    listen or host label, or as a swarm task: another container's events (a busy host's) need no pass.
    A container event carries the container's labels."""
    attributes = (event.get("Actor") or {}).get("Attributes") or {}
    return filtered or event.get("Type") != "container" or any(
        key in attributes for key in (LABEL_LISTEN, LABEL_HOST, TASK_LABEL))


def _poll_tasks(poller: Engine, watcher: Watcher, interval: float) -> None:
    """On a swarm manager, one GET /tasks every `interval`, or every FAST_POLL while a task is on its way to
    running or leaving, and right after a service or node event: tasks starting or told to stop on
    other nodes make no event here. A leaving task (desired state no longer running) is drained at once;
    a change in the running tasks asks for a pass, which uses this answer (so does the first poll)."""
    seen: frozenset[tuple[str, ...]] | None = None
    prepared: frozenset[str] = frozenset()
    wait = interval
    while not watcher.stop.wait(wait):
        wait = interval
        try:
            if poller.swarm_role() != "manager":
                continue
            tasks = poller.tasks({"desired-state": list(POLLED_STATES)})
            prepared = _prepare_coming(poller, watcher, tasks, prepared)
        except DockerError:  # the event stream reports and retries an engine that went away
            poller.forget()
            continue
        if _moving(tasks, watcher.drainer) or time.monotonic() < watcher.fast_until:
            wait = min(interval, FAST_POLL)
        now = frozenset(_task_key(t) for t in tasks if task_runs(t))
        if now != seen:
            watcher.post(TasksMoved(poller.describe(), tasks))
            seen = now


def _prepare_coming(poller: Engine, watcher: Watcher, tasks: list[dict[str, Any]],
                    prepared: frozenset[str]) -> frozenset[str]:
    """Tasks on their way to running: have the validations they will need made now, per service (by its
    labels), once per set of such tasks. Returns the tasks prepared for."""
    coming = [t for t in tasks if t.get("DesiredState") == "running"
              and (t.get("Status") or {}).get("State") in STARTING_STATES]
    ids = frozenset(t["ID"] for t in coming)
    if not ids or ids <= prepared:
        return ids
    services = {s["ID"]: s for s in poller.services()}
    if any(t.get("ServiceID") not in services for t in coming):
        poller.forget_cached()  # a new service
        services = {s["ID"]: s for s in poller.services()}
    per_service: dict[str, int] = {}
    for task in coming:
        per_service[task.get("ServiceID", "")] = per_service.get(task.get("ServiceID", ""), 0) + 1
    for service_id, count in per_service.items():
        labels = ((services.get(service_id) or {}).get("Spec") or {}).get("Labels") or {}
        watcher.prepare(labels, count)
    return ids


def _moving(tasks: list[dict[str, Any]], drainer: Drainer) -> bool:
    """Whether a task is on its way to running or leaving; a leaving one's server is disabled now."""
    moving = False
    for task in tasks:
        state, desired = (task.get("Status") or {}).get("State"), task.get("DesiredState")
        if desired == "running" and state in ("new", "pending", *STARTING_STATES):
            moving = True
        elif desired != "running" and state == "running" and _has_container(task):
            drainer.leaving(task["Status"]["ContainerStatus"]["ContainerID"])
            moving = True
    return moving


def _task_key(task: dict[str, Any]) -> tuple[str, ...]:
    """What of a running task matters to a listener: which task, which container, which addresses."""
    addresses = sorted(a for n in task.get("NetworksAttachments") or () for a in n.get("Addresses") or ())
    return (task["ID"], task["Status"]["ContainerStatus"]["ContainerID"], *addresses)



###############################################################################
# Output ######################################################################
###############################################################################


def render_plain(report: Report, verbose: bool) -> str:
    """The original tool's plain output, byte for byte: one line per result as its action shows it."""
    action = ACTIONS[report.action]
    if action.table:
        return action.table(report)
    lines = []
    for r in report.results:
        who = f"{r.listener}/{r.id}" if report.listener is None else r.id
        line = action.line(who, r, verbose)
        if line is not None:
            lines.append(line)
    lines.extend(report.servers or ())
    text = "".join(line + "\n" for line in lines)
    return (report.diff or "") + text


def render_status(report: Report) -> str:
    """--status as an aligned table under a header line; nothing when there is no server."""
    rows = [["SERVER", "ADDRESS", "CONTAINER", "HAPROXY", "CHECK", "SESSIONS", "DRIFT"]]
    for r in report.rows:
        address = "-" if r.ip is None else r.ip if r.port is None else f"{r.ip}:{r.port}"
        rows.append([r.server if report.listener else f"{r.listener}/{r.server}", address, r.container,
                     r.haproxy or "-", r.check or "-", "-" if r.sessions is None else str(r.sessions),
                     ",".join(r.drift) or "-"])
    routes = [["ROUTE", "BACKEND", "MAP", "HAPROXY", "DRIFT"]]
    for r in report.routes or ():
        routes.append([r["key"], r["backend"], "yes" if r["in_map"] else "no",
                       "-" if r["in_haproxy"] is None else "yes" if r["in_haproxy"] else "no", ",".join(r["drift"]) or "-"])
    return (_table(rows) if len(rows) > 1 else "") + ("\n" if len(rows) > 1 and len(routes) > 1 else "") + \
        (_table(routes) if len(routes) > 1 else "")


def _table(rows: list[list[str]]) -> str:
    """Rows aligned in columns, the last one as it is."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1] for row in rows]
    return "".join(line + "\n" for line in lines)


def as_document(report: Report) -> dict[str, Any]:
    """The one JSON/YAML document: typed, the same schema for both."""
    doc = {k: v for k, v in dataclasses.asdict(report).items()
           if not Report.__dataclass_fields__[k].metadata.get("internal")}
    if report.action == "status":
        doc["results"] = [dataclasses.asdict(row) for row in report.rows]
    doc["servers"] = None if report.servers is None else [_server_entry(v) for v in report.servers]
    doc["exit_status"] = report.status
    return doc


def _server_entry(value: str) -> dict[str, Any]:
    words = value.split(None, 2)
    ip, port = server_address(value)
    return {"name": server_name(value), "ip": ip, "port": port,
            "options": words[2] if len(words) > 2 else "", "line": value}


def render(report: Report, fmt: str, verbose: bool) -> str:
    if fmt == "json":
        return json.dumps(as_document(report), indent=2) + "\n"
    if fmt == "yaml":
        import yaml

        return yaml.safe_dump(as_document(report), sort_keys=False)
    return render_plain(report, verbose)


def _with_address(who: str, r: Result, verbose: bool) -> str | None:
    return "%-20s\t%s\t%s:%s" % (who, r.status, r.ip, r.port)


def _with_status(who: str, r: Result, verbose: bool) -> str | None:
    """A server added or updated is shown with its address, a route with its backend, any other result
    with its status."""
    if r.status in ROUTE_STATUSES:
        return "%-20s\t%s\t%s" % (who, r.status, r.server)
    return _with_address(who, r, verbose) if r.status in ("added", "updated") else "%-20s\t%s" % (who, r.status)


def _when_verbose(who: str, r: Result, verbose: bool) -> str | None:
    return _with_status(who, r, verbose) if verbose else None


def _never(who: str, r: Result, verbose: bool) -> str | None:
    return None



###############################################################################
# Running one invocation: the table of actions ################################
###############################################################################


def _action(args: argparse.Namespace) -> str:
    """The one action the command line asks for, checked against what goes with it."""
    name = next((a for a, act in ACTIONS.items() if act.option and getattr(args, act.option) not in (None, False)),
                "show" if args.show else None)
    if name is None:
        raise UsageError("nothing to do; give --add, --delete, --check, --verify, --sync, --prune, --watch, "
                         "--status or --show")
    action = ACTIONS[name]
    if args.listen is None and action.needs_listener:
        raise UsageError("the following arguments are required: -l/--listen; see --help")
    if len(args.docker_url or ()) > 1 and not action.many_engines:
        raise UsageError("--docker-url may be given more than once only with --sync, --prune, --watch or --status")
    if (args.metrics or args.log_format != "plain") and name != "watch":
        raise UsageError("--metrics and --log-format go with --watch")
    if args.filter and (not action.selects or args.listen is None):
        raise UsageError("--filter selects the containers of one listener: give it with -l, "
                         "with --sync or --watch")
    if args.service and (not action.selects or args.listen is None):
        raise UsageError("--service selects the swarm services of one listener: give it with -l, "
                         "with --sync or --watch (--add SERVICE adds one service's tasks)")
    if not args.swarm_poll > 0:
        raise UsageError(f"--swarm-poll {args.swarm_poll:g} must be more than 0 seconds")
    return name


def _refs(args: argparse.Namespace, action: str) -> tuple[ContainerRef, ...]:
    """The id list of --add or --delete, or of --check (where none means every server)."""
    if action in ("add", "delete") or (action == "check" and args.check):
        return tuple(parse_id_list(getattr(args, action), action == "add"))
    return ()


def _invocation(args: argparse.Namespace) -> Invocation:
    """Decode the command line once; below run() only typed settings travel."""
    action = _action(args)
    file = FileOptions(args.config, args.lock_timeout, not args.no_validate, args.dry_run, args.diff,
                       args.write_in_place, args.show)
    haproxy = HaproxyOptions(args.haproxy_bin, args.haproxy_container, args.hot_restart, args.restart,
                             not args.no_runtime, args.runtime_socket, args.drain_timeout, args.state_file)
    return Invocation(action, args.listen, file, haproxy, _refs(args, action), parse_filters(args.filter or []),
                      tuple(args.docker_url or [None]), args.host_ip, args.network, args.coalesce,
                      parse_listen_address(args.metrics) if args.metrics else None, args.log_format,
                      tuple(args.service or ()), args.swarm_poll)


def run(args: argparse.Namespace) -> Report:
    """Carry out one invocation; raises HdcError for anything that stops it."""
    mode = _invocation(args)
    engines = [Engine(url, host_ip=mode.host_ip) for url in mode.docker_urls]  # one connection per engine
    return ACTIONS[mode.action].run(mode, engines)


def _add(mode: Invocation, engines: list[Engine]) -> Report:
    edit = functools.partial(add_containers, refs=list(mode.refs), engine=engines[0],
                             addressing=_addressing(mode, engines[0]))
    return _write(mode.file, mode.haproxy, Report(mode.listener, "add"), {mode.listener: edit}, engines[0])


def _delete(mode: Invocation, engines: list[Engine]) -> Report:
    edit = functools.partial(delete_containers, refs=list(mode.refs), engine=engines[0])
    return _write(mode.file, mode.haproxy, Report(mode.listener, "delete"), {mode.listener: edit}, engines[0])


def _read_only(mode: Invocation, engines: list[Engine]) -> Report:
    """--check, --verify and --show: the listener as the file has it, no lock, no write."""
    path = Path(mode.file.path)
    text = read_config(path)
    listener = Listener(text, mode.listener, str(path))
    report = Report(mode.listener, mode.action)
    if mode.action == "check":
        report.results = check_containers(listener, list(mode.refs), engines[0])
    elif mode.action == "verify":
        report.results = verify_servers(listener, engines[0], _addressing(mode, engines[0]))
    _with_servers(mode.file, report, listener)
    report.routes = _routes_to(text, path, mode.listener)
    return report


def _routes_to(text: str, path: Path, backend: str) -> list[dict[str, str]] | None:
    """The routes of the map file that lead to this backend; None when the config routes nothing."""
    mark = routes_mark(text, Path(os.path.realpath(path)), str(path))
    if mark is None:
        return None
    return [r.document() for r in _map_routes(mark.read_map() or "") if r.backend == backend]


def status(mode: Invocation, engines: list[Engine]) -> Report:
    """--status: reads only and takes no lock, so a cron job never waits on a writer."""
    text = read_config(Path(mode.file.path))
    address = _reading_socket(mode.haproxy, global_settings(text)) if mode.haproxy.runtime else None
    if address is None and mode.haproxy.runtime:
        log.warning("warning: no stats socket in the global section and no --runtime-socket; "
                    "haproxy's side is not compared")
    names = [mode.listener] if mode.listener else templated_listeners(text)
    runtime = Runtime(address) if address else None
    report = Report(mode.listener, "status", rows=status_servers(text, mode.file.path, names, runtime, engines))
    mark = routes_mark(text, Path(os.path.realpath(mode.file.path)), mode.file.path) if not mode.listener else None
    if mark is not None:
        report.routes = status_routes(text, mark, runtime)
    return report


def status_routes(text: str, mark: RoutesMark, runtime: Runtime | None) -> list[dict[str, Any]]:
    """--status: each route as the map file and the running haproxy have it, with its drift: `not_in_haproxy`
    (the file's map has it, haproxy does not, or sends it elsewhere), `only_in_haproxy`, `no_backend`."""
    on_disk = dict(map_entries(mark.read_map() or ""))
    live: dict[str, str] | None = None
    if runtime is not None:
        try:
            live = dict(runtime.map(mark.map_ref))
        except (RuntimeUnavailable, HaproxyError) as exc:
            log.warning("warning: %s; haproxy's routes are not compared", exc)
    present = {name for kind, name, _, _ in sections(text) if kind in ("backend", "listen")}
    rows = []
    for key in [*on_disk, *(k for k in live or {} if k not in on_disk)]:
        backend = on_disk.get(key) or (live or {}).get(key, "")
        drift = [] if live is None or (live.get(key) == on_disk.get(key)) else \
            ["only_in_haproxy" if key not in on_disk else "not_in_haproxy"]
        drift += [] if backend in present else ["no_backend"]
        rows.append({"key": key, "backend": backend, "in_map": key in on_disk,
                     "in_haproxy": None if live is None else key in live, "drift": drift})
    return rows


@dataclasses.dataclass(frozen=True)
class Action:
    """One action of the command line: its option, how it runs, what goes with it, how its results show.
    ACTIONS is the one place that says what differs between actions."""

    option: str | None  # the argparse dest that asks for it; None: -s alone (show)
    run: Callable[[Invocation, list[Engine]], Report]
    needs_listener: bool = True  # -l is required
    many_engines: bool = False  # --docker-url may be given more than once
    selects: bool = False  # --filter and --service go with it
    amiss: Callable[[Report], bool] = lambda report: False  # what makes the exit status 1
    line: Callable[[str, Result, bool], str | None] = _with_status  # a result in plain output
    table: Callable[[Report], str] | None = None  # plain output as a whole, instead of lines


def _not_there(report: Report) -> bool:
    return any(r.status in ("not_balanced", "not_found") for r in report.results)


ACTIONS: dict[str, Action] = {
    "add": Action("add", _add, line=_with_address),
    "delete": Action("delete", _delete, line=_when_verbose),
    "check": Action("check", _read_only, amiss=_not_there),
    "verify": Action("verify", _read_only, amiss=_not_there),
    "sync": Action("sync", lambda mode, engines: sync(mode, False, engines)[0], needs_listener=False,
                   many_engines=True, selects=True),
    "prune": Action("prune", lambda mode, engines: sync(mode, True, engines)[0], many_engines=True),
    "watch": Action("watch", lambda mode, engines: Watcher(mode, engines).run(), needs_listener=False,
                    many_engines=True, selects=True, line=_never),
    "status": Action("status", lambda mode, engines: status(mode, engines), needs_listener=False,
                     many_engines=True, amiss=lambda report: any(row.drift for row in report.rows) or
                     any(route.get("drift") for route in report.routes or ()),
                     table=lambda report: render_status(report)),
    "show": Action(None, _read_only),
}



###############################################################################
# Command line ################################################################
###############################################################################


#: A completion asks Docker at most this long: a TAB must not hang on an engine that does not answer.
COMPLETION_TIMEOUT = 1.0


def _complete_listeners(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    """-l completes the listen and backend sections of -f (or the default config) as the tool reads them."""
    try:
        text = Path(parsed_args.config or DEFAULT_CONFIG).read_text(errors="replace")
    except OSError:
        return []
    return [name for kind, name, _, _ in sections(text) if kind in ("listen", "backend") and name.startswith(prefix)]


def _container_completer(running: bool, listed: bool) -> Callable[..., list[str]]:
    """A completer of container names from Docker (`running` ones only, or all), after the last comma of an
    id list when `listed`; nothing when the engine does not answer within COMPLETION_TIMEOUT."""

    def complete(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
        head, comma, last = prefix.rpartition(",") if listed else ("", "", prefix)
        engine = Engine((parsed_args.docker_url or [None])[0], timeout=COMPLETION_TIMEOUT)
        try:
            found = engine.api.containers(all=not running)
        except Exception:  # any failure of any engine: complete nothing rather than print or hang
            return []
        names = sorted(name.lstrip("/") for c in found for name in c.get("Names") or [] if "/" not in name[1:])
        return [head + comma + name for name in names if name.startswith(last)]

    return complete


def _complete(parser: argparse.ArgumentParser) -> None:
    """Answer the shell's completion request (argcomplete's protocol) and exit; imported only then."""
    import argcomplete

    argcomplete.autocomplete(parser)


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line through main()."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message}; see --help")


def _seconds(text: str) -> float:
    """A non-negative number of seconds, for argparse."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return value


def build_parser() -> _Parser:
    p = _Parser(
        prog="haproxy-docker-config", add_help=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Keep an HAProxy listen/backend section in step with Docker containers.",
        epilog=EXIT_STATUS_HELP)
    p.add_argument("--help", action="help", help="Show help details")
    p.add_argument("-l", "--listen", metavar="LISTENER",
                   help="Perform actions on the listen or backend section LISTENER. Mandatory, "
                        "except for --sync/--watch, which then serve every listener that container labels name "
                        "and, with a #DOCKERROUTES frontend, the routes of their host and path labels"
                   ).completer = _complete_listeners  # type: ignore[attr-defined]
    act = p.add_mutually_exclusive_group()
    act.add_argument("-a", "--add", metavar="ID1[:PORT][,ID2[:PORT],...]",
                     help="Add containers (id, unique id prefix or name) with optional private port; "
                          "the published host port is looked up"
                     ).completer = _container_completer(running=True, listed=True)  # type: ignore[attr-defined]
    act.add_argument("-d", "--delete", metavar="ID1[,ID2,...]", help="Take containers out of balancing"
                     ).completer = _container_completer(running=False, listed=True)  # type: ignore[attr-defined]
    act.add_argument("-c", "--check", metavar="ID1,ID2,...", nargs="?", const="",
                     help="Check if containers are balanced by LISTENER; no ids: list every balanced container"
                     ).completer = _container_completer(running=False, listed=True)  # type: ignore[attr-defined]
    act.add_argument("--verify", action="store_true",
                     help="Check that every server of LISTENER is a running container")
    act.add_argument("--sync", action="store_true",
                     help=f"Add every selected running container, update changed ones, remove managed servers "
                          f"whose containers are gone or no longer selected (selection: --filter, else "
                          f"the label {LABEL_LISTEN}=LISTENER)")
    act.add_argument("--prune", action="store_true",
                     help="Remove the managed servers of LISTENER whose containers no longer run")
    act.add_argument("--watch", action="store_true",
                     help="--sync, then follow Docker's events and sync again on every change, until SIGTERM")
    act.add_argument("--status", action="store_true",
                     help="Show each server of LISTENER (without -l: of every listener with a template) as the "
                          "file, the running haproxy (stats socket) and Docker see it, and where they disagree "
                          "(exit 1); reads only")
    restart = p.add_mutually_exclusive_group()
    restart.add_argument("-r", "--restart", action="store_true",
                         help="Restart haproxy after a change (systemctl, else service haproxy restart)")
    restart.add_argument("-h", "--hot-restart", metavar="PIDFILE", nargs="?", const=DEFAULT_PIDFILE,
                         help=f"Hot-restart haproxy after a change (haproxy -sf). Default pidfile={DEFAULT_PIDFILE}")
    p.add_argument("-v", "--verbose", action="store_true", help="Be verbose about what is done (on stderr)")
    p.add_argument("-s", "--show", action="store_true", help="Show the server lines of LISTENER")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--yaml", dest="format", action="store_const", const="yaml", help="Output as YAML")
    fmt.add_argument("--json", dest="format", action="store_const", const="json", help="Output as JSON")
    p.add_argument("-f", "--config", metavar="PATH", default=DEFAULT_CONFIG,
                   help=f"haproxy config file (default {DEFAULT_CONFIG})")
    p.add_argument("--docker-url", metavar="URL", action="append",
                   help="Docker Engine URL: unix://, tcp:// or ssh:// (default: DOCKER_HOST or the local socket); "
                        "more than once for --sync/--prune/--watch")
    p.add_argument("--filter", metavar="KEY=VALUE", action="append",
                   help="Select the containers for --sync/--watch, in Docker's filter syntax "
                        "(label=app=web, ancestor=IMAGE, name=..., network=...); repeatable")
    p.add_argument("--host-ip", metavar="IP",
                   help="Address for ports published on all interfaces "
                        "(default: the host of a tcp:// or ssh:// docker URL, else 127.0.0.1)")
    p.add_argument("--network", metavar="NAME",
                   help=f"Reach containers at their address on this Docker network (name or id) and on their "
                        f"private port (ID:PORT, the label {LABEL_PORT}, or the one exposed port) instead of "
                        f"a published port; a container's label {LABEL_NETWORK} wins. Without it, "
                        f"--haproxy-container picks the one user-defined network haproxy shares with a container")
    p.add_argument("--service", metavar="NAME", action="append",
                   help=f"With -l and --sync/--watch on a swarm manager: this service's running tasks, on every "
                        f"node, belong to the listener (default: services labelled {LABEL_LISTEN}=LISTENER); "
                        f"repeatable")
    p.add_argument("--haproxy-bin", metavar="PATH", help="haproxy binary (default: haproxy on PATH)")
    p.add_argument("--haproxy-container", metavar="NAME",
                   help="haproxy runs in this container: validate with docker exec, -h reloads its master "
                        "(SIGUSR2), -r restarts the container"
                   ).completer = _container_completer(running=True, listed=False)  # type: ignore[attr-defined]
    p.add_argument("--write-in-place", action="store_true",
                   help="Rewrite the config's content in place instead of renaming a new file over it "
                        "(automatic when it is bind-mounted into a container, a mount point, or hard-linked)")
    p.add_argument("--state-file", metavar="PATH",
                   help="Before a reload, save 'show servers state' here (default: the server-state-file "
                        "of the global section)")
    p.add_argument("--no-validate", action="store_true",
                   help="Replace the config without haproxy -c (for hosts without haproxy)")
    p.add_argument("--dry-run", action="store_true",
                   help="Do everything up to and including validation; write and restart nothing")
    p.add_argument("--diff", action="store_true", help="Print a unified diff of the config change")
    p.add_argument("--runtime-socket", metavar="PATH",
                   help="haproxy stats socket (level admin) for live changes "
                        "(default: the first 'stats socket ... level admin' of the global section)")
    p.add_argument("--no-runtime", action="store_true",
                   help="Do not apply changes through the Runtime API; only write the file (and restart)")
    p.add_argument("--drain-timeout", metavar="SECONDS", type=_seconds, default=DEFAULT_DRAIN_TIMEOUT,
                   help=f"On live delete, wait this long for the server's sessions to end "
                        f"(default {DEFAULT_DRAIN_TIMEOUT:g})")
    p.add_argument("--coalesce", metavar="SECONDS", type=_seconds, default=DEFAULT_COALESCE,
                   help=f"--watch: at most one write per this many seconds; an event after a quiet spell is "
                        f"handled at once, the events of a burst make one change (default {DEFAULT_COALESCE:g})")
    p.add_argument("--metrics", metavar="ADDR:PORT",
                   help="--watch: serve Prometheus metrics at http://ADDR:PORT/metrics and /healthz (200 while "
                        "every engine was synced within --coalesce + 30 s, else 503); needs "
                        "pip install haproxy-docker-config[metrics]")
    p.add_argument("--log-format", choices=("plain", "json"), default="plain",
                   help="--watch: each line on stderr as plain text (default) or as one JSON object "
                        "(time, level, listener, action, server, address, engine, message)")
    p.add_argument("--swarm-poll", metavar="SECONDS", type=_seconds, default=DEFAULT_SWARM_POLL,
                   help=f"--watch on a swarm manager: ask for the tasks this often, since tasks on other nodes "
                        f"make no local event (default {DEFAULT_SWARM_POLL:g})")
    p.add_argument("--lock-timeout", metavar="SECONDS", type=_seconds, default=DEFAULT_LOCK_TIMEOUT,
                   help=f"Wait this long for another run's lock (default {DEFAULT_LOCK_TIMEOUT:g})")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; every error becomes one line on stderr and its exit status."""
    verbose, error = False, sys.stderr.write
    try:
        parser = build_parser()
        if "_ARGCOMPLETE" in os.environ:  # the shell asks for completions (a TAB), not a run
            _complete(parser)
        args = parser.parse_args(argv)
        verbose = args.verbose
        logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr, force=True)
        logging.getLogger().handlers[0].setFormatter(JsonLines() if args.log_format == "json" else PlainLines())
        if args.log_format == "json":
            error = lambda text: log.warning(text.rstrip("\n"))  # noqa: E731 (one JSON line too)
        report = run(args)
    except HdcError as exc:
        if verbose:
            log.exception("traceback:")
        error(f"ERROR: {one_line(str(exc))}\n" + "".join(f"  {one_line(ln)}\n" for ln in exc.details.splitlines()))
        return exc.status
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug or a surprise of the system: still one line, unless -v
        if verbose:
            log.exception("traceback:")
        error(f"ERROR: unexpected {type(exc).__name__}: {one_line(str(exc))}; rerun with -v for the traceback\n")
        return EXIT_CONFIG
    _write_out(render(report, args.format or "plain", args.verbose), args.format is None)
    return report.status


def _write_out(text: str, plain: bool) -> None:
    """Write the output; plain output gives the config's lines back as their own bytes (the file was read
    as latin-1, so `--show` of a line holding 0xe9 prints 0xe9, not UTF-8's c3 a9)."""
    buffer = getattr(sys.stdout, "buffer", None)
    try:
        data = text.encode("latin-1") if plain and buffer is not None else None
    except UnicodeEncodeError:  # a character no file byte gives (a container label, say)
        data = None
    if data is None:
        sys.stdout.write(text)
        return
    sys.stdout.flush()
    buffer.write(data)
    buffer.flush()


if __name__ == "__main__":
    sys.exit(main())
