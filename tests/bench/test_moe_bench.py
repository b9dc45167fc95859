"""`tandem bench` on a toy mixture with latent attention (CPU): the engine and the `transformers`
baseline run the same random weights, and the floor counts the experts a token reads."""

from __future__ import annotations

import json
import subprocess
import sys

from tandem.bench.report import bytes_read_per_token
from tandem.bench.shapes import named_shape


def test_mixture_report_with_baseline(tmp_path):
    report_path = tmp_path / "report.json"
    arguments = [
        "--shape",
        "tiny-deepseek",
        "--device",
        "cpu",
        "--prompt-lengths",
        "8",
        "--decode-tokens",
        "4",
    ]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tandem.cli.main",
            "bench",
            *arguments,
            "--baseline",
            "--json",
            str(report_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(report_path.read_text())
    assert (
        report["engine"]["decode_tokens_per_second"] > 0
        and report["baseline"]["decode_tokens_per_second"] > 0
    )
    config, _ = named_shape("tiny-deepseek")
    assert report["weight_bytes_read_per_token"] == bytes_read_per_token(config, 4)


def test_the_floor_reads_the_active_experts_only():
    config, _ = named_shape("deepseek-v3")
    read = bytes_read_per_token(config, 1)
    assert 36e9 < read < 38e9 < config.total_parameter_count()  # "37B active" of 671B
    four, raw = named_shape("deepseek-v3:4")
    assert four.num_layers == 4 and raw["num_hidden_layers"] == 4
    assert [four.is_sparse_layer(i) for i in range(4)] == [False, False, False, True]
