"""Hypothesis: over generated configs holding any byte but NUL, edits touch only what they must and track
a model; a line the lens cannot hold is one ConfigError naming file and line, never anything else."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import haproxy_docker_config as hdc

#: No Docker needed (tests/conftest.py): these run wherever python-augeas installs.
DOCKER = False

#: Every section keyword haproxy 2.2, 2.6 and 3.0 know: this test's own list, which
#: tests/test_versions.py checks against each haproxy (one config per keyword through `haproxy -c`).
HAPROXY_SECTIONS = ("global", "defaults", "frontend", "backend", "listen", "peers", "resolvers", "userlist",
                    "mailers", "cache", "program", "http-errors", "ring", "fcgi-app", "log-forward",
                    "namespace_list", "crt-store")
#: Newer haproxy versions' section keywords, which the tool knows too: no random keyword may be one.
LATER_SECTIONS = ("traces", "log-profile", "acme")
KEYWORDS = ["mode", "option", "timeout", "bind", "acl", "http-request", "no", "log", "balance",
            "default-server", "stats", "maxconn", "use_backend", "errorfile", "tune.ssl.default-dh-param"]
#: haproxy's word separators (C isspace) less CR and LF, which end lines here.
SPACE = " \t\v\f"
#: Every byte a line can hold: 1-255 but LF and CR (as read_config decodes a file: latin-1).
ANY_BYTE = [chr(b) for b in range(1, 256) if b not in (10, 13)]

spaces = st.text(alphabet=" \t", min_size=1, max_size=3)
value = st.text(alphabet=st.sampled_from(ANY_BYTE), min_size=1, max_size=30).map(lambda v: v.strip(" \t")).filter(bool)
#: A value that may hold a lone CR (one not followed by LF) inside it.
value_cr = st.one_of(value, st.tuples(value, value).map(lambda p: p[0] + "\r" + p[1]))
word = st.text(alphabet=st.sampled_from([c for c in ANY_BYTE if c not in SPACE]), min_size=1, max_size=10)
keyword = st.sampled_from(KEYWORDS) | word.filter(
    lambda k: k[0] != "#" and "/" not in k and k not in HAPROXY_SECTIONS + LATER_SECTIONS + ("server",))
#: A first word with a slash: the lens cannot make it a tree label, so the line is a parse error.
bad_keyword = st.tuples(word.filter(lambda k: k[0] != "#"), st.sampled_from(["/", "/x", "a/"])).map("".join)
trailing = st.sampled_from(["", " ", "\t", "  \t"])
indents = st.sampled_from(["", "    ", "\t", "  \t"])


@st.composite
def bad_line(draw) -> str:
    rest = draw(st.none() | value_cr)
    return draw(indents) + draw(bad_keyword) + ("" if rest is None else draw(spaces) + rest) + draw(trailing)


@st.composite
def body_line(draw) -> str:
    indent = draw(indents)
    kind = draw(st.sampled_from(["kw", "kw", "kw", "server", "comment", "blank"]))
    if kind == "blank":
        return draw(st.sampled_from(["", "  ", "\t", "#", "  #  "]))
    if kind == "comment":
        return indent + "#" + draw(st.sampled_from(["", " ", "\t"])) + draw(value_cr) + draw(trailing)
    if kind == "server":
        return indent + "server" + draw(spaces) + draw(server_value()) + draw(trailing)
    rest = draw(st.none() | value_cr)
    return indent + draw(keyword) + ("" if rest is None else draw(spaces) + rest) + draw(trailing)


@st.composite
def server_value(draw) -> str:
    """NAME ADDR:PORT [words]: any bytes in the name and the words."""
    name = draw(word.filter(lambda w: "DOCKERSERVER" not in w))
    rest = draw(st.lists(word, max_size=3))
    return " ".join([name, f"127.0.0.1:{draw(st.integers(1, 65535))}", *rest])


@st.composite
def config(draw, bad_lines: bool = False) -> tuple[str, int | None]:
    """(a config text holding `listen target` with a template among random sections, with indented
    headers, any bytes, CRLF or LF, final newline or not; the 1-based line of its first unparsable line
    in the listener, or None). With bad_lines, the listener may hold lines whose first word has a slash."""
    lines = draw(st.lists(body_line(), max_size=3))
    name = st.from_regex(r"[a-z][a-z0-9-]{0,6}", fullmatch=True)
    sections = draw(st.lists(st.tuples(st.sampled_from(HAPROXY_SECTIONS), name, st.lists(body_line(), max_size=5)),
                             max_size=4))
    target_body = draw(st.lists(body_line(), max_size=4))
    names = [hdc_free_name(ln) for ln in target_body]
    target_body = [ln for ln, n in zip(target_body, names) if n is None or names.count(n) == 1]  # unique names
    if bad_lines:
        target_body.insert(draw(st.integers(0, len(target_body))), draw(bad_line()))
    target_body.insert(draw(st.integers(0, len(target_body))),
                       draw(st.sampled_from(["    ", "\t", ""])) + "#DOCKERSERVER $id ${ip}:$port check")
    sections.insert(draw(st.integers(0, len(sections))), ("listen", "target", target_body))
    bad_at = None
    for kind, section_name, body in sections:
        header = f"{kind} {section_name}" if kind not in ("global", "defaults") or draw(st.booleans()) else kind
        lines.append(draw(st.sampled_from(["", "", " ", "\t"])) + header)  # indented headers too
        if kind == "listen" and section_name == "target":
            bad = [i for i, ln in enumerate(body) if _first_word_has_slash(ln)]
            bad_at = len(lines) + 1 + bad[0] if bad else None
        lines.extend(body)
    eol = draw(st.sampled_from(["\n", "\r\n"]))
    return eol.join(lines) + draw(st.sampled_from([eol, ""])), bad_at


def _first_word_has_slash(line: str) -> bool:
    stripped = line.lstrip(" \t")
    return bool(stripped) and not stripped.startswith("#") and "/" in re.split("[ \t]", stripped, maxsplit=1)[0]


def hdc_free_name(line: str) -> str | None:
    """The server name of a generated `server` line, split as haproxy splits words (not by the tool)."""
    words = [w for w in re.split("[ \t\v\f\r]+", line) if w]
    return words[1] if len(words) > 1 and words[0] == "server" else None


def model_of(text: str) -> dict[str, str]:
    """name -> full server line value of the listener `target`, read from the text by this test's own
    rules: the lines after `listen target` up to the next section header, `server` lines only."""
    model, inside = {}, False
    for line in re.split(r"\r?\n", text):
        words = [w for w in re.split("[ \t]+", line) if w]
        if words and words[0] in HAPROXY_SECTIONS + LATER_SECTIONS:
            inside = words[:2] == ["listen", "target"]
        elif inside and words and words[0] == "server":
            model[hdc_free_name(line)] = line.strip(" \t")[len("server"):].lstrip(" \t")
    return model


@settings(max_examples=200, deadline=None)
@given(config())
def test_generated_configs_round_trip(generated: tuple[str, int | None]) -> None:
    text, _ = generated
    assert hdc.ConfigDoc(text, "gen.cfg").text() == text


@settings(max_examples=100, deadline=None)
@given(config(bad_lines=True))
def test_a_line_the_lens_cannot_hold_is_one_config_error_naming_it(generated: tuple[str, int | None]) -> None:
    text, bad_at = generated
    assert bad_at is not None
    with pytest.raises(hdc.ConfigError) as err:
        hdc.Listener(text, "target", "gen.cfg")
    line = re.split(r"\r?\n", text)[bad_at - 1]
    assert str(err.value).startswith(f"gen.cfg:{bad_at}: cannot parse {line.strip()!r} (")
    assert err.value.status == hdc.EXIT_CONFIG and "\n" not in str(err.value)


@settings(max_examples=150, deadline=None)
@given(config(), st.sampled_from(["zz-new", "0123456789ab"]))
def test_add_then_delete_gives_the_file_back_byte_identical(generated: tuple[str, int | None], name: str) -> None:
    text, _ = generated
    listener = hdc.Listener(text, "target", "gen.cfg")
    assert name not in model_of(text)  # generated names are never these
    listener.put_server(f"{name} 127.0.0.1:1234 check", listener.template()[2])
    added = listener.text()
    assert model_of(added) == {**model_of(text), name: f"{name} 127.0.0.1:1234 check"}
    assert hdc.ConfigDoc(added, "gen.cfg").text() == added
    assert listener.remove_servers({name}) == [name]
    assert listener.text() == text


@settings(max_examples=80, deadline=None)
@given(config(), st.lists(st.tuples(st.booleans(), st.sampled_from(["a", "b", "c", "d"]), st.integers(1, 65535),
                                    st.sampled_from(["", " check", " check inter 2s weight 7"])), max_size=12))
def test_random_adds_and_deletes_track_a_model_of_full_lines(generated: tuple[str, int | None], ops: list) -> None:
    """The model holds each server's whole line: a rewrite that got the port or an option wrong fails."""
    text, _ = generated
    listener = hdc.Listener(text, "target", "gen.cfg")
    indent = listener.template()[2]
    model = model_of(text)
    for is_add, name, port, options in ops:
        line = f"{name} 127.0.0.1:{port}{options}"
        if is_add:
            listener.put_server(line, indent)
            model[name] = line
        else:
            assert listener.remove_servers({name}) == ([name] if name in model else [])
            model.pop(name, None)
        assert model_of(listener.text()) == model
        assert dict((hdc.server_name(v), v) for _, v in hdc.Listener(listener.text(), "target", "g").servers()) == model


@settings(max_examples=150, deadline=None)
@given(config())
def test_section_boundaries_agree_with_the_lens(generated: tuple[str, int | None]) -> None:
    """Only the listener's section goes through Augeas: the split must be the lens's own."""
    text, _ = generated
    doc = hdc.ConfigDoc(text, "gen.cfg")
    labels = [(p, p.rsplit("/", 1)[1].split("[")[0]) for p in doc.aug.match("/cfg/*")]
    lens_sections = [(label, hdc.server_name(doc._get(p))) for p, label in labels if label in hdc.SECTION_KEYWORDS]
    split_sections = [(kind, hdc.server_name(name)) for kind, name, _, _ in hdc.sections(text)]
    assert lens_sections == split_sections
    assert [kind for kind, _ in split_sections] == [kind for kind in _headers(text)]


def _headers(text: str) -> list[str]:
    """The section keywords that open a line of text, by this test's own list."""
    firsts = [re.split("[ \t]", line.lstrip(" \t"), maxsplit=1)[0] for line in re.split(r"\r?\n", text)]
    return [w for w in firsts if w in HAPROXY_SECTIONS + LATER_SECTIONS]
