"""`tandem bench --shape flux-tiny` end to end on the CPU: the report's structure and arithmetic
(the FLUX.1-dev figures come from a GPU)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_image_bench_report(tmp_path):
    report_path = tmp_path / "flux.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tandem.cli.main",
            "bench",
            "--shape",
            "flux-tiny",
            "--device",
            "cpu",
            "--size",
            "48",
            "--steps",
            "3",
            "--baseline",
            "--json",
            str(report_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "of the floor" in result.stdout and "diffusers FluxPipeline" in result.stdout
    report = json.loads(report_path.read_text())
    assert (report["width"], report["height"], report["steps"]) == (48, 48, 3)
    assert report["floor_seconds"] == report["steps"] * report["flops_per_step"] / report["matmul_flops"]
    engine = report["engine"]
    assert engine["seconds_per_image"] > 0 and report["baseline"]["seconds_per_image"] > 0
    assert abs(engine["fraction_of_floor"] - report["floor_seconds"] / engine["seconds_per_image"]) < 1e-12
    # float32 on the same random weights and seed: the same image as diffusers'
    assert report["max_pixel_difference"] <= 1


def test_bad_image_size_is_one_line():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tandem.cli.main",
            "bench",
            "--shape",
            "flux-tiny",
            "--device",
            "cpu",
            "--size",
            "50",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode != 0
    assert "multiple of 16" in result.stderr and "Traceback" not in result.stderr


def test_quantized_image_bench_runs_on_the_cpu(tmp_path):
    """`--quantize int4` through the command line: the engine runs its quantized blocks."""
    report_path = tmp_path / "int4.json"
    command = [sys.executable, "-m", "tandem.cli.main", "bench", "--shape", "flux-tiny", "--device"]
    command += ["cpu", "--dtype", "bfloat16", "--size", "32", "--steps", "2", "--quantize", "int4"]
    result = subprocess.run(
        [*command, "--json", str(report_path)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert "flux-tiny bfloat16, blocks int4 on cpu" in result.stdout
    report = json.loads(report_path.read_text())
    assert report["quantize"] == "int4" and report["engine"]["seconds_per_image"] > 0


def test_every_bench_format_holds_fewer_bytes():
    """int8, int4 and fp8 (the benchmark's own) each run a step on the CPU, and hold the
    transformer in fewer bytes than bfloat16 does."""
    import torch

    from tandem.bench.images import run_image_benchmark

    held = {}
    for mode in (None, "int8", "int4", "fp8"):
        report = run_image_benchmark(
            "flux-tiny", torch.device("cpu"), torch.bfloat16, 32, 1, baseline=False, repeats=1, quantize=mode
        )
        assert report.quantize == mode and report.engine["seconds_per_image"] > 0
        held[mode] = report.weight_bytes
    assert held["int4"] < held["int8"] < held[None] * 0.75
    assert held["fp8"] < held[None] * 0.75
