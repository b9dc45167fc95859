"""Fixtures for the model store tests: a sharded tiny checkpoint served by a Hub stand-in.

(tests/store is a package so that this conftest is imported as `store.conftest`, not as a second
top-level `conftest` that would shadow the one other tests import from.)
"""

from __future__ import annotations

import os

import pytest

from hub_standin import HubStandIn
from store_support import REPO


@pytest.fixture(scope="session")
def sharded(checkpoint_factory):
    """A 4-layer Llama split into six ~130 KB shards, about one layer each."""
    return checkpoint_factory("llama-gqa", max_shard_size="150KB")


@pytest.fixture
def hub(sharded):
    with HubStandIn({REPO: sharded.path}) as stand_in:
        yield stand_in


@pytest.fixture
def hf_env(tmp_path, hub) -> dict[str, str]:
    """The environment of a `tandem` process whose Hub is the stand-in and whose cache is empty."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return {**env, "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_TELEMETRY": "1"}
