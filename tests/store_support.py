"""Helpers for the model store tests (tests/store): the repo the Hub stand-in serves, running
`tandem` as a user does, and which shards a layer range needs, worked out independently."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

REPO = "tiny/llama"
NUM_LAYERS = 4
METADATA = {
    "config.json",
    "generation_config.json",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
}


def tandem(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tandem.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit code 1 and one error line (progress lines may precede it), holding every fragment."""
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("tandem: error: ")]
    assert len(lines) == 1, result.stderr
    assert result.stderr.strip().endswith(lines[0])
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def shards_by_name(checkpoint_dir: Path, start: int, end: int) -> set[str]:
    """The shard files a stage of layers [start, end) needs, worked out from tensor names alone
    (an oracle independent of the engine's meta-device view)."""
    weight_map = json.loads((checkpoint_dir / "model.safetensors.index.json").read_text())["weight_map"]
    needed = set()
    for tensor, file in weight_map.items():
        layer = re.match(r"model\.layers\.(\d+)\.", tensor)
        if layer:
            wanted = start <= int(layer.group(1)) < end
        elif tensor.startswith("model.embed_tokens"):
            wanted = start == 0
        else:  # lm_head, model.norm
            wanted = end == NUM_LAYERS
        if wanted:
            needed.add(file)
    return needed
