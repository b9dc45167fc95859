"""Many concurrent streaming chat clients against a node: every stream's text, and the timings.

Used by test_load.py; also runs by hand against any node:

    PYTHONPATH=src python tests/api/api_load.py --url http://127.0.0.1:52525 --clients 32 --rounds 4
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import openai


@dataclass(frozen=True)
class StreamResult:
    prompt: str
    text: str
    completion_tokens: int
    first_token_seconds: float
    total_seconds: float


@dataclass(frozen=True)
class LoadReport:
    results: list[StreamResult]
    wall_seconds: float

    @property
    def requests_per_second(self) -> float:
        return len(self.results) / self.wall_seconds

    @property
    def tokens_per_second(self) -> float:
        return sum(r.completion_tokens for r in self.results) / self.wall_seconds

    def summary(self, clients: int) -> str:
        first = [r.first_token_seconds * 1000 for r in self.results]
        total = [r.total_seconds * 1000 for r in self.results]
        return (
            f"{clients} clients, {len(self.results)} streamed requests in {self.wall_seconds:.1f} s: "
            f"{self.requests_per_second:.1f} requests/s, {self.tokens_per_second:.0f} tokens/s; "
            f"time to first token p50 {percentile(first, 50):.0f} ms, p95 {percentile(first, 95):.0f} ms; "
            f"total p50 {percentile(total, 50):.0f} ms, p95 {percentile(total, 95):.0f} ms"
        )


def percentile(values: list[float], percent: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[percent - 1]


async def stream_once(client: openai.AsyncOpenAI, model: str, prompt: str, max_tokens: int) -> StreamResult:
    started = time.perf_counter()
    first: float | None = None
    pieces: list[str] = []
    completion_tokens = -1
    stream = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        temperature=0,
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if chunk.usage is not None:
            completion_tokens = chunk.usage.completion_tokens
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
            pieces.append(chunk.choices[0].delta.content)
    ended = time.perf_counter()
    return StreamResult(
        prompt, "".join(pieces), completion_tokens, (first or ended) - started, ended - started
    )


async def run_load(
    base_url: str, model: str, prompts: list[str], clients: int, rounds: int, max_tokens: int
) -> LoadReport:
    """`clients` concurrent clients, each streaming `rounds` requests one after another."""
    async with openai.AsyncOpenAI(
        base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=300
    ) as client:

        async def one_client(index: int) -> list[StreamResult]:
            results = []
            for round_index in range(rounds):
                prompt = prompts[(index + round_index) % len(prompts)]
                results.append(await stream_once(client, model, prompt, max_tokens))
            return results

        started = time.perf_counter()
        per_client = await asyncio.gather(*(one_client(i) for i in range(clients)))
        wall = time.perf_counter() - started
    return LoadReport([r for results in per_client for r in results], wall)


def main() -> None:
    sys.path.insert(0, str(Path(__file__).parent))  # run as a script, beside its prompts
    from api_expected import PROMPTS

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:52525")
    parser.add_argument("--model", default="demo")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args()
    report = asyncio.run(run_load(args.url, args.model, PROMPTS, args.clients, args.rounds, args.max_tokens))
    print(report.summary(args.clients))


if __name__ == "__main__":
    main()
