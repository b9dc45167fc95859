"""Soak a 3-node loopback cluster while its followers die: mixed OpenAI, Anthropic and Ollama
traffic (the official clients, streamed and not) against the coordinator, while the follower
that holds a stage of the demo instance is SIGKILLed and restarted every `--kill-every` seconds.

Every node offers too little memory for the demo model alone (`tandem node --memory`), so the
instance always spans the coordinator and a follower, and every kill takes a stage with it.
Checks, printed as a summary (exit status 1 when one fails):
- every request completes and its greedy text equals the text of the same request sent before
  the first kill (requests in flight resume on the replacement);
- no runner processes leak: each node runs exactly the runners the cluster places on it, and
  none is left once the nodes stop;
- the coordinator's memory (its resident set) grows by less than `--rss-growth-mb`.

    python tools/soak.py --minutes 10 --kill-every 120
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import httpx
import ollama
import openai
import psutil

SECRET = "soak-cluster-secret-0123456789"
NODE_MEMORY_GB = "1.14"  # about 26 MB each after margins: the demo model (37 MB) needs two nodes
PROMPTS = ("Tell me of the king.", "What news from the north?", "Speak of the sea.", "Who goes there?")
MAX_TOKENS = 48
KINDS = ("openai", "openai-stream", "anthropic", "anthropic-stream", "ollama", "ollama-stream")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
            value = condition()
            if value:
                return value
        time.sleep(0.25)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


class Node:
    """One `tandem node` process on a loopback port; restartable with the same identity."""

    def __init__(self, directory: Path, peer: str | None) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.peer = peer
        self.process: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.url, timeout=30.0)
        directory.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        command = [
            sys.executable, "-m", "tandem.cli.main", "node", "--host", "127.0.0.1",
            "--port", str(self.port), "--advertise", "127.0.0.1", "--discovery", "none",
            "--devices", "cpu", "--runner-threads", "1", "--memory", NODE_MEMORY_GB,
            "--data-dir", str(self.directory / "data"),
        ]  # fmt: skip
        if self.peer:
            command += ["--peers", self.peer]
        log = (self.directory / "node.log").open("a")
        environment = {**os.environ, "TANDEM_SECRET": SECRET, "HF_HUB_OFFLINE": "1"}
        self.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=environment
        )
        log.close()

    def cluster(self) -> dict[str, Any]:
        response = self.http.get("/v1/cluster")
        response.raise_for_status()
        return response.json()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """End the node and its runners (its process group) and wait for it."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def runner_pids(self) -> list[int]:
        assert self.process is not None
        return [child.pid for child in psutil.Process(self.process.pid).children()]

    def group_alive(self) -> bool:
        if self.process is None:
            return False
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        return True


@dataclass
class Tally:
    done: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    kills: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, kind: str, problem: str | None) -> None:
        with self.lock:
            self.done[kind] = self.done.get(kind, 0) + 1
            if problem is not None:
                self.failures.append(f"{kind}: {problem}")


def ask(url: str, kind: str, prompt: str) -> str:
    """The text one request of `kind` gets (greedy) through its official client."""
    messages = [{"role": "user", "content": prompt}]
    if kind.startswith("openai"):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)
        common: dict[str, Any] = {
            "model": "demo",
            "messages": messages,
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
        }
        if kind == "openai":
            return client.chat.completions.create(**common).choices[0].message.content or ""
        chunks = client.chat.completions.create(**common, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    if kind.startswith("anthropic"):
        client = anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0, timeout=300)
        # this client's signature lacks temperature on some versions: sent in the body
        common = {
            "model": "demo",
            "messages": messages,
            "max_tokens": MAX_TOKENS,
            "extra_body": {"temperature": 0},
        }
        if kind == "anthropic":
            message = client.messages.create(**common)
            return "".join(block.text for block in message.content if block.type == "text")
        with client.messages.stream(**common) as stream:
            return "".join(stream.text_stream)
    client = ollama.Client(host=url, timeout=300)
    options = {"temperature": 0, "num_predict": MAX_TOKENS}
    if kind == "ollama":
        return client.chat(model="demo", messages=messages, options=options).message.content or ""
    parts = client.chat(model="demo", messages=messages, options=options, stream=True)
    return "".join(part.message.content or "" for part in parts)


def traffic(
    url: str, references: dict[tuple[str, str], str], tally: Tally, until: float, worker: int
) -> None:
    work = itertools.islice(itertools.cycle(list(references)), worker * 5, None)
    for kind, prompt in work:
        if time.monotonic() >= until:
            return
        try:
            text = ask(url, kind, prompt)
        except Exception as error:  # every failure is counted, with its one line
            tally.count(kind, f"{type(error).__name__}: {str(error)[:300]}")
            continue
        expected = references[(kind, prompt)]
        tally.count(kind, None if text == expected else f"text differs: {text[:60]!r} != {expected[:60]!r}")


def demo_instance(view: dict[str, Any]) -> dict[str, Any] | None:
    return next((i for i in view["instances"] if i["model"] == "demo" and i["status"] == "ready"), None)


