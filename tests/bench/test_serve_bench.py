"""`tandem bench --serve`: the load client's arithmetic, and the command against a live node
serving the demo model on the CPU (the figures themselves go to docs/results.md)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cli_helpers import assert_one_line_error
from nodes import free_port, launch, running_nodes
from tandem.bench.serve import RequestTiming, percentile, summarize


def tandem_bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tandem.cli.main", "bench", *args], capture_output=True, text=True, timeout=600
    )


def test_percentiles_interpolate_between_ranks():
    assert percentile([], 50) == 0.0
    assert percentile([5.0], 99) == 5.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([4.0, 1.0, 3.0, 2.0], 100) == 4.0
    assert percentile(list(range(101)), 90) == pytest.approx(90.0)


def test_a_level_sums_tokens_over_its_wall_time_and_leaves_failures_out():
    timings = [
        RequestTiming(sent=0.0, chunk_times=[0.5, 0.6, 0.8], output_tokens=3),
        RequestTiming(sent=1.0, chunk_times=[1.1, 1.2], output_tokens=2),
        RequestTiming(sent=0.0, error="HTTP 429: the instance's queue is full"),
    ]
    level = summarize(2, timings, wall_seconds=2.0)
    assert (level.requests, level.failed, level.output_tokens) == (3, 1, 5)
    assert level.output_tokens_per_second == 2.5
    assert level.ttft_ms["p50"] == pytest.approx(300.0)  # of 500 ms and 100 ms
    assert (level.itl_ms["p50"], level.itl_ms["p99"]) == pytest.approx((100.0, 198.0))  # of 100, 200, 100 ms
    assert level.first_error is not None and "429" in level.first_error


def test_bench_serve_against_a_live_node(tmp_path):
    report_path = tmp_path / "serve.json"
    with running_nodes(tmp_path, 1) as (node,):
        launch(node, model="demo", context=256, sequences=4)
        result = tandem_bench(
            "--serve", node.url, "--concurrency", "1,6", "--input-len", "24", "--output-len", "10",
            "--rounds", "2", "--json", str(report_path),
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "output tok/s" in result.stdout and "TTFT p50/p90/p99 ms" in result.stdout
    assert "concurrency 6: 12/12 requests, 0 failed, 120 tokens" in result.stderr  # the progress line
    report = json.loads(report_path.read_text())
    assert report["model"] == "demo"
    levels = {level["concurrency"]: level for level in report["levels"]}
    assert set(levels) == {1, 6}
    for concurrency, level in levels.items():
        assert level["requests"] == 2 * concurrency and level["failed"] == 0
        assert level["output_tokens"] == 10 * level["requests"]  # ignore_eos: every request runs to the end
        assert level["output_tokens_per_second"] > 0
        assert 0 < level["ttft_ms"]["p50"] <= level["ttft_ms"]["p90"] <= level["ttft_ms"]["p99"]
        assert 0 < level["itl_ms"]["p50"] <= level["itl_ms"]["p99"]


def test_bench_serve_says_in_one_line_when_nothing_answers():
    url = f"http://127.0.0.1:{free_port()}"
    assert_one_line_error(tandem_bench("--serve", url, "--concurrency", "1"), "no node answers at", url)
