"""Parsing worker URIs: every string either parses or is a ValueError that quotes it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ezpool._pyro import parse_uri

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_.", min_size=1, max_size=12).filter(
    lambda s: not s.startswith(".")
)
hosts = st.sampled_from(["localhost", "127.0.0.1", "example.org", "10.1.2.3", "node-7"])
ports = st.integers(1, 65535)


@settings(deadline=None)
@given(names, hosts, ports)
def test_a_well_formed_pyro_uri_parses_to_its_parts(name, host, port):
    uri = parse_uri(f"PYRO:{name}@{host}:{port}")
    assert (uri.protocol, uri.object, uri.host, uri.port) == ("PYRO", name, host, port)


@settings(deadline=None)
@given(names)
def test_a_pyroname_uri_parses(name):
    assert parse_uri(f"PYRONAME:{name}").protocol == "PYRONAME"


@settings(deadline=None)
@given(st.text(max_size=40))
def test_any_other_string_parses_or_is_a_value_error_quoting_it(text):
    try:
        uri = parse_uri(text)
    except ValueError as exc:
        assert repr(text) in str(exc)
    else:
        assert uri.protocol in ("PYRO", "PYRONAME")


@pytest.mark.parametrize("bad", [None, 21000, b"PYRO:w@h:1", ["PYRO:w@h:1"]])
def test_a_non_string_is_a_value_error_naming_it(bad):
    with pytest.raises(ValueError, match="must be a string"):
        parse_uri(bad)
