"""What `tandem download` says when it cannot: one line each, naming the cause and the remedy."""

from __future__ import annotations

import socket
from pathlib import Path

from hub_standin import HubStandIn
from store_support import METADATA, REPO, assert_one_line_error, tandem


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_repo_the_hub_does_not_have(hf_env, hub):
    line = assert_one_line_error(
        tandem("download", "nobody/nothing", env=hf_env), "nobody/nothing", "not found"
    )
    assert hub.url in line
    assert_one_line_error(
        tandem("download", f"{REPO}@no-such-branch", env=hf_env), "no revision 'no-such-branch'"
    )


def test_a_gated_repo_needs_a_token_with_access(tmp_path, sharded, hf_env):
    with HubStandIn({"gated/llama": sharded.path}, gated=("gated/llama",), token="hf_right") as gated:
        env = {**hf_env, "HF_ENDPOINT": gated.url}
        line = assert_one_line_error(
            tandem("download", "gated/llama", env=env), "gated/llama is gated", "HF_TOKEN"
        )
        assert f"{gated.url}/gated/llama" in line
        assert not gated.fetched()  # refused before asking for a byte
        assert_one_line_error(
            tandem("download", "gated/llama", env={**env, "HF_TOKEN": "hf_wrong"}), "has no access"
        )
        result = tandem("download", "gated/llama", env={**env, "HF_TOKEN": "hf_right"})
        assert result.returncode == 0, result.stderr


def test_no_network_and_not_cached(hf_env):
    env = {**hf_env, "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}"}
    assert_one_line_error(
        tandem("download", "qwen2.5-0.5b", env=env),
        "qwen2.5-0.5b is not in the Hugging Face cache here",
        "cannot reach the Hub",
        "connect this machine to the internet and run `tandem download qwen2.5-0.5b`",
    )


def test_offline_names_the_missing_files(hf_env, hub):
    result = tandem("download", REPO, "--layers", "0:1", env=hf_env)
    assert result.returncode == 0, result.stderr
    offline = {**hf_env, "HF_HUB_OFFLINE": "1"}
    assert tandem("download", REPO, "--layers", "0:1", env=offline).returncode == 0  # the cache suffices
    line = assert_one_line_error(
        tandem("download", REPO, env=offline), "missing model-00003-of-00006.safetensors", "HF_HUB_OFFLINE"
    )
    assert "model-00006-of-00006.safetensors" in line
    assert "unset HF_HUB_OFFLINE" in line
    assert "model-00001-of-00006.safetensors" not in line  # that one is here


def test_a_download_that_cannot_fit_is_refused_before_it_starts(hf_env, hub):
    hub.advertised_sizes = {"model-00003-of-00006.safetensors": 2**60}
    line = assert_one_line_error(tandem("download", REPO, env=hf_env), "not enough disk space", "HF_HOME")
    assert str(Path(hf_env["HF_HOME"])) in line
    assert set(hub.fetched()) == METADATA  # no weight file was started


def test_bad_arguments(hf_env, hub):
    assert_one_line_error(tandem("download", REPO, "--layers", "3", env=hf_env), "START:END")
    assert_one_line_error(tandem("download", REPO, "--layers", "3:1", env=hf_env), "START:END")
    assert_one_line_error(
        tandem("download", REPO, "--layers", "0:9", env=hf_env), "past the model's 4 layers"
    )
    assert_one_line_error(tandem("download", "demo", env=hf_env), "already on this machine")
    assert_one_line_error(tandem("download", "no such model", env=hf_env), "not found", "tandem models")
