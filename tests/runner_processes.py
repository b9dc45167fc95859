"""Runner processes started directly (no node), joined over gloo on loopback (or NCCL on GPUs), for tests.

runners = start_instance(model_dir, num_layers, stage_sizes=(2, 2))  # TP=2 × PP=2: 4 ranks
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import replace

from tandem.model.sampling_params import SamplingParams
from tandem.model.stage import split_evenly
from tandem.protocol import codec
from tandem.protocol.runner import (
    Accepted,
    Alive,
    CacheReport,
    Generate,
    GenerateRequest,
    Listening,
    Load,
    RunnerCommand,
    RunnerEvent,
    RunnerSpec,
    Shutdown,
    Token,
)
from tandem.settings import RENDEZVOUS_TOKEN_VARIABLE, EngineOptions

TEST_RENDEZVOUS_TOKEN = "test-rendezvous-token-0123456789abcdef"


class RunnerProcess:
    def __init__(self, spec: RunnerSpec, env: dict[str, str] | None = None, host=None) -> None:
        """`host`: a test network namespace (tests/netns.py) to run in; None: this one."""
        self.spec = spec
        self.load = Load(0, 0)
        command = [sys.executable, "-m", "tandem.runner", spec.to_json()]
        self.process = subprocess.Popen(
            host.command(command) if host is not None else command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.cache: CacheReport | None = None  # the latest cache counters rank 0 reported

    def next_event(self, timeout: float = 60) -> RunnerEvent:
        """The next event other than a `Load` or `CacheReport` (the latest of each is kept in
        `load` and `cache`) or the runner's pulse (`Alive`)."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.process.stdout.readline()  # type: ignore[union-attr]
            assert line, f"runner exited with {self.process.wait()}"
            assert time.monotonic() < deadline
            event = codec.decode(RunnerEvent, line)
            if isinstance(event, Load):
                self.load = event
            elif isinstance(event, CacheReport):
                self.cache = event
            elif not isinstance(event, Alive):
                return event

    def wait_for_load(self, expected: Load, timeout: float = 30) -> None:
        """Read events until a `Load` report equals `expected` (other events are dropped)."""
        deadline = time.monotonic() + timeout
        while self.load != expected:
            line = self.process.stdout.readline()  # type: ignore[union-attr]
            assert line and time.monotonic() < deadline, f"load stayed {self.load}, not {expected}"
            event = codec.decode(RunnerEvent, line)
            if isinstance(event, Load):
                self.load = event
            elif isinstance(event, CacheReport):
                self.cache = event

    def send(self, command: RunnerCommand) -> None:
        self.send_line(codec.encode(command).decode())

    def send_line(self, line: str) -> None:
        self.process.stdin.write(line + "\n")  # type: ignore[union-attr]
        self.process.stdin.flush()  # type: ignore[union-attr]


def start_instance(
    model_dir,
    num_layers: int,
    stage_sizes: tuple[int, ...],
    keep_alive_seconds: float = 60.0,
    env: dict[str, str] | None = None,
    max_prefill_tokens: int = 5,
    options: EngineOptions | None = None,
    devices: list[str] | None = None,
    quantize: str | None = None,
    hosts: list | None = None,
    num_slots: int = 4,
    queue_limit: int | None = None,
) -> list[RunnerProcess]:
    """One runner per rank: stage s holds an even share of the layers over `stage_sizes[s]` ranks;
    `env` is added to every runner's environment. `devices` (one per rank, e.g. cuda:0, cuda:1)
    puts the ranks on GPUs joined by NCCL; default: CPUs over gloo. `hosts` (one network namespace
    per rank, tests/netns.py) runs each rank on its own host, rank 0's address as the master."""
    ranges = split_evenly(num_layers, len(stage_sizes))
    world_size = sum(stage_sizes)
    base = RunnerSpec(
        instance_id="test",
        rank=0,
        world_size=world_size,
        model_dir=str(model_dir),
        layer_start=ranges[0].start,
        layer_end=ranges[0].end,
        num_layers=num_layers,
        device=devices[0] if devices else "cpu",
        dtype="float32",
        backend="nccl" if devices else "gloo",
        max_context=128,
        num_slots=num_slots,
        max_prefill_tokens=max_prefill_tokens,
        threads=1,
        stage_sizes=stage_sizes,
        keep_alive_seconds=keep_alive_seconds,
        options=options or EngineOptions(),
        quantize=quantize,
        master_host=hosts[0].address if hosts else "127.0.0.1",
    )
    if queue_limit is not None:
        base = replace(base, queue_limit=queue_limit)
    env = {RENDEZVOUS_TOKEN_VARIABLE: TEST_RENDEZVOUS_TOKEN, **(env or {})}  # as a node hands it over
    driver = RunnerProcess(base, env, hosts[0] if hosts else None)
    runners = [driver]
    if world_size > 1:
        listening = driver.next_event()
        assert isinstance(listening, Listening), listening
        for rank in range(1, world_size):
            stage = base.layout.stage_of(rank)
            spec = replace(
                base,
                rank=rank,
                layer_start=ranges[stage].start,
                layer_end=ranges[stage].end,
                master_port=listening.port,
                device=devices[rank] if devices else "cpu",
            )
            runners.append(RunnerProcess(spec, env, hosts[rank] if hosts else None))
    return runners


def generate_all(
    driver: RunnerProcess, prompts: dict[str, list[int]], params: SamplingParams | dict[str, SamplingParams]
) -> dict[str, list[int]]:
    """Send every prompt at once (they share the instance) and collect each one's tokens;
    `params`: the same settings for all, or each request's own."""
    for request_id, ids in prompts.items():
        own = params[request_id] if isinstance(params, dict) else params
        driver.send(Generate(request_id, GenerateRequest(prompt_ids=tuple(ids), params=own)))
    tokens: dict[str, list[int]] = {request_id: [] for request_id in prompts}
    finished = set()
    while finished != set(prompts):
        event = driver.next_event()
        if isinstance(event, Token):
            tokens[event.request_id].append(event.token_id)
            if event.finish_reason is not None:
                finished.add(event.request_id)
        else:
            assert isinstance(event, Accepted), event
    return tokens


def stop(runners: list[RunnerProcess]) -> None:
    runners[0].send(Shutdown())
    for runner in runners:
        try:
            runner.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            runner.process.kill()
