"""A 2-stage CPU pipeline with micro-batches and without, in one run: aggregate output tokens/s.

Starts two clusters of two node processes on loopback, one with TANDEM_MICRO_BATCHES=1 (one
step at a time) and one with the default (a micro-batch per stage), launches the demo model on
each as 2 pipeline stages (one per node, one thread per runner), and runs the `tandem bench
--serve` load (`tandem.bench.serve`) against the two in turns, `--repeats` times each, so that
a shared machine's noise falls on both alike. Prints every run and the range of each.

    python tools/bench_micro_batches.py [--concurrency 16] [--repeats 3] [--input-len 128] [--output-len 64]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tandem.bench.serve import LevelResult, ServeLoad, run_serve_bench

SETTINGS = {"one step at a time": "1", "micro-batches": ""}  # TANDEM_MICRO_BATCHES; "": the default


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_node(directory: Path, port: int, peers: list[str], environment: dict[str, str]) -> subprocess.Popen:
    directory.mkdir(parents=True)
    command = [
        *(sys.executable, "-m", "tandem.cli.main", "node", "--host", "127.0.0.1", "--port", str(port)),
        *("--advertise", "127.0.0.1", "--discovery", "none", "--devices", "cpu", "--runner-threads", "1"),
        *("--data-dir", str(directory / "data")),
        *(("--peers", ",".join(peers)) if peers else ()),
    ]
    with (directory / "node.log").open("w") as log:
        return subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=environment, start_new_session=True
        )


def wait_for_two_nodes(url: str, timeout: float = 120) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            nodes = httpx.get(f"{url}/v1/cluster", timeout=5).json()["nodes"]
            if len(nodes) == 2:
                return [node["node_id"] for node in nodes]
        time.sleep(0.5)
    raise SystemExit(f"the two nodes at {url} did not meet within {timeout:.0f} s")


@contextlib.contextmanager
def pipeline_cluster(directory: Path, micro_batches: str, context: int) -> Iterator[tuple[str, str]]:
    """Two nodes, the demo model over them as 2 stages: yields (first node's URL, instance id)."""
    environment = {**os.environ, "TANDEM_SECRET": secrets.token_hex(16), "HF_HUB_OFFLINE": "1"}
    environment["TANDEM_MICRO_BATCHES"] = micro_batches
    ports = [free_port(), free_port()]
    processes = []
    try:
        processes.append(start_node(directory / "node0", ports[0], [], environment))
        processes.append(start_node(directory / "node1", ports[1], [f"127.0.0.1:{ports[0]}"], environment))
        url = f"http://127.0.0.1:{ports[0]}"
        node_ids = wait_for_two_nodes(url)
        request = {
            "model": "demo",
            "context": context,
            "devices": [f"{n}/cpu" for n in node_ids],
            "wait": True,
        }
        response = httpx.post(f"{url}/v1/instances", json=request, timeout=600)
        if response.status_code != 200 or len(response.json()["placement"]["stages"]) != 2:
            raise SystemExit(f"launching the demo model as 2 stages failed: {response.text[:300]}")
        yield url, response.json()["instance_id"]
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)  # the node and its runner
        for process in processes:
            process.wait(timeout=30)


def quiet(line: str, level_done: bool) -> None:
    del line, level_done


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="requests per client in each run")
    args = parser.parse_args()
    context = args.input_len + args.output_len + 64
    runs: dict[str, list[LevelResult]] = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory() as work, contextlib.ExitStack() as clusters:
        targets = {
            name: clusters.enter_context(pipeline_cluster(Path(work) / f"cluster{i}", value, context))
            for i, (name, value) in enumerate(SETTINGS.items())
        }
        for repeat in range(args.repeats):
            for name, (url, instance) in targets.items():
                load = ServeLoad(
                    url, (args.concurrency,), args.input_len, args.output_len, args.rounds, instance, repeat
                )
                _, (result,) = asyncio.run(run_serve_bench(load, quiet))
                if result.failed:
                    raise SystemExit(f"{name}: {result.failed} requests failed: {result.first_error}")
                runs[name].append(result)
                print(
                    f"run {repeat + 1} {name:>20}: {result.output_tokens_per_second:7.1f} output tok/s, "
                    f"TTFT p50 {result.ttft_ms['p50']:.0f} ms, ITL p50 {result.itl_ms['p50']:.1f} ms",
                    flush=True,
                )
    print(
        f"{args.concurrency} concurrent, {args.input_len} tokens in, {args.output_len} out, "
        f"{args.rounds} requests per client, {args.repeats} runs each:"
    )
    for name, results in runs.items():
        rates = sorted(result.output_tokens_per_second for result in results)
        print(
            f"{name:>20}: {rates[0]:.1f}–{rates[-1]:.1f} output tok/s (runs: {', '.join(f'{r:.1f}' for r in rates)})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
