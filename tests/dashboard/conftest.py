"""Fixtures for the dashboard tests: Debian's chromium driven by Playwright, a 2-node cluster on
loopback whose first node offers a models folder, and screenshots saved as artifacts."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dashboard.pages import CHROMIUM, CHROMIUM_ARGS
from nodes import NodeProcess, start_node, wait_for


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium; Playwright gives it a fresh temporary profile (--user-data-dir)."""
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.fail(
            "the dashboard tests need Debian's chromium: apt-get install chromium (scripts/test does)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
            headless=True,
            args=CHROMIUM_ARGS,
        )
        yield browser
        browser.close()


@dataclass
class Cluster:
    nodes: list[NodeProcess]
    names: list[str]
    ids: list[str]
    slow_model: Path  # a tiny random checkpoint that never emits an end token, offered by node 0


def all_see(nodes: list[NodeProcess], count: int) -> bool:
    views = [node.cluster() for node in nodes]
    return all(len(view["nodes"]) == count for view in views) and len({v["coordinator"] for v in views}) == 1


@pytest.fixture(scope="session")
def slow_model(tmp_path_factory):
    """Random weights with no end token and a 4096-token context: an answer runs on until stopped
    (about 100 tokens/s on one CPU thread), so a test can always stop it midway."""
    from checkpoints import build_checkpoint

    folder = tmp_path_factory.mktemp("models")
    build_checkpoint(
        folder / "endless-tiny",
        "llama-gqa",
        max_position_embeddings=4096,
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=8,
    )
    return folder / "endless-tiny"


@pytest.fixture(scope="session")
def cluster(tmp_path_factory, slow_model) -> Iterator[Cluster]:
    """Nodes "alpha" and "beta" on loopback; alpha offers the slow model's folder."""
    directory = tmp_path_factory.mktemp("dashboard-cluster")
    nodes: list[NodeProcess] = []
    try:
        alpha = start_node(
            directory, "alpha", [], extra_args=("--name", "alpha", "--models-dir", str(slow_model.parent))
        )
        nodes.append(alpha)
        nodes.append(start_node(directory, "beta", [alpha.address], extra_args=("--name", "beta")))
        for node in nodes:
            wait_for(node.cluster, timeout=60, what=f"{node.address} to answer")
        wait_for(lambda: all_see(nodes, 2), timeout=30, what="alpha and beta to meet")
        yield Cluster(nodes, ["alpha", "beta"], [node.node_id for node in nodes], slow_model)
    finally:
        for node in nodes:
            node.stop()
