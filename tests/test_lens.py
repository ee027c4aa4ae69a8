"""The lens and the tree edits: pure text in, text out, no Docker or haproxy."""

from __future__ import annotations

import glob

import pytest

import haproxy_docker_config as hdc

PACKAGED = sorted(["/etc/haproxy/haproxy.cfg", *glob.glob("/usr/share/doc/haproxy/examples/*.cfg")])

SEED = """global
    daemon

listen  dockerha-app1
        bind 127.0.0.1:8380
        balance         roundrobin
        #DOCKERSERVER   <%= id %> <%= ip %>:<%= port %> check inter 2000 rise 2 fall 5
"""

ODD = [
    "",
    "# only a comment\n",
    "global\n",
    "global\n    daemon",  # no final newline
    "global\r\n\tdaemon\r\n\r\ndefaults\r\n\tmode http\r\n",  # CRLF
    "global   \n  \t \n#\n   #   \n\tlog /dev/log local0 # trailing comment  \n",
    "defaults base\n  mode http\ndefaults tcp from base\n  mode tcp\n",
    "frontend fe\n  no option httplog\n  acl a path_beg /x\n  use_backend be if { path_beg /y }\n",
    "  listen indented\n\tbind :80\n",
    "userlist u\n  user admin password $5$salt$hash\n",
    "global\n  # caf\xe9 latin-1 or utf-8 \xc3\xa9 bytes round-trip\n",
    "resolvers dns\n  nameserver ns1 127.0.0.1:53\npeers p\n  peer a 127.0.0.1:1024\n"
    "cache c\n  total-max-size 4\nprogram p\n  command /bin/true\nring r\n  size 32764\n"
    "mailers m\n  mailer smtp1 127.0.0.1:25\nhttp-errors e\n  errorfile 503 /dev/null\n",
]


def _read(path: str) -> str:
    with open(path, "rb") as handle:
        return handle.read().decode("latin-1")


@pytest.mark.parametrize("path", PACKAGED)
def test_packaged_configs_round_trip_byte_for_byte(path: str) -> None:
    text = _read(path)
    assert hdc.ConfigDoc(text, path).text() == text


@pytest.mark.parametrize("text", ODD)
def test_odd_layouts_round_trip_byte_for_byte(text: str) -> None:
    assert hdc.ConfigDoc(text, "odd.cfg").text() == text


@pytest.mark.parametrize("path", PACKAGED)
def test_adding_to_a_packaged_config_changes_only_the_new_line(path: str) -> None:
    text = _read(path) + SEED.split("\n", 3)[3]
    doc = hdc.ConfigDoc(text, path)
    section = doc.listener("dockerha-app1")
    doc.put_server(section, "abc 127.0.0.1:1 check", doc.template(section)[2])
    assert doc.text() == text + "        server abc 127.0.0.1:1 check\n"


def test_parse_failure_names_file_and_line() -> None:
    with pytest.raises(hdc.ConfigError) as err:
        hdc.ConfigDoc("global\n  daemon\n  /bad/line here\n", "/etc/x.cfg")
    assert str(err.value).startswith("/etc/x.cfg:3: cannot parse '/bad/line here'")
    assert err.value.status == hdc.EXIT_CONFIG


@pytest.mark.parametrize("kind", ["listen", "backend"])
def test_listener_is_matched_by_exact_name(kind: str) -> None:
    doc = hdc.ConfigDoc(f"{kind} dockerha-app10\n  #DOCKERSERVER $id\n{kind} dockerha-app1\n  #DOCKERSERVER $id\n", "c")
    assert doc.listener("dockerha-app1").endswith(f"{kind}[2]")
    with pytest.raises(hdc.ConfigError, match="no listen or backend section named dockerha-app"):
        doc.listener("dockerha-app")


def test_a_frontend_is_not_a_listener() -> None:
    doc = hdc.ConfigDoc("frontend web\n  bind :80\n", "c")
    with pytest.raises(hdc.ConfigError, match="web is a frontend section"):
        doc.listener("web")


