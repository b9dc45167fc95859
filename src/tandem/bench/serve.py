"""`tandem bench --serve URL`: load against a live cluster over its OpenAI API.

For each concurrency C, C clients send streamed `/v1/completions` requests back to back (C ×
`rounds` in all), each a different random prompt of `input_len` token ids, asking for exactly
`output_len` tokens (`ignore_eos`). Reported per C: aggregate output tokens/s (every output
token over the level's wall time), time to first token, and inter-token latency (the gaps between
streamed chunks) at p50/p90/p99. httpx only: it runs wherever the node's client runs.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import httpx

from tandem import settings
from tandem.errors import TandemError

PERCENTS = (50, 90, 99)
# Token ids of random prompts: inside every real vocabulary, past most special tokens.
PROMPT_TOKEN_RANGE = (100, 1000)
CONNECT_SECONDS = 5.0

Progress = Callable[[str, bool], None]  # (the line, whether the level just finished)


@dataclass(frozen=True)
class ServeLoad:
    url: str
    concurrency: tuple[int, ...]
    input_len: int
    output_len: int
    rounds: int = 2  # requests per client at each concurrency
    model: str | None = None  # None: the first model the node lists
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.concurrency or min(self.concurrency) < 1:
            raise TandemError("--concurrency takes positive integers, e.g. 1,8,32,64")
        if self.input_len < 1 or self.output_len < 1 or self.rounds < 1:
            raise TandemError("--input-len, --output-len and --rounds must be at least 1")


@dataclass
class RequestTiming:
    """One request as the client saw it (seconds since the level began)."""

    sent: float
    chunk_times: list[float] = field(default_factory=list)  # arrival of each chunk with text
    output_tokens: int = 0
    error: str | None = None


@dataclass(frozen=True)
class LevelResult:
    concurrency: int
    requests: int
    failed: int
    wall_seconds: float
    output_tokens: int
    ttft_ms: dict[str, float]  # "p50" -> milliseconds
    itl_ms: dict[str, float]
    first_error: str | None = None

    @property
    def output_tokens_per_second(self) -> float:
        return self.output_tokens / self.wall_seconds if self.wall_seconds > 0 else 0.0


def percentile(values: list[float], percent: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    position = (len(ordered) - 1) * percent / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    return {f"p{p}": percentile(seconds, p) * 1000 for p in PERCENTS}


def random_prompt(rng: random.Random, length: int) -> list[int]:
    return [rng.randrange(*PROMPT_TOKEN_RANGE) for _ in range(length)]


def summarize(concurrency: int, timings: list[RequestTiming], wall_seconds: float) -> LevelResult:
    done = [t for t in timings if t.error is None]
    ttft = [t.chunk_times[0] - t.sent for t in done if t.chunk_times]
    itl = [later - earlier for t in done for earlier, later in itertools.pairwise(t.chunk_times)]
    errors = [t.error for t in timings if t.error is not None]
    return LevelResult(
        concurrency=concurrency,
        requests=len(timings),
        failed=len(errors),
        wall_seconds=wall_seconds,
        output_tokens=sum(t.output_tokens for t in done),
        ttft_ms=percentiles_ms(ttft),
        itl_ms=percentiles_ms(itl),
        first_error=errors[0] if errors else None,
    )


def format_results(load: ServeLoad, model: str, results: list[LevelResult]) -> list[str]:
    def three(values: dict[str, float]) -> str:
        return " / ".join(f"{values[f'p{p}']:.1f}" for p in PERCENTS)

    lines = [
        f"{load.url} model {model}: {load.input_len} tokens in, {load.output_len} out, "
        f"{load.rounds} requests per client",
        f"{'concurrency':>11}  {'requests':>8}  {'failed':>6}  {'output tok/s':>12}  "
        f"{'TTFT p50/p90/p99 ms':>24}  {'ITL p50/p90/p99 ms':>22}",
    ]
    for r in results:
        lines.append(
            f"{r.concurrency:>11}  {r.requests:>8}  {r.failed:>6}  {r.output_tokens_per_second:>12.1f}  "
            f"{three(r.ttft_ms):>24}  {three(r.itl_ms):>22}"
        )
    lines += [
        f"concurrency {r.concurrency}: first failure: {r.first_error}" for r in results if r.first_error
    ]
    return lines


def results_json(load: ServeLoad, model: str, results: list[LevelResult]) -> str:
    levels = [{**asdict(r), "output_tokens_per_second": r.output_tokens_per_second} for r in results]
    return json.dumps({"load": asdict(load), "model": model, "levels": levels}, indent=2)


def _error_of(response: httpx.Response, body: bytes) -> str:
    try:
        error = json.loads(body).get("error")
        message = error.get("message") if isinstance(error, dict) else error
    except (json.JSONDecodeError, AttributeError):
        message = None
    return f"HTTP {response.status_code}: {message or body[:200].decode(errors='replace')}"


async def one_request(
    client: httpx.AsyncClient, model: str, prompt: list[int], output_len: int, clock: Callable[[], float]
) -> RequestTiming:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": output_len,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    timing = RequestTiming(sent=clock())
    try:
        async with client.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code != 200:
                timing.error = _error_of(response, await response.aread())
                return timing
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line.removeprefix("data: "))
                if "error" in chunk:
                    timing.error = f"the stream failed: {chunk['error'].get('message')}"
                    return timing
                if chunk.get("choices") and chunk["choices"][0].get("text"):
                    timing.chunk_times.append(clock())
                if chunk.get("usage"):
                    timing.output_tokens = chunk["usage"]["completion_tokens"]
    except httpx.HTTPError as error:
        timing.error = f"{type(error).__name__}: {error}"
    return timing


async def run_level(
    client: httpx.AsyncClient,
    load: ServeLoad,
    model: str,
    concurrency: int,
    rng: random.Random,
    progress: Progress,
) -> LevelResult:
    total = concurrency * load.rounds
    prompts = [random_prompt(rng, load.input_len) for _ in range(total)]
    timings: list[RequestTiming] = []
    started = time.perf_counter()

    def clock() -> float:
        return time.perf_counter() - started

    def show() -> None:
        tokens = sum(t.output_tokens for t in timings)
        failed = sum(t.error is not None for t in timings)
        progress(
            f"concurrency {concurrency}: {len(timings)}/{total} requests, {failed} failed, "
            f"{tokens} tokens, {clock():.1f} s",
            len(timings) == total,
        )

    async def client_loop(index: int) -> None:
        for round_index in range(load.rounds):
            prompt = prompts[index * load.rounds + round_index]
            timings.append(await one_request(client, model, prompt, load.output_len, clock))
            show()

    show()
    await asyncio.gather(*(client_loop(i) for i in range(concurrency)))
    return summarize(concurrency, timings, clock())


async def first_model(client: httpx.AsyncClient) -> str:
    response = await client.get("/v1/models")
    if response.status_code != 200:
        raise TandemError(f"{client.base_url}/v1/models answered {_error_of(response, response.content)}")
    models = [m["id"] for m in response.json().get("data", [])]
    if not models:
        raise TandemError(f"{client.base_url} serves no model; launch one or name it with --model")
    return models[0]


async def run_serve_bench(load: ServeLoad, progress: Progress) -> tuple[str, list[LevelResult]]:
    """Every concurrency level in turn; returns the model asked and a result per level."""
    key = settings.api_key()
    limits = httpx.Limits(max_connections=max(load.concurrency) + 4, max_keepalive_connections=None)
    async with httpx.AsyncClient(
        base_url=load.url.rstrip("/"),
        timeout=httpx.Timeout(None, connect=CONNECT_SECONDS),
        limits=limits,
        headers={"Authorization": f"Bearer {key}"} if key else None,
    ) as client:
        try:
            model = load.model or await first_model(client)
        except httpx.ConnectError:
            raise TandemError(f"no node answers at {load.url}; start one with `tandem`") from None
        except httpx.HTTPError as error:
            raise TandemError(f"talking to {load.url} failed: {type(error).__name__}") from None
        rng = random.Random(load.seed)
        results = [await run_level(client, load, model, c, rng, progress) for c in load.concurrency]
    return model, results


def terminal_progress(line: str, level_done: bool) -> None:
    """The progress line on stderr: rewritten in place on a terminal, else once per level."""
    if sys.stderr.isatty():
        sys.stderr.write(f"\r\033[K{line}" + ("\n" if level_done else ""))
    elif level_done:
        sys.stderr.write(line + "\n")
    sys.stderr.flush()
