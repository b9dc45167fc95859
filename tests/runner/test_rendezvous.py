"""Rank 0's rendezvous admits only the instance's ranks: the torch store listens on loopback
alone, and the gate on the advertised address forwards a connection only after the token's
challenge is answered. Checked with real torch stores, on loopback and across two network
namespaces (a connection from another host's address, with the wrong token or none)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import psutil

from netns import lan
from runner_processes import TEST_RENDEZVOUS_TOKEN
from tandem.cluster.auth import rendezvous_token
from tandem.runner.rendezvous import CHALLENGE_BYTES

PROBE = [sys.executable, str(Path(__file__).parents[1] / "rendezvous_probe.py")]


def run_probe(args: list[str], command=lambda args: args) -> str:
    result = subprocess.run(command([*PROBE, *args]), capture_output=True, text=True, timeout=60)
    return result.stdout.strip()


def start_server(host: str, token: str, popen=subprocess.Popen) -> tuple[subprocess.Popen, int, int]:
    server = popen([*PROBE, "serve", host, token], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    gate_port, store_port = map(int, server.stdout.readline().split())
    return server, gate_port, store_port


def test_the_token_differs_by_instance_and_by_secret():
    secret = b"correct-horse-battery-staple"
    assert rendezvous_token(secret, "a1b2") == rendezvous_token(secret, "a1b2")
    assert rendezvous_token(secret, "a1b2") != rendezvous_token(secret, "c3d4")
    assert rendezvous_token(secret, "a1b2") != rendezvous_token(b"another-cluster-secret", "a1b2")


def test_on_loopback_only_the_token_opens_the_store():
    server, gate_port, store_port = start_server("127.0.0.1", TEST_RENDEZVOUS_TOKEN)
    try:
        listening = {
            c.laddr.port: c.laddr.ip
            for c in psutil.Process(server.pid).net_connections()
            if c.status == "LISTEN"
        }
        assert listening == {gate_port: "127.0.0.1", store_port: "127.0.0.1"}
        assert (
            run_probe(["join", "127.0.0.1", str(gate_port), TEST_RENDEZVOUS_TOKEN])
            == "joined hello from rank 0"
        )
        assert run_probe(["join", "127.0.0.1", str(gate_port), "a-wrong-token"]).startswith("refused")
        assert run_probe(["direct", "127.0.0.1", str(gate_port)]).startswith("refused")
        with socket.create_connection(("127.0.0.1", gate_port), timeout=10) as raw:  # a guess
            assert len(raw.recv(CHALLENGE_BYTES)) == CHALLENGE_BYTES
            raw.sendall(b"\0" * 32)
            assert raw.recv(1) == b""  # closed without a byte of the store
    finally:
        server.kill()
        _, errors = server.communicate(timeout=10)
    assert errors.count("wrong rendezvous token (not a rank of this instance)") >= 2


def test_from_another_host_only_the_token_opens_the_store():
    with lan(2) as network:
        rank_zero, outsider = network.hosts
        server, gate_port, store_port = start_server(
            rank_zero.address, TEST_RENDEZVOUS_TOKEN, rank_zero.popen
        )
        address = rank_zero.address
        assert run_probe(["direct", address, str(store_port)], outsider.command).startswith("refused")
        assert run_probe(["direct", address, str(gate_port)], outsider.command).startswith("refused")
        assert run_probe(["join", address, str(gate_port), "a-wrong-token"], outsider.command).startswith(
            "refused"
        )
        joined = run_probe(["join", address, str(gate_port), TEST_RENDEZVOUS_TOKEN], outsider.command)
        assert joined == "joined hello from rank 0"  # a real rank on that host gets in
        server.kill()
        _, errors = server.communicate(timeout=10)
        assert f"refused a connection from {outsider.address}" in errors
