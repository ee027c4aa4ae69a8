"""Pure helpers: id lists, templates, ports, matching and the output formats."""

from __future__ import annotations

import json

import pytest
import yaml

import haproxy_docker_config as hdc
from haproxy_docker_config import ContainerRef as Ref

#: No Docker needed (tests/conftest.py): these run wherever python-augeas installs.
DOCKER = False


@pytest.mark.parametrize("text, allow_ports, expected", [
    ("caee75cbf7b5", True, [Ref("caee75cbf7b5")]),
    ("a:8080,b , web_1.x-y:1", True, [Ref("a", 8080), Ref("b"), Ref("web_1.x-y", 1)]),
    ("a,b", False, [Ref("a"), Ref("b")]),
])
def test_id_lists_parse(text: str, allow_ports: bool, expected: list[Ref]) -> None:
    assert hdc.parse_id_list(text, allow_ports) == expected


@pytest.mark.parametrize("text, allow_ports, message", [
    ("", True, "empty container id in ''"),
    ("a,,b", True, "empty container id in 'a,,b'"),
    ("a,", True, "empty container id"),
    ("abc:notaport", True, "port 'notaport' in 'abc:notaport' is not a number"),
    ("abc:70000", True, "port 70000 in 'abc:70000' is out of range"),
    ("abc:0", True, "port 0 in 'abc:0' is out of range"),
    ("abc:", True, "port '' in 'abc:' is not a number"),
    ("a,b,a", True, "container a is given more than once"),
    ("a:80", False, "only --add takes ID:PORT"),
    ("-x", True, "'-x' is not a container id or name"),
])
def test_malformed_id_lists_are_usage_errors(text: str, allow_ports: bool, message: str) -> None:
    with pytest.raises(hdc.UsageError) as err:
        hdc.parse_id_list(text, allow_ports)
    assert message in str(err.value)
    assert err.value.status == hdc.EXIT_USAGE


VALUES = {"id": "caee75cbf7b5", "name": "web1", "ip": "127.0.0.1", "port": 49161}


@pytest.mark.parametrize("template, expected", [
    ("<%= id %> <%= ip %>:<%= port %> check inter 2000 rise 2 fall 5",
     "caee75cbf7b5 127.0.0.1:49161 check inter 2000 rise 2 fall 5"),
    ("$id ${ip}:$port check", "caee75cbf7b5 127.0.0.1:49161 check"),
    ("$name $ip:${port} weight 10 # $$ cost", "web1 127.0.0.1:49161 weight 10 # $ cost"),
    ("<%=name%> <%= ip%>:<%=port %>", "web1 127.0.0.1:49161"),
])
def test_templates_render(template: str, expected: str) -> None:
    assert hdc.render_template(template, VALUES) == expected


@pytest.mark.parametrize("template, message", [
    ("$id $host:$port", "uses unknown variable $host"),
    ("<%= id %> <%= address %>", "uses unknown variable $address"),
    ("$id $ip:$port $", "stray '$'"),
])
def test_bad_templates_are_config_errors(template: str, message: str) -> None:
    with pytest.raises(hdc.ConfigError, match=message.replace("$", r"\$")):
        hdc.render_template(template, VALUES)


@pytest.mark.parametrize("comment, template", [
    ("DOCKERSERVER   <%= id %> x", "<%= id %> x"),
    ("DOCKERSERVER", ""),
    ("DOCKERSERVERS x", None),
    ("server x", None),
])
def test_template_comment_detection(comment: str, template: str | None) -> None:
    assert hdc.template_of(comment) == template


ONE = {"8080/tcp": [{"HostIp": "0.0.0.0", "HostPort": "49161"}, {"HostIp": "::", "HostPort": "49161"}]}
TWO = {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "1000"}], "9090/tcp": [{"HostIp": "10.1.2.3", "HostPort": "2000"}],
       "53/udp": [{"HostIp": "", "HostPort": "53"}], "7000/tcp": None}


