"""The soak in CI: half a minute of mixed OpenAI, Anthropic and Ollama traffic on a 3-node
loopback cluster while a follower holding a stage is killed and restarted (`tools/soak.py`;
run it for 10 minutes by hand). Every request must come back with its undisturbed greedy text,
no runner process may leak and the coordinator's memory must stay put."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SOAK = Path(__file__).parents[2] / "tools" / "soak.py"


def load_soak():
    spec = importlib.util.spec_from_file_location("soak", SOAK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_a_short_soak_with_a_follower_killed_loses_no_request(tmp_path, capsys):
    soak = load_soak()
    ok = soak.soak(
        minutes=0.5, kill_every=10, workers=3, rss_growth_mb=200, directory=tmp_path, prompts=soak.PROMPTS[:2]
    )
    summary = capsys.readouterr().out
    assert ok, summary  # ok needs at least one kill and one request