@pytest.mark.parametrize("body, message", [
    ("  bind :80\n", "has no #DOCKERSERVER template line"),
    ("  #DOCKERSERVER $id\n  #DOCKERSERVER $name\n", "has 2 #DOCKERSERVER template lines"),
    ("  #DOCKERSERVER\n", "template of listener app is empty"),
])
def test_template_problems_are_config_errors(body: str, message: str) -> None:
    doc = hdc.ConfigDoc("listen app\n" + body, "c")
    with pytest.raises(hdc.ConfigError, match=message):
        doc.template(doc.listener("app"))


def test_template_is_found_with_or_without_space_after_hash() -> None:
    doc = hdc.ConfigDoc("listen app\n\t#   DOCKERSERVER $id ${ip}:$port\n  # DOCKERSERVERS is not it\n", "c")
    _, template, indent = doc.template(doc.listener("app"))
    assert (template, indent) == ("$id ${ip}:$port", "\t")


def test_new_servers_go_after_the_last_server_and_take_the_template_indent() -> None:
    text = "listen app\n\t#DOCKERSERVER $id\n  server hand 10.0.0.1:80\n  option httpchk\nbackend other\n"
    doc = hdc.ConfigDoc(text, "c")
    section = doc.listener("app")
    doc.put_server(section, "new1 127.0.0.1:2", "\t")
    doc.put_server(section, "new2 127.0.0.1:3", "\t")
    assert doc.text() == ("listen app\n\t#DOCKERSERVER $id\n  server hand 10.0.0.1:80\n"
                          "\tserver new1 127.0.0.1:2\n\tserver new2 127.0.0.1:3\n  option httpchk\nbackend other\n")


def test_first_server_goes_right_after_the_template() -> None:
    doc = hdc.ConfigDoc("listen app\n    #DOCKERSERVER $id\n    balance roundrobin\n", "c")
    section = doc.listener("app")
    doc.put_server(section, "a 1.2.3.4:5", "    ")
    assert doc.text() == "listen app\n    #DOCKERSERVER $id\n    server a 1.2.3.4:5\n    balance roundrobin\n"


def test_putting_a_known_server_rewrites_its_line_in_place() -> None:
    text = "listen app\n  #DOCKERSERVER $id\n  server a 1.2.3.4:5 check\n  server b 1.2.3.4:6 check\n"
    doc = hdc.ConfigDoc(text, "c")
    section = doc.listener("app")
    doc.put_server(section, "a 1.2.3.4:7 check", "  ")
    assert doc.text() == text.replace(":5", ":7")
    doc.put_server(section, "a 1.2.3.4:7 check", "  ")
    assert doc.text().count("server a ") == 1


def test_removing_servers_keeps_everything_else() -> None:
    text = "listen app\n  #DOCKERSERVER $id\n  server a 1:5\n  server b 1:6\n  server ab 1:7\nlisten x\n  server a 1:5\n"
    doc = hdc.ConfigDoc(text, "c")
    assert doc.remove_servers(doc.listener("app"), {"a", "b"}) == ["a", "b"]
    assert doc.text() == "listen app\n  #DOCKERSERVER $id\n  server ab 1:7\nlisten x\n  server a 1:5\n"


def test_new_lines_in_a_crlf_file_use_crlf() -> None:
    doc = hdc.ConfigDoc("listen app\r\n  #DOCKERSERVER $id\r\n", "c")
    doc.put_server(doc.listener("app"), "a 1:5", "  ")
    assert doc.text() == "listen app\r\n  #DOCKERSERVER $id\r\n  server a 1:5\r\n"


@pytest.mark.parametrize("eol", ["\n", "\r\n"])
def test_a_file_without_final_newline_keeps_that_style(eol: str) -> None:
    doc = hdc.ConfigDoc(f"listen app{eol}  #DOCKERSERVER $id", "c")
    section = doc.listener("app")
    doc.put_server(section, "a 1:5", "  ")
    assert doc.text() == f"listen app{eol}  #DOCKERSERVER $id{eol}  server a 1:5"
    doc.remove_servers(section, {"a"})
    assert doc.text() == f"listen app{eol}  #DOCKERSERVER $id"
