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
from runner_processes import TEST_RENDEZVOUS_TOKEN, generate_all, start_instance, stop
from tandem.cluster.auth import rendezvous_token
from tandem.model.sampling_params import SamplingParams
from tandem.protocol.runner import Ready
from tandem.runner.assemble import create_local_engine
from tandem.runner.rendezvous import CHALLENGE_BYTES

PROBE = [sys.executable, str(Path(__file__).parents[1] / "rendezvous_probe.py")]


def run_probe(args: list[str], command=lambda args: args) -> str:
    result = subprocess.run(command([*PROBE, *args]), capture_output=True, text=True, timeout=60)
    return result.stdout.strip()


def start_server(host: str, token: str, popen=subprocess.Popen) -> tuple[subprocess.Popen, int, int]:
    server = popen([*PROBE, "serve", host, token], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    gate_port, store_port = map(int, server.stdout.readline().split())
    return server, gate_port, store_port


def listening_sockets(host, pid: int) -> set[tuple[str, int]]:
    """(address, port) of each TCP socket process `pid` listens on inside `host`'s namespace
    (psutil sees only this namespace's sockets)."""
    found = set()
    for line in host.run(["ss", "-H", "-ltnp"]).stdout.splitlines():
        fields = line.split()
        if f"pid={pid}," in line and len(fields) >= 4:
            address, _, port = fields[3].rpartition(":")
            found.add((address.strip("[]"), int(port)))
    return found


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


def test_runners_on_two_hosts_join_through_the_gate_and_bind_nothing_to_every_interface(checkpoint_factory):
    checkpoint = checkpoint_factory("llama-gqa")
    with lan(2) as network:
        first, second = network.hosts
        runners = start_instance(
            checkpoint.path, checkpoint.config["num_hidden_layers"], (1, 1), hosts=network.hosts
        )
        try:
            assert all(isinstance(runner.next_event(timeout=120), Ready) for runner in runners)
            listening = listening_sockets(first, runners[0].process.pid)
            assert {ip for ip, _ in listening} <= {"127.0.0.1", first.address}, listening
            gate = runners[1].spec.master_port  # what rank 0 reported listening on
            assert (first.address, gate) in listening
            assert run_probe(["direct", first.address, str(gate)], second.command).startswith("refused")
            store_ports = [port for ip, port in listening if ip == "127.0.0.1"]
            assert store_ports, listening
            for port in store_ports:  # the store itself: not reachable from the other host at all
                assert run_probe(["direct", first.address, str(port)], second.command).startswith("refused")

            engine = create_local_engine(checkpoint.path, device="cpu", dtype="float32")
            params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
            prompt = [3, 1, 4, 1, 5]
            tokens = generate_all(runners[0], {"a": prompt}, params)
            assert tokens == {"a": [e.token_id for e in engine.generate(prompt, params)]}
        finally:
            stop(runners)
