"""The lens on the configs Debian's haproxy package ships (/etc/haproxy and its examples): byte for
byte, and an added server is the only new line. Needs the haproxy package, not Docker."""

from __future__ import annotations

import glob

import pytest
from test_lens import SEED

import haproxy_docker_config as hdc

#: No Docker needed (tests/conftest.py).
DOCKER = False
EXAMPLES = "/usr/share/doc/haproxy/examples/*.cfg"
PACKAGED = sorted(["/etc/haproxy/haproxy.cfg", *glob.glob(EXAMPLES)])


def test_the_packaged_configs_are_there() -> None:
    """A glob that matches nothing would quietly test nothing (it once named /usr/share/listener/...)."""
    assert len(PACKAGED) >= 5, f"{EXAMPLES} matches {PACKAGED[1:]}; is Debian's haproxy package installed?"


def _read(path: str) -> str:
    with open(path, "rb") as handle:
        return handle.read().decode("latin-1")


@pytest.mark.parametrize("path", PACKAGED)
def test_packaged_configs_round_trip_byte_for_byte(path: str) -> None:
    text = _read(path)
    assert hdc.ConfigDoc(text, path).text() == text


@pytest.mark.parametrize("path", PACKAGED)
def test_adding_to_a_packaged_config_changes_only_the_new_line(path: str) -> None:
    text = _read(path) + SEED.split("\n", 3)[3]
    listener = hdc.Listener(text, "dockerha-app1", path)
    listener.put_server("abc 127.0.0.1:1 check", listener.template()[2])
    assert listener.text() == text + "        server abc 127.0.0.1:1 check\n"
