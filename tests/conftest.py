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
from gpt_oss_checkpoints import build_gpt_oss_checkpoint
from moe_checkpoints import MOE_FAMILIES, build_moe_checkpoint
from netns import lan

# Modules whose tests start node or runner processes, a browser, or several engines: the slow
# tier. `pytest -m "not slow"` runs the rest in under two minutes on two cores; CI runs all.
SLOW_MODULES = {
    "api/test_anthropic.py",
    "api/test_content_type.py",
    "api/test_embeddings.py",
    "api/test_fuzz.py",
    "api/test_load.py",
    "api/test_metrics.py",
    "api/test_ollama.py",
    "api/test_openai.py",
    "api/test_prompt_size.py",
    "api/test_serving.py",
    "api/test_tools.py",
    "bench/test_bench_cli.py",
    "cli/test_cluster_cli.py",
    "cli/test_generate_cli.py",
    "cli/test_place_cli.py",
    "cluster/test_discovery.py",
    "cluster/test_discovery_nodes.py",
    "cluster/test_exposure_nodes.py",
    "cluster/test_control_walls.py",
    "cluster/test_node_loss.py",
    "cluster/test_nodes.py",
    "cluster/test_request_paths.py",
    "dashboard/test_cluster_views.py",
    "dashboard/test_dashboard.py",
    "dashboard/test_render.py",
    "engine/test_matches_transformers.py",
    "engine/test_run_ahead.py",
    "engine/test_tensor_parallel.py",
    "images/test_quantized_serving.py",
    "mlx_engine/test_mlx_matches_transformers.py",
    "mlx_engine/test_mlx_profile_bench.py",
    "mlx_engine/test_mlx_quantized.py",
    "mlx_engine/test_mlx_stages.py",
    "runner/test_gpt_oss_pipeline.py",
    "runner/test_paged_pipeline.py",
    "runner/test_pipeline.py",
    "runner/test_rendezvous.py",
    "runner/test_tensor_parallel_runners.py",
    "runner/test_wire.py",
    "store/test_download.py",
    "store/test_download_errors.py",
    "store/test_ollama_pull.py",
    "store/test_peer_files.py",
    "tools/test_soak.py",
}

TEST_DEVICE = os.environ.get("TANDEM_TEST_DEVICE", "cpu")
TEST_DTYPE = os.environ.get("TANDEM_TEST_DTYPE", "float32")


def pytest_collection_modifyitems(items) -> None:
    tests = Path(__file__).parent
    for item in items:
        if Path(item.fspath).relative_to(tests).as_posix() in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


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


@pytest.fixture(scope="session")
def quantizable_factory(tmp_path_factory):
    """`make(family, **overrides)`: a tiny float32 checkpoint whose projections divide into groups
    of 32 (tests/quant_checkpoints.py), built once per session."""
    from quant_checkpoints import build_quantizable

    cache: dict[tuple, TinyCheckpoint] = {}

    def make(family: str, **overrides) -> TinyCheckpoint:
        key = (family, tuple(sorted(overrides.items())))
        if key not in cache:
            cache[key] = build_quantizable(tmp_path_factory.mktemp("source"), family, **overrides)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def quantized_factory(tmp_path_factory, quantizable_factory):
    """`make(format_name, family="llama-gqa")`: that checkpoint written in one of the on-disk
    formats of tests/quant_checkpoints.py, with its dequantized twin, built once per session."""
    from quant_checkpoints import FORMATS, quantize_checkpoint

    cache: dict[tuple, object] = {}

    def make(format_name: str, family: str = "llama-gqa"):
        key = (format_name, family)
        if key not in cache:
            # GPTQ packs 8 outputs a word, so a quantized head needs a vocabulary of a multiple of 8
            # (296 is not a multiple of 16, which the CPU int4 kernel's padding must handle).
            overrides = {"vocab_size": 296} if FORMATS[format_name].get("head") else {}
            source = quantizable_factory(family, **overrides)
            cache[key] = quantize_checkpoint(source, tmp_path_factory.mktemp(format_name), format_name)
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


@pytest.fixture(scope="session")
def gpt_oss_checkpoint_factory(tmp_path_factory):
    """Tiny gpt-oss checkpoints by `gpt_oss_checkpoints.GPT_OSS_FAMILIES` name, built once."""
    cache: dict[tuple, TinyCheckpoint] = {}

    def make(family: str, **options) -> TinyCheckpoint:
        key = (family, tuple(sorted(options.items())))
        if key not in cache:
            cache[key] = build_gpt_oss_checkpoint(tmp_path_factory.mktemp(family), family, **options)
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
