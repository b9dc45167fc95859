"""The MLX device profile (measured through MLX; here on its CPU backend) and `tandem bench
--engine mlx` end to end with a toy shape: the report's structure and arithmetic."""

from __future__ import annotations

import json
import plistlib
import subprocess
import sys

from mlx_support import require_mlx

require_mlx()

import mlx.core as mx  # noqa: E402

from tandem.mlx.profile import (  # noqa: E402
    copy_bandwidth,
    macos_power_watts,
    matmul_flops,
    power_from_ioreg,
    profile_mlx_device,
)


def test_profile_measures_through_mlx_on_the_cpu():
    profile = profile_mlx_device("cpu")
    assert (profile.engine, profile.backend, profile.matmul_dtype) == ("mlx", "cpu", "float32")
    assert 0 < profile.memory_free <= profile.memory_total
    assert profile.working_set_limit is None
    # a 2-core machine shared with others still moves more than 10 MB/s and does 10 MFLOP/s
    assert profile.memory_bandwidth > 1e7 and profile.matmul_flops > 1e7
    assert profile.name


def test_measurements_scale_with_the_work():
    # Small sizes, to keep the test fast; the figures are rates, so they stay positive and finite.
    assert 0 < copy_bandwidth(mx.cpu, size=2**20, repeats=3) < 1e13
    assert 0 < matmul_flops(mx.cpu, mx.float32, size=64, repeats=3) < 1e15


def test_power_is_read_from_the_battery_controller_where_macos_reports_it():
    sample = plistlib.dumps([{"Voltage": 12000, "PowerTelemetryData": {"SystemPowerIn": 14250}}])
    assert power_from_ioreg(sample) == 14.25
    assert power_from_ioreg(plistlib.dumps([{"Voltage": 12000}])) is None  # a desktop: no battery
    assert power_from_ioreg(b"") is None and power_from_ioreg(b"not a plist") is None
    if sys.platform != "darwin":
        assert macos_power_watts() is None


def test_bench_reports_both_engines_on_one_shape(tmp_path):
    report_path = tmp_path / "mlx.json"
    options = [
        "--device",
        "cpu",
        "--prompt-lengths",
        "8,32",
        "--decode-tokens",
        "6",
        "--json",
        str(report_path),
    ]
    result = subprocess.run(
        [sys.executable, "-m", "tandem.cli.main", "bench", "--engine", "mlx", "--shape", "tiny", *options],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "mlx cpu float32" in result.stdout and "torch cpu float32" in result.stdout
    report = json.loads(report_path.read_text())
    assert report["shape"] == "tiny" and report["mlx_version"] == mx.__version__
    for engine in ("torch", "mlx"):
        figures = report[engine]
        assert figures["engine"] == engine and set(figures["ttft_seconds"]) == {"8", "32"}
        assert figures["decode_tokens_per_second"] > 0
        floor = figures["copy_bandwidth"] / report["weight_bytes_read_per_token"]
        assert abs(figures["decode_floor_tokens_per_second"] - floor) < 1e-6 * floor
