"""The rule of who may reach the public API and the dashboard (pure; the real nodes in network
namespaces are in tests/cluster/test_exposure_nodes.py)."""

from __future__ import annotations

import pytest

from tandem.api.exposure import Exposure, is_local

LOCAL_ONLY = Exposure(api_key_set=False, open_api=False)
WITH_KEY = Exposure(api_key_set=True, open_api=False)
OPEN = Exposure(api_key_set=False, open_api=True)


@pytest.mark.parametrize(
    ("client", "server", "local"),
    [
        ("127.0.0.1", "127.0.0.1", True),
        ("127.0.0.5", "10.0.0.2", True),
        ("::1", "::1", True),
        ("::ffff:127.0.0.1", "::ffff:10.0.0.2", True),
        ("10.0.0.2", "10.0.0.2", True),  # this machine, through its own LAN address
        ("10.0.0.3", "10.0.0.2", False),
        ("::ffff:10.0.0.3", "10.0.0.2", False),
        ("fe80::1", "10.0.0.2", False),
        (None, "10.0.0.2", False),
        ("not-an-address", "10.0.0.2", False),
    ],
)
def test_a_caller_is_local_on_loopback_or_from_the_address_it_reached(client, server, local):
    assert is_local(client, server) is local


@pytest.mark.parametrize(
    "path", ["/v1/chat/completions", "/api/generate", "/", "/dashboard/js/main.js", "/docs"]
)
def test_without_a_key_other_machines_are_refused_everything_but_node_routes(path):
    reason = LOCAL_ONLY.refusal(path, local=False)
    assert reason is not None and "--api-key KEY" in reason and "--open-api" in reason
    assert LOCAL_ONLY.refusal(path, local=True) is None
    assert OPEN.refusal(path, local=False) is None
    assert LOCAL_ONLY.refusal("/internal/heartbeat", local=False) is None  # the secret guards these


def test_with_a_key_other_machines_use_the_api_and_the_dashboard():
    assert WITH_KEY.refusal("/v1/models", local=False) is None  # the key is checked next
    assert WITH_KEY.refusal("/", local=False) is None  # the page asks for the key
    assert WITH_KEY.refusal("/", local=True) is None
    assert Exposure(api_key_set=True, open_api=True).refusal("/", local=False) is None


def test_each_mode_is_said_in_one_line():
    lines = {exposure.mode: exposure.summary() for exposure in (LOCAL_ONLY, WITH_KEY, OPEN)}
    assert set(lines) == {"local", "key", "open"}
    assert "this machine only" in lines["local"] and "\n" not in "".join(lines.values())