@pytest.mark.parametrize("ref, ports, expected", [
    (Ref("a"), ONE, ("192.0.2.7", 49161)),
    (Ref("a", 8080), ONE, ("192.0.2.7", 49161)),
    (Ref("a", 8080), TWO, ("127.0.0.1", 1000)),
    (Ref("a", 9090), TWO, ("10.1.2.3", 2000)),
    (Ref("a"), {"80/tcp": [{"HostIp": "::1", "HostPort": "5"}]}, ("::1", 5)),
])
def test_endpoint_is_the_published_binding(ref: Ref, ports: dict, expected: tuple) -> None:
    assert hdc.choose_endpoint(ref, ports, "192.0.2.7") == expected


@pytest.mark.parametrize("ref, ports, message", [
    (Ref("a"), TWO, "container a publishes several tcp ports (8080, 9090); give a:PORT"),
    (Ref("a"), None, "container a publishes no tcp port; run it with -p HOSTPORT:PORT"),
    (Ref("a"), {"53/udp": [{"HostIp": "", "HostPort": "53"}]}, "container a publishes no tcp port; run it with -p HOSTPORT:PORT"),
    (Ref("a", 7000), TWO, "container a does not publish tcp port 7000; it publishes 8080, 9090"),
])
def test_unusable_ports_are_docker_errors(ref: Ref, ports: dict | None, message: str) -> None:
    with pytest.raises(hdc.DockerError) as err:
        hdc.choose_endpoint(ref, ports, "127.0.0.1")
    assert str(err.value) == message


@pytest.mark.parametrize("url, expected", [
    (None, "127.0.0.1"),
    ("unix:///var/run/docker.sock", "127.0.0.1"),
    ("tcp://10.0.0.5:2375", "10.0.0.5"),
    ("ssh://ops@docker-host.example", "docker-host.example"),
])
def test_default_host_ip_follows_the_engine_url(url: str | None, expected: str, monkeypatch) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    assert hdc.default_host_ip(url) == expected


