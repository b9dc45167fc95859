"""Shared fixtures. TANDEM_TEST_DEVICE / TANDEM_TEST_DTYPE run the engine tests on a GPU
(for example `TANDEM_TEST_DEVICE=cuda TANDEM_TEST_DTYPE=bfloat16`); the default is CPU float32."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from checkpoints import FAMILIES, TinyCheckpoint, build_checkpoint
from moe_checkpoints import MOE_FAMILIES, build_moe_checkpoint
from netns import lan

TEST_DEVICE = os.environ.get("TANDEM_TEST_DEVICE", "cpu")
TEST_DTYPE = os.environ.get("TANDEM_TEST_DTYPE", "float32")


@pytest.fixture(scope="session")
def checkpoint_factory(tmp_path_factory):
    cache: dict[tuple, TinyCheckpoint] = {}

    def make(family: str, **options) -> TinyCheckpoint:
        key = (family, tuple(sorted(options.items())))
        if key not in cache:
            directory = tmp_path_factory.mktemp(family.replace(".", "_"))
            cache[key] = build_checkpoint(directory, family, **options)
        return cache[key]

    return make


@pytest.fixture(params=sorted(FAMILIES))
def family(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def moe_checkpoint_factory(tmp_path_factory):
    """Tiny mixture-of-experts checkpoints by `moe_checkpoints.MOE_FAMILIES` name, built once."""
    cache: dict[tuple, TinyCheckpoint] = {}

    def make(family: str, **options) -> TinyCheckpoint:
        key = (family, tuple(sorted(options.items())))
        if key not in cache:
            directory = tmp_path_factory.mktemp(family.replace(".", "_"))
            cache[key] = build_moe_checkpoint(directory, family, **options)
        return cache[key]

    return make


@pytest.fixture(params=sorted(MOE_FAMILIES))
def moe_family(request) -> str:
    return request.param


@pytest.fixture
def make_lan():
    """`make_lan(count)`: a private LAN of network namespaces (see tests/netns.py), torn down after
    the test. Skips the test where namespaces cannot be created."""
    with contextlib.ExitStack() as stack:
        yield lambda count: stack.enter_context(lan(count))
