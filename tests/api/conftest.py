"""Fixtures of the API tests: one node with the demo model running, shared by the OpenAI,
Anthropic and Ollama tests, and the local engine that computes the expected answers.

Both run in float32 (the demo checkpoint is bfloat16, which a CPU runs by default): in bfloat16
a batch of another shape rounds the logits differently, and where the two best tokens lie closer
than bfloat16 resolves (one of the test prompts: 11.331 against 11.288), the greedy pick of a
request alone and of the same request in a batch differ. float32 gives the same answer either way."""

from __future__ import annotations

import pytest

from nodes import launch, running_nodes
from tandem.runner.assemble import create_local_engine
from tandem.store.resolve import DEMO_MODEL_DIR

from .api_expected import CONTEXT


@pytest.fixture(scope="session")
def demo_engine():
    return create_local_engine(DEMO_MODEL_DIR, device="cpu", dtype="float32", max_context=CONTEXT)


@pytest.fixture(scope="session")
def api_models_dir(tmp_path_factory):
    """The demo node's --models-dir: tests put the checkpoints they launch on it by path here."""
    return tmp_path_factory.mktemp("api-models")


@pytest.fixture(scope="session")
def demo_node(tmp_path_factory, api_models_dir):
    """A node serving the demo model (context 512, 8 sequences, float32: exact under batching);
    `demo_node.instance` is its instance. Checkpoints under `api_models_dir` launch on it by path."""
    extra_args = ("--models-dir", str(api_models_dir))
    with running_nodes(tmp_path_factory.mktemp("api"), 1, extra_args=extra_args) as (node,):
        node.instance = launch(node, model="demo", context=CONTEXT, dtype="float32")
        yield node
