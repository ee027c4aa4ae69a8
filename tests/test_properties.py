"""Hypothesis: over generated configs, edits touch only what they must and track a model."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

import haproxy_docker_config as hdc

#: No Docker needed (tests/conftest.py): these run wherever python-augeas installs.
DOCKER = False

SECTIONS = ["global", "defaults", "frontend", "backend", "listen", "peers", "resolvers", "userlist",
            "cache", "program", "mailers", "ring", "http-errors", "log-forward"]
SECTION_RE = re.compile("|".join(SECTIONS + ["fcgi-app", "crt-store", "traces", "acme"]))
KEYWORDS = ["mode", "option", "timeout", "bind", "server", "acl", "http-request", "no", "log", "balance",
            "default-server", "stats", "maxconn", "use_backend", "errorfile", "tune.ssl.default-dh-param"]

spaces = st.text(alphabet=" \t", min_size=1, max_size=3)
value = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126) | st.sampled_from("\t\xe9"),
                min_size=1, max_size=30).map(str.strip).filter(bool)
keyword = st.sampled_from(KEYWORDS) | st.from_regex(r"[a-z][a-z0-9._-]{0,10}", fullmatch=True).filter(
    lambda k: not SECTION_RE.fullmatch(k))
trailing = st.sampled_from(["", " ", "\t", "  \t"])


@st.composite
def body_line(draw) -> str:
    indent = draw(st.sampled_from(["", "    ", "\t", "  \t"]))
    kind = draw(st.sampled_from(["kw", "kw", "kw", "comment", "blank"]))
    if kind == "blank":
        return draw(st.sampled_from(["", "  ", "\t", "#", "  #  "]))
    if kind == "comment":
        return indent + "#" + draw(st.sampled_from(["", " ", "\t"])) + draw(value) + draw(trailing)
    rest = draw(st.none() | value)
    return indent + draw(keyword) + ("" if rest is None else draw(spaces) + rest) + draw(trailing)


@st.composite
def config(draw) -> str:
    """A config text holding `listen target` with a template, among random sections."""
    lines = draw(st.lists(body_line(), max_size=3))
    sections = draw(st.lists(st.tuples(st.sampled_from(SECTIONS), st.from_regex(r"[a-z][a-z0-9-]{0,6}", fullmatch=True),
                                       st.lists(body_line(), max_size=5)), max_size=4))
    target_body = draw(st.lists(body_line(), max_size=4))
    position = draw(st.integers(0, len(target_body)))
    target_body.insert(position, draw(st.sampled_from(["    ", "\t", ""])) + "#DOCKERSERVER $id ${ip}:$port check")
    sections.insert(draw(st.integers(0, len(sections))), ("listen", "target", target_body))
    for kind, name, body in sections:
        lines.append(f"{kind} {name}" if kind not in ("global", "defaults") or draw(st.booleans()) else kind)
        lines.extend(body)
    eol = draw(st.sampled_from(["\n", "\r\n"]))
    return eol.join(lines) + draw(st.sampled_from([eol, ""]))


def _names(listener: hdc.Listener) -> list[str]:
    return [hdc.server_name(v) for _, v in listener.servers()]


@settings(max_examples=200, deadline=None)
@given(config())
def test_generated_configs_round_trip(text: str) -> None:
    assert hdc.ConfigDoc(text, "gen.cfg").text() == text


@settings(max_examples=200, deadline=None)
@given(config(), st.sampled_from(["zz-new", "0123456789ab"]))
def test_add_then_delete_gives_the_file_back_byte_identical(text: str, name: str) -> None:
    listener = hdc.Listener(text, "target", "gen.cfg")
    if name in _names(listener):
        return
    listener.put_server(f"{name} 127.0.0.1:1234 check", listener.template()[2])
    added = listener.text()
    assert added != text and f"server {name} 127.0.0.1:1234 check" in added
    assert hdc.ConfigDoc(added, "gen.cfg").text() == added
    assert listener.remove_servers({name}) == [name]
    assert listener.text() == text


@settings(max_examples=100, deadline=None)
@given(config(), st.lists(st.tuples(st.booleans(), st.sampled_from(["a", "b", "c", "d"]), st.integers(1, 65535)),
                          max_size=12))
def test_random_adds_and_deletes_track_a_model_set(text: str, ops: list) -> None:
    listener = hdc.Listener(text, "target", "gen.cfg")
    indent = listener.template()[2]
    model = set(_names(listener))
    for is_add, name, port in ops:
        if is_add:
            listener.put_server(f"{name} 127.0.0.1:{port}", indent)
            model.add(name)
        else:
            listener.remove_servers({name})
            model.discard(name)
        names = _names(hdc.Listener(listener.text(), "target", "gen.cfg"))
        assert set(names) == model
        assert all(names.count(n) == 1 for n in "abcd" if n in model)


@settings(max_examples=200, deadline=None)
@given(config())
def test_section_boundaries_agree_with_the_lens(text: str) -> None:
    """Only the listener's section goes through Augeas: the split must be the lens's own."""
    doc = hdc.ConfigDoc(text, "gen.cfg")
    lens_sections = [(p.rsplit("/", 1)[1].split("[")[0], hdc.server_name(doc.aug.get(p)))
                     for p in doc.aug.match("/cfg/*") if p.rsplit("/", 1)[1].split("[")[0] in hdc.SECTION_KEYWORDS]
    split_sections = [(m.group(1), m.group(2) or "") for m in hdc.SECTION_HEADER.finditer(text)]
    assert lens_sections == split_sections
