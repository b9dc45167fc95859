"""`tandem bench` end to end on the CPU with a toy shape: the report's structure and arithmetic
(the speed figures themselves come from GPUs; docs/benchmarks.md)."""

from __future__ import annotations

import json
import re
import subprocess
import sys


def tandem_bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tandem.cli.main", "bench", "--shape", "tiny", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


def tandem_bench_shape(shape: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tandem.cli.main", "bench", "--shape", shape, *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_single_device_report_with_baseline(tmp_path):
    report_path = tmp_path / "report.json"
    result = tandem_bench(
        "--device",
        "cpu",
        "--prompt-lengths",
        "8,32",
        "--decode-tokens",
        "6",
        "--baseline",
        "--json",
        str(report_path),
    )
    assert result.returncode == 0, result.stderr
    assert "decode floor" in result.stdout and "engine is" in result.stdout
    report = json.loads(report_path.read_text())
    engine = report["engine"]
    assert set(engine["ttft_seconds"]) == {"8", "32"}
    assert engine["decode_tokens_per_second"] > 0 and report["baseline"]["decode_tokens_per_second"] > 0
    expected_fraction = engine["decode_tokens_per_second"] / report["decode_floor_tokens_per_second"]
    assert abs(engine["fraction_of_floor"] - expected_fraction) < 1e-9


def test_placements_compared_in_one_run(tmp_path):
    report_path = tmp_path / "plans.json"
    result = tandem_bench(
        "--plans",
        "1,tp2,pp2",
        "--prompt-lengths",
        "8",
        "--decode-tokens",
        "6",
        "--concurrency",
        "3",
        "--profile",
        "--json",
        str(report_path),
    )
    assert result.returncode == 0, result.stderr
    reports = json.loads(report_path.read_text())
    assert [r["plan"] for r in reports] == ["1", "tp2", "pp2"] and all("error" not in r for r in reports)
    assert "speedups are against plan 1" in result.stdout
    assert result.stdout.count("3 requests together") == 3
    assert all(r["concurrency"] == 3 and r["aggregate_tokens_per_second"] > 0 for r in reports)
    assert reports[1]["all_reduce"] == "torch.distributed over gloo"
    # The executors the cluster serves with, not a benchmark's own.
    assert [r["executor"] for r in reports] == ["LocalExecutor", "TensorParallelExecutor", "PipelineExecutor"]
    # Profiling reached every plan; on CPUs there are no kernel tables, and it says so.
    for plan in ("1", "tp2", "pp2"):
        log = (tmp_path / "plans-plans" / f"tiny-{plan}.log").read_text()
        assert "profile: kernel tables need a GPU" in log, plan


def test_bad_plans_are_one_line_errors():
    result = tandem_bench("--plans", "1,tp9")
    assert result.returncode == 1
    assert result.stderr.strip().startswith("tandem: error: --plans takes")


def test_on_a_cpu_the_shape_fits_the_free_ram_and_one_that_does_not_is_refused_first():
    from tandem.bench.shapes import CPU_CHOICES, default_shape, fit_problem, shape_bytes

    context, float32 = 700, 4
    for free_gb in (2, 8, 22, 64):
        chosen = default_shape("cpu", float32, float32, context, free_gb * 10**9)
        assert fit_problem(chosen, float32, float32, context, free_gb * 10**9, "cpu") is None
        larger = CPU_CHOICES[: CPU_CHOICES.index(chosen)]  # every larger choice does not fit
        assert all(fit_problem(c, float32, float32, context, free_gb * 10**9, "cpu") for c in larger)
    assert default_shape("cuda", 2, 2, context, 10**9) == "llama3-8b"  # GPUs keep their default
    assert shape_bytes("llama3-8b", 1, 2, 0) == shape_bytes("llama3-8b", 2, 2, 0) // 2

    # Refused before anything is allocated: one line, no traceback, a shape that fits named.
    result = tandem_bench_shape("llama3-70b", "--device", "cpu")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert re.fullmatch(
        r"tandem: error: shape llama3-70b needs [\d.]+ GB on cpu .* GB free there: --shape \S+ fits, .*", line
    ), line


def test_a_cpu_run_prints_its_progress_and_units_that_read_right():
    result = tandem_bench("--device", "cpu", "--prompt-lengths", "8", "--decode-tokens", "4")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        line for line in result.stderr.splitlines() if line.startswith("tandem bench: ")
    ]
    assert re.match(
        r"tandem bench: tiny on cpu, [\d.]+ [kMG]?B of [\d.]+ GB free; prompts of 8 tokens, 4 decoded",
        result.stderr,
    )
    assert "building the engine with random weights" in result.stderr
    floors = next(line for line in result.stdout.splitlines() if line.startswith("floors:"))
    # A CPU's figures in its own units, never "0 TFLOP/s" or "0.00 GB".
    assert re.match(
        r"floors: copy [\d.]+ [MGT]B/s, matmul [\d.]+ [MGT]FLOP/s; [\d.]+ [kMG]?B read per token", floors
    ), floors
    assert not re.search(r"\b0(\.0+)? [TG]", result.stdout), result.stdout
