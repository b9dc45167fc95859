"""`tandem download` as a user runs it, against a Hub stand-in: only a range's shards, resuming
after a kill, rejecting corrupt bytes, sharing the cache with `huggingface_hub`."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from huggingface_hub import hf_hub_download

from store_support import METADATA, REPO, assert_one_line_error, shards_by_name, tandem
from tandem.engine.loader import load_stage, parameter_bytes
from tandem.model.config import load_model_config
from tandem.model.stage import LayerRange, StageSpec


def snapshot_files(snapshot: Path) -> set[str]:
    return {p.name for p in snapshot.iterdir()}


def blobs(env: dict[str, str]) -> Path:
    return Path(env["HF_HOME"]) / "hub" / "models--tiny--llama" / "blobs"


def test_a_layer_range_fetches_only_its_shards_then_the_rest(hub, hf_env, sharded):
    result = tandem("download", REPO, "--layers", "2:4", env=hf_env)
    assert result.returncode == 0, result.stderr
    snapshot = Path(result.stdout.strip())
    assert (
        snapshot == Path(hf_env["HF_HOME"]) / "hub" / "models--tiny--llama" / "snapshots" / hub.commits[REPO]
    )
    stage_shards = shards_by_name(sharded.path, 2, 4)
    assert len(stage_shards) < 6  # the test means something only if some shards are left out
    assert snapshot_files(snapshot) == METADATA | stage_shards
    assert sorted(hub.fetched()) == sorted(METADATA | stage_shards)
    assert "fetched 9 files" in result.stderr and "ETA" in result.stderr  # progress, then the summary

    # The files are enough to load the stage, in place.
    stage = load_stage(snapshot, StageSpec(LayerRange(2, 4), 4), torch.device("cpu"), torch.float32)
    config = load_model_config(snapshot)
    expected = 2 * config.layer_parameter_count() + config.head_parameter_count()
    assert parameter_bytes(stage) == 4 * expected

    # The rest of the model: only the shards not yet here.
    hub.log.clear()
    result = tandem("download", REPO, env=hf_env)
    assert result.returncode == 0, result.stderr
    all_shards = {f"model-0000{i}-of-00006.safetensors" for i in range(1, 7)}
    assert snapshot_files(snapshot) == METADATA | all_shards
    assert sorted(hub.fetched()) == sorted(all_shards - stage_shards)

    # huggingface_hub sees the same cache (blobs named by their sha256, as it names them) ...
    cache_dir = Path(hf_env["HF_HOME"]) / "hub"
    for name in sorted(all_shards):
        found = hf_hub_download(REPO, name, cache_dir=cache_dir, local_files_only=True)
        assert Path(found) == snapshot / name
        assert (
            Path(os.path.realpath(found)).name
            == hashlib.sha256((sharded.path / name).read_bytes()).hexdigest()
        )
    # ... and downloads from the stand-in exactly what Tandem did (the stand-in speaks its protocol).
    fresh = hf_hub_download(
        REPO, "model-00006-of-00006.safetensors", cache_dir=cache_dir.parent / "other", endpoint=hub.url
    )
    assert Path(fresh).read_bytes() == (snapshot / "model-00006-of-00006.safetensors").read_bytes()

    # With the Hub unreachable, the cache serves: a repo id works as a model name offline.
    offline = {**hf_env, "HF_HUB_OFFLINE": "1"}
    result = tandem("generate", "--model", REPO, "--prompt", "The quick", "--max-tokens", "4", env=offline)
    assert result.returncode == 0, result.stderr
    assert "prompt" in result.stderr


def test_a_killed_download_resumes_where_it_stopped(hub, hf_env, sharded):
    hub.rate = 60_000  # bytes per second: a shard takes about two seconds
    process = subprocess.Popen(
        [sys.executable, "-m", "tandem.cli.main", "download", REPO],
        env=hf_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        partial = None
        deadline = time.monotonic() + 60
        while partial is None and time.monotonic() < deadline:
            found = [p for p in blobs(hf_env).glob("*.incomplete")] if blobs(hf_env).is_dir() else []
            partial = next((p for p in found if p.stat().st_size > 20_000), None)
            time.sleep(0.05)
        assert partial is not None, "no download got under way"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    held = partial.stat().st_size
    sha = partial.name.removesuffix(".incomplete")
    whole = next(
        p for p in sharded.path.glob("*.safetensors") if hashlib.sha256(p.read_bytes()).hexdigest() == sha
    )
    assert 0 < held < whole.stat().st_size

    finished_before = {p.name for p in blobs(hf_env).iterdir() if "." not in p.name}
    hub.rate = None
    hub.log.clear()
    result = tandem("download", REPO, env=hf_env)
    assert result.returncode == 0, result.stderr
    resumed = [e for e in hub.log if e.path == f"/cdn/{sha}"]
    assert [e.range for e in resumed] == [f"bytes={held}-"]  # one request, from where it stopped
    assert not [e for e in hub.log if e.path.removeprefix("/cdn/") in finished_before]
    assert not list(blobs(hf_env).glob("*.incomplete"))
    snapshot = Path(result.stdout.strip())
    for path in snapshot.iterdir():
        assert path.read_bytes() == (sharded.path / path.name).read_bytes()


def test_a_corrupted_file_is_rejected_and_never_enters_the_cache(hub, hf_env, sharded):
    bad = "model-00006-of-00006.safetensors"
    hub.corrupt = {bad}
    line = assert_one_line_error(tandem("download", REPO, env=hf_env), bad, "failed verification", "sha256")
    assert "deleted" in line
    sha = hashlib.sha256((sharded.path / bad).read_bytes()).hexdigest()
    assert not (blobs(hf_env) / sha).exists()
    assert not list(blobs(hf_env).glob("*.incomplete"))

    hub.corrupt = set()
    hub.log.clear()
    result = tandem("download", REPO, env=hf_env)
    assert result.returncode == 0, result.stderr
    assert hub.fetched() == [bad]  # everything before it was kept