def test_default_host_ip_reads_docker_host(monkeypatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://172.17.0.1:2376")
    assert hdc.default_host_ip(None) == "172.17.0.1"


def _attrs(running: bool = True, paused: bool = False) -> dict:
    return {"Id": "caee75cbf7b5" + "0" * 52, "Name": "/web1",
            "State": {"Running": running, "Paused": paused, "Status": "running" if running else "exited"},
            "NetworkSettings": {"Ports": ONE}}


def _values(attrs: dict | None, addressing: hdc.Addressing = hdc.Addressing(), ref: Ref = Ref("web1")) -> dict:
    backend = hdc.running_container(ref, attrs, "127.0.0.1")
    return hdc.template_values(backend, addressing.endpoint(backend, ref.port))


def test_container_values_feed_the_template() -> None:
    assert _values(_attrs()) == VALUES


@pytest.mark.parametrize("attrs, message", [
    (None, "no such container web1; check the id with docker ps"),
    (_attrs(running=False), "container web1 is not running (exited); start it first"),
    (_attrs(paused=True), "container web1 is not running (paused); start it first"),
])
def test_unusable_containers_are_docker_errors(attrs: dict | None, message: str) -> None:
    with pytest.raises(hdc.DockerError) as err:
        _values(attrs)
    assert str(err.value) == message


@pytest.mark.parametrize("name, backed", [
    ("caee75cbf7b5", True), ("caee75cbf7b5" + "0" * 52, True), ("caee75cbf7b500", True),
    ("web1", True), ("caee75", False), ("web", False), ("f2cc6e975169", False),
])
def test_server_names_backed_by_running_containers(name: str, backed: bool) -> None:
    running = [hdc.container_from_list({"Id": "caee75cbf7b5" + "0" * 52, "Names": ["/web1"]}, "127.0.0.1")]
    assert hdc.is_backed(name, running) is backed


def _report(action: str, results: list, **kw) -> hdc.Report:
    return hdc.Report("dockerha-app1", action, [hdc.Result(*r) for r in results], **kw)


def test_plain_output_matches_the_seed_examples() -> None:
    add = _report("add", [("caee75cbf7b5", "balanced", "caee75cbf7b5", "127.0.0.1", 49161),
                          ("597215a9450b", "balanced", "597215a9450b", "127.0.0.1", 49160)])
    assert hdc.render_plain(add, False) == (
        "caee75cbf7b5        \tbalanced\t127.0.0.1:49161\n597215a9450b        \tbalanced\t127.0.0.1:49160\n")
    check = _report("check", [("f2cc6e975169", "not_balanced")])
    assert hdc.render_plain(check, False) == "f2cc6e975169        \tnot_balanced\n"
    verify = _report("verify", [("caee75cbf7b5", "found"), ("597215a9450b", "not_found")])
    assert hdc.render_plain(verify, False) == "caee75cbf7b5        \tfound\n597215a9450b        \tnot_found\n"
    delete = _report("delete", [("a32198606724", "deleted")],
                     servers=["caee75cbf7b5 127.0.0.1:49161 check inter 2000 rise 2 fall 5"])
    assert hdc.render_plain(delete, False) == "caee75cbf7b5 127.0.0.1:49161 check inter 2000 rise 2 fall 5\n"
    assert hdc.render_plain(delete, True).startswith("a32198606724        \tdeleted\n")


@pytest.mark.parametrize("action, statuses, code", [
    ("check", ["balanced", "balanced"], 0), ("check", ["balanced", "not_balanced"], 1),
    ("verify", ["found"], 0), ("verify", ["not_found", "found"], 1), ("delete", ["not_balanced"], 0),
])
def test_exit_status_comes_from_the_results(action: str, statuses: list, code: int) -> None:
    assert _report(action, [("x", s) for s in statuses]).status == code


def test_json_and_yaml_carry_the_same_typed_document() -> None:
    report = _report("add", [("web1", "balanced", "caee75cbf7b5", "127.0.0.1", 49161)], changed=True,
                     servers=["caee75cbf7b5 127.0.0.1:49161 check inter 2000", "hand backend.local:80"])
    from_json = json.loads(hdc.render(report, "json", False))
    assert from_json == yaml.safe_load(hdc.render(report, "yaml", False))
    assert from_json["results"] == [{"id": "web1", "status": "balanced", "server": "caee75cbf7b5",
                                     "ip": "127.0.0.1", "port": 49161, "listener": None,
                                     "network": None}]
    assert from_json["servers"][0] == {"name": "caee75cbf7b5", "ip": "127.0.0.1", "port": 49161,
                                       "options": "check inter 2000",
                                       "line": "caee75cbf7b5 127.0.0.1:49161 check inter 2000"}
    assert from_json["servers"][1]["port"] == 80
    assert (from_json["changed"], from_json["restarted"], from_json["exit_status"]) == (True, False, 0)


def test_diff_is_labelled_before_and_after() -> None:
    diff = hdc.unified_diff("/etc/haproxy/haproxy.cfg", "a\nb\n", "a\nb\nc\n")
    assert diff.splitlines()[:2] == ["--- /etc/haproxy/haproxy.cfg (before)", "+++ /etc/haproxy/haproxy.cfg (after)"]
    assert "+c\n" in diff


# --- Reaching containers on a Docker network ------------------------------------------------------

NET_ID = "b091149da5b8607e552a8dd9fb67c2fd633d29f42e0b0859904918530cc5c14b"


def _on_net(networks: dict | None = None, exposed: tuple = ("8080/tcp",), labels: dict | None = None) -> dict:
    """An inspect of a running container on user-defined networks, publishing nothing."""
    networks = {"appnet": {"NetworkID": NET_ID, "IPAddress": "10.231.7.2", "GlobalIPv6Address": ""}} \
        if networks is None else networks
    return {"Id": "caee75cbf7b5" + "0" * 52, "Name": "/web1", "State": {"Running": True, "Status": "running"},
            "Config": {"ExposedPorts": {p: {} for p in exposed}, "Labels": labels or {}},
            "NetworkSettings": {"Ports": {p: None for p in exposed}, "Networks": networks}}


def _endpoint(attrs: dict, addressing: hdc.Addressing, ref: Ref = Ref("web1")) -> tuple:
    e = addressing.endpoint(hdc.running_container(ref, attrs, "127.0.0.1"), ref.port)
    return e.ip, e.port, e.network


BY_NAME = hdc.Addressing(network="appnet")


@pytest.mark.parametrize("attrs, addressing, ref, expected", [
    (_on_net(), BY_NAME, Ref("web1"), ("10.231.7.2", 8080, "appnet")),
    (_on_net(), hdc.Addressing(network=NET_ID[:12]), Ref("web1"), ("10.231.7.2", 8080, NET_ID[:12])),
    (_on_net({"v6net": {"NetworkID": "f" * 64, "IPAddress": "", "GlobalIPv6Address": "fd00::5"}}),
     hdc.Addressing(network="v6net"), Ref("web1"), ("fd00::5", 8080, "v6net")),
    (_on_net(exposed=("8080/tcp", "9090/tcp")), BY_NAME, Ref("web1", 9090), ("10.231.7.2", 9090, "appnet")),
    (_on_net(exposed=(), labels={"haproxy-docker-config.port": "7000"}), BY_NAME, Ref("web1"),
     ("10.231.7.2", 7000, "appnet")),
    (_on_net(labels={"haproxy-docker-config.port": "7000"}), BY_NAME, Ref("web1", 8081),
     ("10.231.7.2", 8081, "appnet")),  # ID:PORT before the label
    (_on_net(labels={"haproxy-docker-config.network": "appnet"}), hdc.Addressing(network="other"), Ref("web1"),
     ("10.231.7.2", 8080, "appnet")),  # the container's label wins
    (_on_net(), hdc.Addressing(shared_with=frozenset({"appnet", "dbnet"}), haproxy="lb"), Ref("web1"),
     ("10.231.7.2", 8080, "appnet")),
])
def test_network_addressing_gives_the_container_address_and_private_port(attrs, addressing, ref, expected) -> None:
    assert _endpoint(attrs, addressing, ref) == expected


def test_no_shared_network_keeps_the_published_port_path() -> None:
    attrs = {**_attrs(), "Config": {}}
    attrs["NetworkSettings"] = {"Ports": ONE, "Networks": {"bridge": {"NetworkID": "a" * 64, "IPAddress": "172.17.0.5"}}}
    addressing = hdc.Addressing(shared_with=frozenset({"appnet"}), haproxy="lb")
    assert _endpoint(attrs, addressing) == ("127.0.0.1", 49161, None)


TWO_NETS = {"appnet": {"NetworkID": NET_ID, "IPAddress": "10.231.7.2"}, "dbnet": {"NetworkID": "d" * 64, "IPAddress": "10.9.0.2"}}


@pytest.mark.parametrize("attrs, addressing, message", [
    (_on_net(exposed=("8080/tcp", "9090/tcp")), BY_NAME,
     "container web1 exposes several tcp ports (8080, 9090); give web1:PORT"),
    (_on_net(exposed=()), BY_NAME,
     "container web1 exposes no tcp port; give web1:PORT or the label haproxy-docker-config.port=PORT"),
    (_on_net(TWO_NETS), hdc.Addressing(network="frontnet"),
     "container web1 is not attached to network frontnet (it is on appnet, dbnet); connect it or give another --network"),
    (_on_net(TWO_NETS), hdc.Addressing(shared_with=frozenset({"appnet", "dbnet"}), haproxy="lb"),
     "container web1 shares several networks with haproxy's container lb (appnet, dbnet); give --network NAME"),
    (_on_net(labels={"haproxy-docker-config.port": "80\nserver x"}), BY_NAME,
     "container web1 has label haproxy-docker-config.port='80\\nserver x', which is not a port in 1..65535; "
     "fix the label or give web1:PORT"),
    (_on_net(), hdc.Addressing(network="web\nserver x"),
     "container web1 is not attached to network 'web\\nserver x' (it is on appnet); connect it or give another --network"),
])
def test_network_addressing_errors_say_what_to_do(attrs, addressing, message) -> None:
    with pytest.raises(hdc.DockerError) as err:
        _endpoint(attrs, addressing)
    assert str(err.value) == message and "\n" not in str(err.value)


@pytest.mark.parametrize("status, health", [
    ("Up 3 minutes", None), ("Up 3 minutes (healthy)", "healthy"), ("Up 1 second (health: starting)", "starting"),
    ("Up 3 minutes (unhealthy)", "unhealthy"),
])
def test_the_container_list_gives_the_same_backend_as_inspect(status: str, health: str | None) -> None:
    entry = {"Id": "caee75cbf7b5" + "0" * 52, "Names": ["/web1"], "State": "running", "Status": status,
             "Labels": {}, "Ports": [{"PrivatePort": 8080, "Type": "tcp"}, {"PrivatePort": 53, "Type": "udp"}],
             "NetworkSettings": {"Networks": {"appnet": {"NetworkID": NET_ID, "IPAddress": "10.231.7.2"}}}}
    listed = hdc.container_from_list(entry, "127.0.0.1")
    inspected = hdc.running_container(Ref("web1"), _on_net(), "127.0.0.1")
    assert listed.health == health and listed.exposed == inspected.exposed == (8080,)
    assert BY_NAME.endpoint(listed, None) == BY_NAME.endpoint(inspected, None)


@pytest.mark.parametrize("text, shown", [("web", "web"), ("/etc/haproxy.cfg", "/etc/haproxy.cfg"),
                                         ("web\nserver x", "'web\\nserver x'"), ("a b", "'a b'"), ("", "''")])
def test_user_input_in_messages_is_quoted_unless_plain(text: str, shown: str) -> None:
    assert hdc.quoted(text) == shown


@pytest.mark.parametrize("said, text, branch", [
    ("Name: HAProxy\nVersion: 2.2.9-2+deb11u7\nRelease_date: 2025/04/23\n", "2.2.9-2+deb11u7", (2, 2)),  # show info
    ("HA-Proxy version 2.2.9-2+deb11u7 2025/04/23 - https://haproxy.org/\n", "2.2.9-2+deb11u7", (2, 2)),  # -v, 2.2
    ("HAProxy version 3.0.11-1+deb13u5 2026/11/18 - https://haproxy.org/\nStatus: long-term supported branch",
     "3.0.11-1+deb13u5", (3, 0)),
    ("HAProxy version 2.8.25-5cf5d0683 2026/06/26 - https://haproxy.org/\n", "2.8.25-5cf5d0683", (2, 8)),  # wheel
    ("Version: 3.2.26-1\n", "3.2.26-1", (3, 2)),
    ("Version: 3.2-dev5-1a2b3c\n", "3.2-dev5-1a2b3c", (3, 2)),
    ("Version: 2.10.1\n", "2.10.1", (2, 10)),
])
def test_haproxy_versions_parse(said: str, text: str, branch: tuple[int, int]) -> None:
    assert hdc.parse_haproxy_version(said) == hdc.HaproxyVersion(text, branch)


@pytest.mark.parametrize("said", ["", "Unknown command. Please enter one of the following commands only :\n",
                                  "Name: HAProxy\nVersion:\n"])
def test_no_version_is_none(said: str) -> None:
    assert hdc.parse_haproxy_version(said) is None


@pytest.mark.parametrize("branch, why_not", [
    ((1, 8), "haproxy 1.8 has no dynamic servers"),
    ((2, 2), "haproxy 2.2 has no dynamic servers"),
    ((2, 4), "haproxy 2.4 has dynamic servers only in experimental mode"),
    ((2, 5), None), ((2, 6), None), ((2, 8), None), ((2, 10), None), ((3, 0), None), ((3, 2), None),
])
def test_which_versions_take_servers_live(branch: tuple[int, int], why_not: str | None) -> None:
    assert hdc.HaproxyVersion("x", branch).without_dynamic_servers() == why_not


#: What the masters of hdc-haproxy:2.2, :2.6, :3.0 and :3.2 logged after SIGUSR2 (tests/test_versions.py).
RELOAD_LOGS_2_2_OK = ("[WARNING] 332/182745 (1) : Reexecuting Master process\n"
                      "[NOTICE] 332/182745 (1) : New worker #1 (11) forked\n"
                      "[WARNING] 332/182746 (8) : Stopping frontend GLOBAL in 0 ms.\n")
RELOAD_LOGS_2_2_FAILED = ("[WARNING] 332/182747 (1) : Reexecuting Master process\n"
                          "[ALERT] 332/182747 (1) : Fatal errors found in configuration.\n"
                          "[WARNING] 332/182747 (1) : Reexecuting Master process in waitpid mode\n"
                          "[WARNING] 332/182747 (1) : Reexecuting Master process\n")
RELOAD_LOGS_2_6_OK = ("[NOTICE]   (1) : Reloading HAProxy\n[NOTICE]   (1) : New worker (13) forked\n"
                      "[NOTICE]   (1) : Loading success.\n"
                      "[WARNING]  (1) : Former worker (9) exited with code 0 (Exit)\n")
RELOAD_LOGS_3_0_FAILED = ("[NOTICE]   (1) : Reloading HAProxy\n"
                          "[ALERT]    (1) : config : Fatal errors found in configuration.\n"
                          "[WARNING]  (1) : Loading failure!\n")
RELOAD_LOGS_3_2_OK = ("[NOTICE]   (1) : Reloading HAProxy\n[NOTICE]   (1) : Initializing new worker (15)\n"
                      "[NOTICE]   (1) : Loading success.\n"
                      "[WARNING]  (8) : Proxy web stopped (cumulated conns: FE: 0, BE: 0).\n")
RELOAD_LOGS_3_2_FAILED = ("[NOTICE]   (1) : Reloading HAProxy\n[NOTICE]   (1) : Initializing new worker (11)\n"
                          "[WARNING]  (8) : Paused proxy web.\n"
                          "[ALERT]    (11) : Binding [/usr/local/etc/haproxy/haproxy.cfg:10] for proxy web: protocol "
                          "tcpv4: cannot bind socket (Cannot assign requested address) for [192.0.2.1:80].\n"
                          "[WARNING]  (8) : Resumed proxy web.\n"
                          "[WARNING]  (1) : Failed to load worker (11) exited with code 1 (Exit)\n")


@pytest.mark.parametrize("logs, outcome", [
    (RELOAD_LOGS_2_2_OK, (True, "[NOTICE] 332/182745 (1) : New worker #1 (11) forked")),
    (RELOAD_LOGS_2_2_FAILED, (False, "[WARNING] 332/182747 (1) : Reexecuting Master process in waitpid mode")),
    (RELOAD_LOGS_2_6_OK, (True, "[NOTICE]   (1) : Loading success.")),
    (RELOAD_LOGS_3_0_FAILED, (False, "[WARNING]  (1) : Loading failure!")),
    (RELOAD_LOGS_3_2_OK, (True, "[NOTICE]   (1) : Loading success.")),
    (RELOAD_LOGS_3_2_FAILED, (False, "[WARNING]  (1) : Failed to load worker (11) exited with code 1 (Exit)")),
    ("[NOTICE]   (1) : Reloading HAProxy\n[NOTICE]   (1) : Initializing new worker (11)\n", (None, "")),  # 3.2
    ("[WARNING] 332/182745 (1) : Reexecuting Master process\n", (None, "")),  # 2.2, still loading
    ("[NOTICE]   (1) : Reloading HAProxy\n[NOTICE]   (1) : New worker (13) forked\n", (None, "")),  # 2.6: not yet
    ("", (None, "")),
])
def test_a_reload_is_recognised_in_each_versions_log(logs: str, outcome: tuple) -> None:
    assert hdc.reload_outcome(logs) == outcome
