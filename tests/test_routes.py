"""Routes by host name and path from labels (#DOCKERROUTES): the pure parts (labels, precedence, the map,
the sections made from the template), then the CLI on real haproxy and containers: which container each
Host and path reaches, a host added and removed live while clients send requests, a backend made and
removed, bad labels, run twice, and the bytes outside what the tool manages."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import secrets
import socket
import threading
import time
from pathlib import Path

import docker.errors
import pytest
from conftest import IMAGE, LABEL, RUN, ask_haproxy, free_port, run_cli, wait_until

import haproxy_docker_config as hdc

P = "haproxy-docker-config."


def box(labels: dict[str, str], cid: str = "c" * 64, name: str = "app", state: str = "running") -> hdc.Container:
    return hdc.Container(cid, name, name, frozenset({cid, cid[:12], name}), labels, state, None, {}, (8080,), {}, "")


# --- pure: labels, precedence, map, sections ----------------------------------------------------------


def test_a_host_label_gives_one_route_per_host_to_the_backend_named_after_the_first() -> None:
    routes = hdc.container_routes(box({P + "host": "Shop.Example.com, www.shop.example.com", P + "path": "/api"}))
    assert [(r.host, r.path, r.backend, r.key) for r in routes] == [
        ("shop.example.com", "/api", "shop.example.com", "shop.example.com/api"),
        ("www.shop.example.com", "/api", "shop.example.com", "www.shop.example.com/api")]


def test_the_listen_label_names_the_backend_and_a_wildcard_backend_is_spelled_wildcard() -> None:
    assert hdc.container_routes(box({P + "host": "a.example.com", P + "listen": "shop"}))[0].backend == "shop"
    route, = hdc.container_routes(box({P + "host": "*.example.com"}))
    assert (route.backend, route.key) == ("wildcard.example.com", ".example.com/")


@pytest.mark.parametrize("labels, says", [
    ({P + "host": "shop example.com"}, "host='shop example.com', which is not host names"),
    ({P + "host": "shop.example.com\nserver x 1.2.3.4:80"}, "which is not host names"),
    ({P + "host": "a.example.com", P + "path": "api"}, "path=api, which is not a path prefix starting with '/'"),
    ({P + "host": "a.example.com", P + "path": "/a b"}, "which is not a path prefix"),
    ({P + "host": "a.example.com", P + "path": "/a;show info"}, "which is not a path prefix"),
    ({P + "host": "a.example.com", P + "weight": "300"}, "weight=300, which is not a weight in 0..256"),
    ({P + "host": "a.example.com", P + "backup": "yes"}, "backup=yes, which is not true or false"),
    ({P + "host": "a.example.com", P + "wieght": "3"}, "label haproxy-docker-config.wieght, which the tool does not know"),
    ({P + "path": "/api"}, "has label haproxy-docker-config.path but no haproxy-docker-config.host"),
])
def test_a_bad_label_is_refused_with_what_to_give(labels: dict[str, str], says: str) -> None:
    with pytest.raises(hdc.LabelError) as caught:
        hdc.check_labels(box(labels))
        hdc.container_routes(box(labels))
    assert says in str(caught.value) and str(caught.value).startswith("container app has label")


def test_server_options_come_from_the_labels_checked() -> None:
    app = box({P + "weight": "5", P + "backup": "true", P + "maxconn": "100"})
    assert hdc.server_options(app) == "weight 5 maxconn 100 backup"
    assert hdc.server_options(box({P + "backup": "false"})) == ""
    managed = hdc.template_pattern("$id ${ip}:$port check")
    assert managed.fullmatch("0123456789ab 10.0.0.1:8080 check weight 5 maxconn 100 backup")
    assert not managed.fullmatch("0123456789ab 10.0.0.1:8080 check cookie x")


def route(host: str, path: str = "/", backend: str = "b") -> hdc.Route:
    return hdc.Route(host, path, backend)


def test_precedence_exact_before_wildcard_longer_path_before_shorter_no_path_last() -> None:
    table = hdc.route_table([(route("*.example.com"), "w"), (route("a.example.com"), "x"),
                             (route("a.example.com", "/api"), "y"), (route("a.example.com", "/api/v2"), "z"),
                             (route("*.example.com", "/api"), "v")])
    assert [r.key for r in table] == ["a.example.com/api/v2", "a.example.com/api", "a.example.com/",
                                      ".example.com/api", ".example.com/"]


def test_two_backends_claiming_one_route_the_name_that_sorts_first_wins_and_both_are_named(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="haproxy-docker-config"):
        table = hdc.route_table([(route("a.example.com", backend="zeta"), "container z"),
                                 (route("a.example.com", backend="alpha"), "container a")])
    assert [r.backend for r in table] == ["alpha"]
    assert ("warning: container a and container z both route a.example.com/ (backends alpha and zeta); backend "
            "alpha gets it") in caplog.text


CONFIG = """global
    stats socket {sock} mode 600 level admin

defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s

# the user's frontend: the tool writes only right after its #DOCKERROUTES line
frontend www
    bind 127.0.0.1:{port}
    http-request set-header X-Seen-By www
    #DOCKERROUTES {map}
    default_backend no-route

backend no-route
    http-request return status 404 content-type text/plain string "no route"

backend shop  # written by hand: the tool only manages its servers
    balance roundrobin
    http-response set-header X-Backend shop
    #DOCKERSERVER $id ${{ip}}:$port check inter 1s

backend docker-template
    #DOCKERBACKEND
    balance roundrobin
    http-response set-header X-Backend %[be_name]
    #DOCKERSERVER $id ${{ip}}:$port check inter 1s
"""


def test_route_config_writes_the_lines_makes_a_missing_backend_and_removes_it_when_unnamed() -> None:
    text = CONFIG.format(sock="/tmp/s", port=80, map="/etc/haproxy/routes.map")
    mark = hdc.routes_mark(text, Path("/etc/haproxy/haproxy.cfg"), "haproxy.cfg")
    assert mark == hdc.RoutesMark("www", "/etc/haproxy/routes.map", Path("/etc/haproxy/routes.map"))
    routes = hdc.route_table([(route("a.example.com", backend="shop"), "a"), (route("n.example.com", backend="new"), "n")])
    new, change = hdc.route_config(text, mark, routes, "haproxy.cfg", None)
    assert change.created == ["new"] and change.routes == routes and change.needs_reload
    assert "backend new\n    #DOCKERCREATED by haproxy-docker-config from backend docker-template" in new
    assert new.count("use_backend %[var(txn.hdc_host)") == 2
    assert change.new_map.splitlines()[1:] == ["a.example.com/ shop", "n.example.com/ new"]
    again, change2 = hdc.route_config(new, mark, routes, "haproxy.cfg", change.new_map)
    assert again == new and not change2.needs_reload and not change2.map_changed  # run twice: nothing
    back, change3 = hdc.route_config(new, mark, routes[:1], "haproxy.cfg", change.new_map)
    assert change3.removed == ["new"] and "backend new" not in back
    assert hdc._without_servers(back) == hdc._without_servers(again.replace(new[new.index("backend new"):], ""))


def test_a_crlf_config_gets_crlf_route_lines_and_sections() -> None:
    text = ("frontend www\r\n    #DOCKERROUTES\r\n    default_backend x\r\nbackend x\r\n    #DOCKERBACKEND\r\n"
            "    #DOCKERSERVER $id ${ip}:$port\r\n")
    mark = hdc.routes_mark(text, Path("/etc/haproxy/haproxy.cfg"), "cfg")
    new, change = hdc.route_config(text, mark, [route("a.example.com", backend="made")], "cfg", None)
    assert change.created == ["made"] and "\r\nbackend made\r\n    #DOCKERCREATED" in new
    assert not re.search(r"(?<!\r)\n", new) and new.count("\r\n    use_backend %[var(txn.hdc_host)") == 2


def test_a_route_to_a_missing_backend_without_a_template_is_skipped_with_a_warning(caplog) -> None:
    text = CONFIG.format(sock="/tmp/s", port=80, map="/m.map").replace("    #DOCKERBACKEND\n", "")
    mark = hdc.routes_mark(text, Path("/etc/haproxy/haproxy.cfg"), "haproxy.cfg")
    with caplog.at_level(logging.WARNING, logger="haproxy-docker-config"):
        _, change = hdc.route_config(text, mark, [route("n.example.com", backend="new")], "cfg", None)
    assert change.routes == [] and change.created == []
    assert "the route n.example.com/ needs backend new, which cfg lacks" in caplog.text


@pytest.mark.parametrize("text, says", [
    ("frontend a\n    #DOCKERROUTES\nfrontend b\n    #DOCKERROUTES\n", "has 2 #DOCKERROUTES lines; keep one"),
    ("backend a\n    #DOCKERROUTES\n", "#DOCKERROUTES is in the backend section a; put it in a frontend"),
    ("frontend a\n    #DOCKERROUTES routes.map\n", "#DOCKERROUTES routes.map is no absolute map path"),
    ("frontend a\n    #DOCKERROUTES /etc/a,b.map\n", "is no absolute map path"),
])
def test_a_misplaced_or_doubled_marker_is_a_config_error(text: str, says: str) -> None:
    with pytest.raises(hdc.ConfigError, match=re.escape(says)):
        hdc.routes_mark(text, Path("/etc/haproxy/haproxy.cfg"), "cfg")


# --- end to end: the console script on real haproxy and containers -------------------------------------


class Routed:
    """A haproxy on CONFIG in tmp_path, and the apps the test starts (removed at the end), on the suite's
    private dockerd: without -l the tool routes every app with a host label on its engines, and other
    work on the main dockerd (another checkout's suite, a bench) must not land in this config."""

    def __init__(self, tmp_path: Path, engine, haproxy) -> None:
        self.tmp, self.client, self.url = tmp_path, engine.client(), engine.url
        self.port, self.sock, self.pidfile = free_port(), tmp_path / "admin.sock", tmp_path / "haproxy.pid"
        self.map = tmp_path / "docker-routes.map"
        self.path = tmp_path / "haproxy.cfg"
        self.original = CONFIG.format(sock=self.sock, port=self.port, map=self.map)
        self.path.write_text(self.original)
        self.apps: list = []
        from conftest import Cfg
        haproxy(Cfg(self.path, self.port, self.pidfile, self.sock))

    def app(self, publish: bool = True, **labels: str):
        container = self.client.containers.run(
            IMAGE, detach=True, ports={"8080/tcp": ("127.0.0.1", None)} if publish else {},
            labels={**{P + k: v for k, v in labels.items()}, LABEL: RUN})
        self.apps.append(container)
        return container

    def sync(self, *args: str):
        return run_cli("-f", str(self.path), "--docker-url", self.url, "--sync", "-h", str(self.pidfile), *args)

    def watch(self, watcher, *args: str):
        return watcher(self.path, "--docker-url", self.url, "-h", str(self.pidfile), *args)

    def get(self, host: str, path: str = "/") -> tuple[int, str, str]:
        """(status, body, X-Backend) of one request through haproxy with this Host."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as conn:
            conn.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            answer = b"".join(iter(lambda: conn.recv(65536), b"")).decode(errors="replace")
        head, _, body = answer.partition("\r\n\r\n")
        backend = re.search(r"^x-backend: (\S+)", head, re.MULTILINE | re.IGNORECASE)
        return int(head.split()[1]), body.strip(), backend.group(1) if backend else ""

    def reaches(self, host: str, path: str = "/") -> set[str]:
        """The containers (short ids) that answer 200 for this Host and path, over a few requests."""
        return {body for status, body, _ in (self.get(host, path) for _ in range(6)) if status == 200}

    def pid(self) -> str:
        return re.search(r"^Pid: (\d+)", ask_haproxy(self.sock, "show info"), re.MULTILINE).group(1)

    def close(self) -> None:
        for c in self.apps:
            with contextlib.suppress(docker.errors.NotFound):
                c.remove(force=True)


@pytest.fixture
def routed(tmp_path, second_engine, haproxy):
    setup = Routed(tmp_path, second_engine, haproxy)
    yield setup
    setup.close()


#: The lines the tool manages in the user's sections: servers, and those after #DOCKERROUTES.
MANAGED = re.compile(r"^    (server |http-request set-var\(txn\.hdc_|use_backend %\[var\(txn\.hdc_).*\n", re.M)


def served_by(routed: Routed, host: str, want: set[str], path: str = "/") -> None:
    wait_until(lambda: routed.reaches(host, path) == want, 20,
               lambda: f"{host}{path} reaches {routed.reaches(host, path)}, not {want}; map:\n"
                       f"{routed.map.read_text() if routed.map.exists() else '(none)'}")


def test_five_apps_each_reach_exactly_their_containers_by_host_path_and_wildcard(routed: Routed) -> None:
    tag = secrets.token_hex(2)
    shop = [routed.app(host=f"shop{tag}.example.com", listen="shop") for _ in range(2)]
    blog = routed.app(host=f"blog{tag}.example.com,www.blog{tag}.example.com")
    routed.app(host=f"shop{tag}.example.com", path="/api")  # in a backend made for it
    routed.app(host=f"shop{tag}.example.com", path="/api/v2", listen=f"v2-{tag}")
    wild = routed.app(host=f"*.w{tag}.example.com")
    done = routed.sync()
    assert done.returncode == 0, done.stderr
    ids = lambda *cs: {c.short_id for c in cs}  # noqa: E731
    served_by(routed, f"shop{tag}.example.com", ids(*shop))
    served_by(routed, f"SHOP{tag}.Example.COM:{routed.port}", ids(*shop))  # case and port do not matter
    served_by(routed, f"blog{tag}.example.com", ids(blog))
    served_by(routed, f"www.blog{tag}.example.com", ids(blog))
    served_by(routed, f"any.w{tag}.example.com", ids(wild))
    # the longer path prefix wins over the shorter, any path over none; the answers are the apps' 404s
    assert routed.get(f"shop{tag}.example.com", "/api/x")[2] == f"shop{tag}.example.com"  # the backend made
    assert routed.get(f"shop{tag}.example.com", "/api/v2/x")[2] == f"v2-{tag}"
    assert routed.get(f"shop{tag}.example.com", "/other")[2] == "shop"
    assert routed.get(f"a.b.w{tag}.example.com")[0] == 404  # a wildcard covers one more label, no more
    assert routed.get(f"shop{tag}.example.community")[1] == "no route"
    assert routed.get(f"w{tag}.example.com")[1] == "no route"


def test_an_exact_host_wins_over_a_wildcard_of_its_domain(routed: Routed) -> None:
    tag = secrets.token_hex(2)
    exact = routed.app(host=f"a.e{tag}.example.com")
    wild = routed.app(host=f"*.e{tag}.example.com")
    assert routed.sync().returncode == 0
    served_by(routed, f"a.e{tag}.example.com", {exact.short_id})
    served_by(routed, f"b.e{tag}.example.com", {wild.short_id})


def test_a_made_backend_is_validated_written_reloaded_once_and_removed_with_its_last_container(routed: Routed) -> None:
    tag = secrets.token_hex(2)
    app = routed.app(host=f"new{tag}.example.com")
    before = routed.pid()
    done = routed.sync()
    assert done.returncode == 0, done.stderr
    assert f"backend/new{tag}.example.com\tcreated" in done.stdout.replace("  ", "")
    text = routed.path.read_text()
    assert text.count(f"backend new{tag}.example.com\n    #DOCKERCREATED") == 1
    served_by(routed, f"new{tag}.example.com", {app.short_id})
    assert routed.pid() != before  # a new section: one reload
    app.remove(force=True)
    done = routed.sync()
    assert done.returncode == 0, done.stderr
    assert MANAGED.sub("", routed.path.read_text()) == routed.original  # the section is gone, byte for byte
    assert routed.get(f"new{tag}.example.com")[1] == "no route"
    assert routed.map.read_text().splitlines()[1:] == []


def test_run_twice_changes_nothing_and_the_file_outside_the_managed_lines_is_byte_identical(routed: Routed) -> None:
    tag = secrets.token_hex(2)
    routed.app(host=f"t{tag}.example.com", listen="shop", weight="7")
    routed.app(host=f"u{tag}.example.com")
    assert routed.sync().returncode == 0
    first, first_map = routed.path.read_bytes(), routed.map.read_bytes()
    again = routed.sync()
    assert again.returncode == 0 and again.stdout == ""
    assert routed.path.read_bytes() == first and routed.map.read_bytes() == first_map
    text = first.decode()
    made = text[text.index(f"backend u{tag}.example.com"):]
    assert MANAGED.sub("", text.replace(made, "")) == routed.original
    assert re.search(r"server \w+ 127\.0\.0\.1:\d+ check inter 1s weight 7$", text, re.M)


def test_bad_labels_warn_once_each_and_the_others_are_served(routed: Routed) -> None:
    tag = secrets.token_hex(2)
    good = routed.app(host=f"g{tag}.example.com")
    bad = [routed.app(host="bad host.example.com"), routed.app(host=f"p{tag}.example.com", path="api"),
           routed.app(host=f"o{tag}.example.com", wieght="3"), routed.app(host=f"w{tag}.example.com", weight="999"),
           routed.app(host="x.example.com\n    server evil 1.2.3.4:80")]
    done = routed.sync()
    assert done.returncode == 0, done.stderr
    for container, says in zip(bad, ["host='bad host.example.com', which is not host names",
                                     "path=api, which is not a path prefix starting with '/'",
                                     "label haproxy-docker-config.wieght, which the tool does not know",
                                     "weight=999, which is not a weight in 0..256",
                                     "host='x.example.com\\n    server evil 1.2.3.4:80', which is not host names"]):
        lines = [ln for ln in done.stderr.splitlines() if f"container {container.name} " in ln]
        assert len(lines) == 1 and says in lines[0] and lines[0].endswith("; skipped"), done.stderr
    served_by(routed, f"g{tag}.example.com", {good.short_id})
    text = routed.path.read_text()
    unreachable = routed.app(publish=False, host=f"np{tag}.example.com")  # haproxy cannot reach it: no route
    done = routed.sync()
    assert done.returncode == 0 and done.stdout == "", done.stdout + done.stderr
    assert f"warning: container {unreachable.name} publishes no tcp port; run it with -p HOSTPORT:PORT (or label it " \
           f"haproxy-docker-config.port=PORT); skipped" in done.stderr, done.stderr
    assert routed.get(f"np{tag}.example.com")[1] == "no route" and routed.path.read_text() == text
    assert "evil" not in text and "evil" not in routed.map.read_text()
    assert not any(c.short_id in text for c in bad)


def test_a_host_added_and_removed_live_no_reload_and_no_failed_request_for_the_others(routed: Routed,
                                                                                      watcher) -> None:
    tag = secrets.token_hex(2)
    steady = routed.app(host=f"steady{tag}.example.com", listen="shop")
    w = routed.watch(watcher, "-v")
    served_by(routed, f"steady{tag}.example.com", {steady.short_id})
    pid, failed, sent, stop = routed.pid(), [], [0], threading.Event()

    def client() -> None:
        while not stop.is_set():
            sent[0] += 1
            try:
                status, body, _ = routed.get(f"steady{tag}.example.com")
                if status != 200 or body not in {c.short_id for c in routed.apps}:  # shop's: steady, added
                    failed.append((status, body))
            except OSError as exc:
                failed.append((round(time.time() - t0, 2), exc))

    threads = [threading.Thread(target=client) for _ in range(2)]
    t0 = time.time()
    for t in threads:
        t.start()
    try:
        added = routed.app(host=f"added{tag}.example.com", listen="shop")
        served_by(routed, f"added{tag}.example.com", {steady.short_id, added.short_id})
        added.stop(timeout=5)
        wait_until(lambda: f"added{tag}" not in routed.map.read_text(), 20, w.tail)
        wait_until(lambda: routed.get(f"added{tag}.example.com")[1] == "no route", 20, w.tail)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failed == [] and sent[0] > 50, (failed[:5], sent, w.tail())
    assert routed.pid() == pid, f"haproxy reloaded for a host added to an existing backend:\n{w.tail()}"
    live = ask_haproxy(routed.sock, f"show map {routed.map}")
    assert [ln.split()[1:] for ln in live.splitlines() if ln.strip()] == \
        [ln.split() for ln in routed.map.read_text().splitlines()[1:]]  # the map on disk is what is live
    assert w.stop() == 0


def test_status_shows_the_routes_and_a_route_haproxy_lacks_as_drift(routed: Routed) -> None:
    tag = secrets.token_hex(2)
    routed.app(host=f"s{tag}.example.com", listen="shop")
    assert routed.sync().returncode == 0
    status = run_cli("-f", str(routed.path), "--docker-url", routed.url, "--status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert re.search(rf"^s{tag}\.example\.com/ +shop +yes +yes +-$", status.stdout, re.M), status.stdout
    ask_haproxy(routed.sock, f"del map {routed.map} s{tag}.example.com/")
    drift = run_cli("-f", str(routed.path), "--docker-url", routed.url, "--status", "--json")
    assert drift.returncode == 1
    assert json.loads(drift.stdout)["routes"] == [{"key": f"s{tag}.example.com/", "backend": "shop", "in_map": True,
                                                   "in_haproxy": False, "drift": ["not_in_haproxy"]}]


def test_dry_run_with_diff_shows_the_route_changes_and_writes_nothing(routed: Routed) -> None:
    tag = secrets.token_hex(2)
    routed.app(host=f"d{tag}.example.com", listen="shop")
    done = routed.sync("--dry-run", "--diff")
    assert done.returncode == 0, done.stderr
    assert f"+d{tag}.example.com/ shop" in done.stdout and "+    use_backend %[var(txn.hdc_host)" in done.stdout
    assert routed.path.read_text() == routed.original and not routed.map.exists()


def test_a_weight_or_maxconn_label_change_is_applied_live_and_backup_asks_for_a_reload(tmp_path, haproxy) -> None:
    from conftest import Cfg
    cfg = Cfg(tmp_path / "w.cfg", free_port(), tmp_path / "w.pid", tmp_path / "w.sock")
    cfg.path.write_text(f"global\n    stats socket {cfg.sock} mode 600 level admin\ndefaults\n    mode http\n"
                        f"    timeout connect 1s\n    timeout client 5s\n    timeout server 5s\n"
                        f"backend b\n    server s1 127.0.0.1:9 weight 3\n"
                        f"frontend f\n    bind 127.0.0.1:{cfg.port}\n    default_backend b\n")
    haproxy(cfg)
    runtime = hdc.Runtime(str(cfg.sock))
    hdc.apply_live(runtime, "b", hdc.live_changes({"s1": "s1 127.0.0.1:9 weight 3"},
                                                  {"s1": "s1 127.0.0.1:9 weight 7 maxconn 12"}), 1.0)
    row = hdc.stat_rows(ask_haproxy(cfg.sock, "show stat b 4 -1"))["s1"]
    assert (row["weight"], row["slim"]) == ("7", "12")
    with pytest.raises(hdc.HaproxyError, match="became or stopped being a backup"):
        hdc.apply_live(runtime, "b", hdc.live_changes({"s1": "s1 127.0.0.1:9 weight 7"},
                                                      {"s1": "s1 127.0.0.1:9 weight 7 backup"}), 1.0)


def test_watch_makes_the_backend_of_a_host_only_app_and_removes_it_when_the_app_stops(routed: Routed, watcher) -> None:
    tag = secrets.token_hex(2)
    w = routed.watch(watcher)
    wait_until(lambda: "hdc_host" in routed.path.read_text(), 20, w.tail)  # its first pass wrote the lines
    app = routed.app(host=f"only{tag}.example.com")  # no listen label: the backend is named after the host
    served_by(routed, f"only{tag}.example.com", {app.short_id})
    assert f"backend only{tag}.example.com\n    #DOCKERCREATED" in routed.path.read_text()
    app.stop(timeout=5)
    wait_until(lambda: f"backend only{tag}" not in routed.path.read_text(), 20, w.tail)
    wait_until(lambda: routed.get(f"only{tag}.example.com")[1] == "no route", 20, w.tail)
    assert MANAGED.sub("", routed.path.read_text()) == routed.original
    assert w.stop() == 0
    said = [ln for ln in w.text().splitlines() if ln.startswith("warning") and f"only{tag}" in ln]
    assert said == [], w.tail()  # nothing to say of a route's backend before its app runs, or after


def test_watch_puts_back_a_route_removed_from_haproxy_by_hand(routed: Routed, watcher) -> None:
    tag = secrets.token_hex(2)
    first = routed.app(host=f"kept{tag}.example.com", listen="shop")
    w = routed.watch(watcher, "-v")
    served_by(routed, f"kept{tag}.example.com", {first.short_id})
    ask_haproxy(routed.sock, f"del map {routed.map} kept{tag}.example.com/")
    assert routed.get(f"kept{tag}.example.com")[1] == "no route"
    routed.app(listen="shop")  # a server more, no route more: the pass after it compares the maps
    wait_until(lambda: routed.get(f"kept{tag}.example.com")[0] == 200, 20, w.tail)
    assert f"haproxy's routes differ from {routed.map}; replacing them" in w.text()
    live = ask_haproxy(routed.sock, f"show map {routed.map}")
    assert [ln.split()[1:] for ln in live.splitlines() if ln.strip()] == \
        [ln.split() for ln in routed.map.read_text().splitlines()[1:]]
    assert w.stop() == 0


def test_check_verify_and_show_of_a_routes_backend_carry_its_routes_in_json(routed: Routed) -> None:
    tag = secrets.token_hex(2)
    app = routed.app(host=f"c{tag}.example.com", path="/app", listen="shop")
    assert routed.sync().returncode == 0
    want = [{"host": f"c{tag}.example.com", "path": "/app", "backend": "shop", "key": f"c{tag}.example.com/app"}]
    for action in (["--check"], ["--check", app.short_id], ["--verify"], ["-s"]):
        done = run_cli("-f", str(routed.path), "--docker-url", routed.url, "-l", "shop", *action, "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["routes"] == want, action
    plain = run_cli("-f", str(routed.path), "--docker-url", routed.url, "-l", "shop", "-s")
    assert plain.stdout.splitlines() == [ln.strip()[len("server "):] for ln in routed.path.read_text().splitlines()
                                         if ln.strip().startswith("server ") and app.short_id in ln]  # as ever