def held_runners(view: dict[str, Any], node_id: str) -> int:
    return sum(
        1
        for instance in view["instances"]
        if instance["status"] != "failed"
        for runner in instance["runners"]
        if runner["node_id"] == node_id
    )


def soak(
    minutes: float,
    kill_every: float,
    workers: int,
    rss_growth_mb: float,
    directory: Path,
    prompts: tuple[str, ...] = PROMPTS,
) -> bool:
    """Run the soak; True when every check passed (the summary is printed either way)."""
    started = time.monotonic()
    first = Node(directory / "node0", None)
    first.start()
    wait_for(first.cluster, 60, "the first node to answer")
    nodes = [
        first,
        Node(directory / "node1", f"127.0.0.1:{first.port}"),
        Node(directory / "node2", f"127.0.0.1:{first.port}"),
    ]
    for node in nodes[1:]:
        node.start()
    try:
        wait_for(lambda: len(first.cluster()["nodes"]) == 3, 60, "three nodes to meet")
        coordinator_id = first.cluster()["coordinator"]
        ids = {node: node.cluster()["self"] for node in nodes}
        taker = next(node for node in nodes if ids[node] == coordinator_id)
        response = taker.http.post("/v1/instances", json={"model": "demo", "wait": True}, timeout=300)
        response.raise_for_status()
        references = {(kind, prompt): ask(taker.url, kind, prompt) for kind in KINDS for prompt in prompts}
        assert taker.process is not None
        rss_before = psutil.Process(taker.process.pid).memory_info().rss
        print(
            f"cluster up and references taken in {time.monotonic() - started:.0f} s; soaking {minutes:g} min"
        )

        tally = Tally()
        until = time.monotonic() + minutes * 60
        threads = [
            threading.Thread(target=traffic, args=(taker.url, references, tally, until, worker), daemon=True)
            for worker in range(workers)
        ]
        for thread in threads:
            thread.start()
        next_kill = time.monotonic() + kill_every
        while time.monotonic() < until - 5:
            time.sleep(0.5)
            if time.monotonic() < next_kill:
                continue
            view = taker.cluster()
            instance = demo_instance(view)
            holders = {r["node_id"] for r in instance["runners"]} if instance else set()
            victims = [n for n in nodes if n is not taker and ids[n] in holders] or [
                n for n in nodes if n is not taker
            ]
            victim = victims[0]
            print(f"{time.monotonic() - started:5.0f} s: killing follower {ids[victim]}")
            victim.kill()
            tally.kills += 1
            gone = ids[victim]
            wait_for(lambda: gone not in {n["node_id"] for n in taker.cluster()["nodes"]}, 30, "the loss")  # noqa: B023
            victim.start()
            wait_for(lambda: len(taker.cluster()["nodes"]) == 3, 60, "the killed node to rejoin")
            next_kill = time.monotonic() + kill_every
        for thread in threads:
            thread.join(timeout=400)

        wait_for(lambda: demo_instance(taker.cluster()), 60, "a ready instance")
        view = taker.cluster()
        leaks = []
        for node in nodes:
            running, placed = len(node.runner_pids()), held_runners(view, ids[node])
            if running != placed:
                leaks.append(f"node {ids[node]} runs {running} runner processes, the cluster places {placed}")
        growth_mb = (psutil.Process(taker.process.pid).memory_info().rss - rss_before) / 1e6
    finally:
        for node in nodes:
            node.kill(signal.SIGTERM)
    leaks += [f"node {ids[node]} left processes behind" for node in nodes if node.group_alive()]

    total = sum(tally.done.values())
    print(
        f"\nsoak: {minutes:g} min, {tally.kills} follower kills, {total} requests, {len(tally.failures)} failed"
    )
    for kind in KINDS:
        print(f"  {kind:<17} {tally.done.get(kind, 0):>5}")
    print(f"  coordinator RSS growth {growth_mb:+.0f} MB (bound {rss_growth_mb:g} MB)")
    for problem in tally.failures[:20] + leaks:
        print(f"  FAIL {problem}")
    ok = not tally.failures and not leaks and growth_mb < rss_growth_mb and tally.kills > 0 and total > 0
    print("soak passed" if ok else "soak FAILED")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long traffic runs (default 10)")
    parser.add_argument(
        "--kill-every", type=float, default=120.0, help="seconds between follower kills (default 120)"
    )
    parser.add_argument("--workers", type=int, default=4, help="concurrent clients (default 4)")
    parser.add_argument(
        "--rss-growth-mb", type=float, default=200.0, help="allowed coordinator growth (default 200)"
    )
    parser.add_argument("--dir", type=Path, help="node directories and logs (default: a temporary one)")
    args = parser.parse_args()
    if args.dir:
        return 0 if soak(args.minutes, args.kill_every, args.workers, args.rss_growth_mb, args.dir) else 1
    with tempfile.TemporaryDirectory(prefix="tandem-soak-") as directory:
        return (
            0 if soak(args.minutes, args.kill_every, args.workers, args.rss_growth_mb, Path(directory)) else 1
        )


if __name__ == "__main__":
    sys.exit(main())
