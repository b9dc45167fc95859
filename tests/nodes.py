"""Real node processes for tests: each a `tandem node` on its own loopback port and data directory.

    with running_nodes(tmp_path, 3) as nodes:
        wait_for(lambda: all(len(n.cluster()["nodes"]) == 3 for n in nodes))

Discovery is off (loopback carries no multicast): nodes find each other through static peers
(each knows the first) and the peers' own lists. Logs are kept per node for assertions.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

TEST_SECRET = "test-cluster-secret-0123456789"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(
    condition: Callable[[], Any], timeout: float = 30.0, interval: float = 0.2, what: str = ""
) -> Any:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except (httpx.HTTPError, KeyError, ValueError) as error:
            last_error = error
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what or condition}: {last_error}")


def offline(env: dict[str, str] | None) -> dict[str, str]:
    """No test reaches the internet: a node is offline unless its test gives it a Hub (the
    stand-in's HF_ENDPOINT), since a request may name any repo id."""
    return {} if env is not None and "HF_ENDPOINT" in env else {"HF_HUB_OFFLINE": "1"}


class NodeProcess:
    def __init__(
        self,
        directory: Path,
        port: int,
        peers: list[str],
        secret: str = TEST_SECRET,
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        api_key: str | None = None,
    ) -> None:
        self.directory = directory
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self.url = f"http://{self.address}"
        self.log_path = directory / "node.log"
        directory.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "tandem.cli.main",
            "node",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--advertise",
            "127.0.0.1",
            "--discovery",
            "none",
            "--devices",
            "cpu",
            "--runner-threads",
            "1",
            "--data-dir",
            str(directory / "data"),
            *extra_args,
        ]
        if peers:
            command += ["--peers", ",".join(peers)]
        if api_key:
            command += ["--api-key", api_key]
        self.log = self.log_path.open("w")
        self.process = subprocess.Popen(
            command,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "TANDEM_SECRET": secret, **offline(env), **(env or {})},
        )
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        self.http = httpx.Client(base_url=self.url, timeout=30.0, headers=headers)

    def cluster(self) -> dict[str, Any]:
        response = self.http.get("/v1/cluster")
        response.raise_for_status()
        return response.json()

    @property
    def node_id(self) -> str:
        return self.cluster()["self"]

    def log_text(self) -> str:
        return self.log_path.read_text()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)  # the node and its runner processes
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.http.close()
        self.log.close()


def start_node(tmp_path: Path, name: str, peers: list[str], **kwargs: Any) -> NodeProcess:
    return NodeProcess(tmp_path / name, free_port(), peers, **kwargs)


@contextlib.contextmanager
def running_nodes(tmp_path: Path, count: int, **kwargs: Any) -> Iterator[list[NodeProcess]]:
    nodes: list[NodeProcess] = []
    try:
        first = start_node(tmp_path, "node0", [], **kwargs)
        nodes.append(first)
        for index in range(1, count):
            nodes.append(start_node(tmp_path, f"node{index}", [first.address], **kwargs))
        for node in nodes:
            wait_for(node.cluster, timeout=60, what=f"{node.address} to answer")
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def launch(node: NodeProcess, **request: Any) -> dict[str, Any]:
    """Launch an instance and wait until it is ready (or fail the test with its error)."""
    response = node.http.post("/v1/instances", json={**request, "wait": True}, timeout=300)
    assert response.status_code == 200, response.text
    instance = response.json()
    assert instance["status"] == "ready", instance
    return instance


def generate(node: NodeProcess, instance_id: str, **body: Any) -> list[dict[str, Any]]:
    events = []
    with node.http.stream(
        "POST", f"/v1/instances/{instance_id}/generate", json=body, timeout=120
    ) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.strip():
                events.append(json.loads(line))
    return events
