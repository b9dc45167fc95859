"""--peers parsing: normalized host:port strings, and one-line errors naming the bad entry."""

from __future__ import annotations

import pytest

from tandem.cluster.peers import parse_peers
from tandem.errors import TandemError


def test_peers_are_split_normalized_and_deduplicated():
    values = ["10.0.0.2:52415,10.0.0.3:52415", "  GPU-Box.lan:8000  [FD00::0002]:52415", "10.0.0.2:52415"]
    assert parse_peers(values) == ("10.0.0.2:52415", "10.0.0.3:52415", "gpu-box.lan:8000", "[fd00::2]:52415")


def test_no_peers():
    assert parse_peers([]) == ()
    assert parse_peers(["", " , "]) == ()


def test_default_port_fills_bare_hosts():
    assert parse_peers(["10.0.0.2", "[::1]", "box:9"], default_port=52415) == (
        "10.0.0.2:52415",
        "[::1]:52415",
        "box:9",
    )


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("10.0.0.2", "bad peer '10.0.0.2': no port; expected host:port"),
        ("10.0.0.2:http", "bad peer '10.0.0.2:http': port 'http' is not a number"),
        ("10.0.0.2:0", "bad peer '10.0.0.2:0': port 0 is outside 1-65535"),
        ("10.0.0.2:70000", "bad peer '10.0.0.2:70000': port 70000 is outside 1-65535"),
        (":52415", "bad peer ':52415': no host"),
        ("fd00::2:52415", "bad peer 'fd00::2:52415': write IPv6 addresses in brackets"),
        ("[fd00::2:52415", "bad peer '[fd00::2:52415': '[' without ']'"),
        ("[fd00::zz]:1", "bad peer '[fd00::zz]:1': [fd00::zz] is not an IPv6 address"),
        ("bad_host:1", "bad peer 'bad_host:1': 'bad_host' is not a host name or IP address"),
        ("10.0.0.256:1", "bad peer '10.0.0.256:1': '10.0.0.256' is not a valid IPv4 address"),
    ],
)
def test_bad_peer_is_a_one_line_error(entry, message):
    with pytest.raises(TandemError) as caught:
        parse_peers([f"10.0.0.9:1,{entry}"])
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)
