"""`tandem place` as a user runs it: a real process on the shipped example files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cli_helpers import assert_one_line_error
from model_configs import LLAMA_3_8B

ROOT = Path(__file__).parents[2]
EXAMPLES = ROOT / "docs" / "examples"
MACS = str(EXAMPLES / "four-mac-studios.json")
MIXED = str(EXAMPLES / "mixed-gpu-cpu.json")
KIMI = str(EXAMPLES / "kimi-k2-config.json")


def tandem_place(*args: str) -> subprocess.CompletedProcess:
    # This checkout's sources first, whatever tandem the interpreter has installed.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "tandem.cli.main", "place", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_kimi_k2_in_fp8_spreads_over_the_mac_studios():
    result = tandem_place(KIMI, "--topology", MACS, "--weight-bytes", "1")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "kimi-k2: 3 stages over gloo, 4096 tokens × 8 sequences"
    stages = [line for line in lines if line.startswith("  stage ")]
    assert len(stages) == 3
    assert (
        "studio-1" in stages[0] and "cpu" in stages[0] and "[0, " in stages[0] and "GB weights" in stages[0]
    )
    assert stages[-1].split("layers ")[1].startswith("[") and ", 61)" in stages[-1]
    assert any(line.startswith("predicted ") and "tokens/s" in line for line in lines)
    # A topology file's plan is a dry run already: the flag beside it is accepted, same plan.
    same = tandem_place(KIMI, "--topology", MACS, "--weight-bytes", "1", "--dry-run")
    assert same.returncode == 0 and same.stdout == result.stdout, same.stderr


def test_kimi_k2_in_float32_does_not_fit_and_says_why():
    assert_one_line_error(
        tandem_place(KIMI, "--topology", MACS, "--dtype", "float32", "--weight-bytes", "4"),
        "cannot place kimi-k2: kimi-k2 needs 4.1 TB for weights",
        "(4096 tokens × 8 sequences)",
        "the cluster has 1.8 TB free on 4 devices after a 10% margin",
    )


def test_a_checkpoint_directory_that_fits_one_gpu_stays_there(tmp_path):
    checkpoint = tmp_path / "Meta-Llama-3-8B"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps(LLAMA_3_8B))
    result = tandem_place(str(checkpoint), "--topology", MIXED, "--context", "8192", "--sequences", "4")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "Meta-Llama-3-8B: 1 stage over nccl, 8192 tokens × 4 sequences"
    assert "h100-server" in lines[1] and "cuda:0" in lines[1] and "[0, 32)" in lines[1]
    assert "note: fits on its fastest device" in lines


def test_mistakes_are_one_line_errors(tmp_path):
    assert_one_line_error(tandem_place(KIMI, "--topology", str(tmp_path / "none.json")), "not found")
    bad_topology = tmp_path / "cluster.json"
    bad_topology.write_text(json.dumps({"nodes": [{"id": "a", "devices": [{"kind": "tpu"}]}]}))
    assert_one_line_error(tandem_place(KIMI, "--topology", str(bad_topology)), "kind must be 'cuda' or 'cpu'")
    gpt2 = tmp_path / "gpt2-config.json"
    gpt2.write_text(json.dumps({"model_type": "gpt2"}))
    assert_one_line_error(tandem_place(str(gpt2), "--topology", MACS), "model_type 'gpt2'", "kimi_k2")
    assert_one_line_error(tandem_place(str(tmp_path / "nothing"), "--topology", MACS), "not found")
    assert_one_line_error(
        tandem_place(KIMI, "--topology", MACS, "--context", "0"), "context must be between 2"
    )
