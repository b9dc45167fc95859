"""Fixtures of the API tests: one node with the demo model running, shared by the OpenAI,
Anthropic and Ollama tests, and the local engine that computes the expected answers; and a node
serving the demo's weights stored in float32, for the tests of many requests at once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from nodes import launch, running_nodes
from tandem.runner.assemble import create_local_engine
from tandem.store.resolve import DEMO_MODEL_DIR

from .api_expected import CONTEXT


@pytest.fixture(scope="session")
def demo_engine():
    return create_local_engine(DEMO_MODEL_DIR, device="cpu", dtype="float32", max_context=CONTEXT)


@pytest.fixture(scope="session")
def demo_node(tmp_path_factory):
    """A node serving the demo model (context 512, 8 sequences); `demo_node.instance` is its instance."""
    with running_nodes(tmp_path_factory.mktemp("api"), 1) as (node,):
        node.instance = launch(node, model="demo", context=CONTEXT)
        yield node


@pytest.fixture(scope="session")
def demo_float32(tmp_path_factory) -> Path:
    """The demo checkpoint with its weights stored in float32 (the CPU runs a checkpoint's dtype).

    For tests of many requests at once: in bfloat16 a batch of another shape rounds the logits
    differently, and where the two best tokens lie closer than bfloat16 resolves (one of the
    test prompts: 11.331 against 11.288), the greedy pick differs between a request alone and the
    same request in a batch. The float32 computation gives the same answer either way."""
    directory = tmp_path_factory.mktemp("demo-float32") / "demo"
    shutil.copytree(DEMO_MODEL_DIR, directory)
    weights = directory / "model.safetensors"
    save_file({name: t.to(torch.float32) for name, t in load_file(weights).items()}, weights)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "dtype": "float32"}))
    return directory


@pytest.fixture(scope="session")
def float32_node(tmp_path_factory, demo_float32):
    """A node serving `demo_float32` (context 512, 8 sequences); `.instance` is its instance."""
    with running_nodes(tmp_path_factory.mktemp("api-float32"), 1) as (node,):
        node.instance = launch(node, model=str(demo_float32), context=CONTEXT)
        yield node
