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
