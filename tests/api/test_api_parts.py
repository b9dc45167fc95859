"""The API's pure parts: which error format a path speaks, the key a client presents, the
in-flight limit, model names, and where the node's options come from."""

from __future__ import annotations

import argparse

import pytest

from tandem.api.auth import needs_key, presented_key
from tandem.api.errors import Family, family_of
from tandem.api.in_flight import InFlightCounts
from tandem.api.serving import without_default_tag
from tandem.cli import node as node_cli
from tandem.cluster.state import Instance
from tandem.errors import TandemError
from tandem.store.resolve import resolve_model_dir


@pytest.mark.parametrize(
    "path,headers,family",
    [
        ("/v1/chat/completions", {}, Family.OPENAI),
        ("/v1/completions", {}, Family.OPENAI),
        ("/v1/embeddings", {}, Family.OPENAI),
        ("/v1/models", {}, Family.OPENAI),
        ("/v1/models", {"anthropic-version": "2023-06-01"}, Family.ANTHROPIC),
        ("/v1/messages", {}, Family.ANTHROPIC),
        ("/api/chat", {}, Family.OLLAMA),
        ("/api/tags", {}, Family.OLLAMA),
        ("/v1/instances/abc/generate", {}, Family.TANDEM),
        ("/v1/placements", {}, Family.TANDEM),
        ("/v1/cluster", {}, Family.TANDEM),
        ("/internal/state", {}, Family.TANDEM),
    ],
)
def test_each_path_speaks_its_apis_error_format(path, headers, family):
    assert family_of(path, headers) is family


def test_keys_come_from_bearer_tokens_or_x_api_key():
    assert presented_key({"authorization": "Bearer  abc "}) == "abc"
    assert presented_key({"authorization": "bearer abc"}) == "abc"
    assert presented_key({"x-api-key": "xyz"}) == "xyz"
    assert presented_key({"authorization": "Basic abc"}) is None
    assert presented_key({}) is None
    assert needs_key("/v1/models") and needs_key("/api/tags")
    assert not needs_key("/internal/heartbeat") and not needs_key("/openapi.json") and not needs_key("/")


def instance(slots: int) -> Instance:
    return Instance(instance_id="i1", model="demo", placement=None, runners=(), num_slots=slots)  # type: ignore[arg-type]


def test_in_flight_counts_are_per_slot_and_released_once():
    counts = InFlightCounts()
    served = instance(slots=2)
    releases = [counts.count_in(served) for _ in range(3)]
    assert counts.load(served) == 1.5
    releases[0]()
    releases[0]()  # a second release of the same request changes nothing
    assert counts.in_flight["i1"] == 2
    for release in releases[1:]:
        release()
    assert "i1" not in counts.in_flight


def test_ollama_names_drop_the_default_tag():
    assert without_default_tag("demo:latest") == "demo"
    assert without_default_tag("demo") == "demo"
    assert without_default_tag("qwen:7b") == "qwen:7b"


@pytest.mark.parametrize("name", ["~nobody-here/model", "x" * 5000, "a\x00b", "/nonexistent"])
def test_model_names_that_name_nothing_are_clear_errors(name):
    with pytest.raises(TandemError, match="not found"):
        resolve_model_dir(name)


def parse_node_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    node_cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_the_api_key_comes_from_the_flag_else_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TANDEM_API_KEY", "from-env")
    base = ["--data-dir", str(tmp_path), "--discovery", "none"]
    assert node_cli.options_from_args(parse_node_args(base)).api_key == "from-env"
    flagged = node_cli.options_from_args(parse_node_args([*base, "--api-key", "from-flag"]))
    assert flagged.api_key == "from-flag"
    monkeypatch.delenv("TANDEM_API_KEY")
    options = node_cli.options_from_args(parse_node_args([*base, "--queue-limit", "6"]))
    assert options.api_key is None and options.queue_limit == 6


def test_the_api_opens_to_other_machines_by_flag_or_environment(monkeypatch, tmp_path):
    base = ["--data-dir", str(tmp_path), "--discovery", "none"]
    monkeypatch.delenv("TANDEM_OPEN_API", raising=False)
    assert node_cli.options_from_args(parse_node_args(base)).open_api is False
    assert node_cli.options_from_args(parse_node_args([*base, "--open-api"])).open_api is True
    monkeypatch.setenv("TANDEM_OPEN_API", "1")
    assert node_cli.options_from_args(parse_node_args(base)).open_api is True
