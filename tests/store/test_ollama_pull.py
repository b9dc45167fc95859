"""Models by name through the official `ollama` client against a live node whose Hub is the
stand-in: `pull` streams progress whose total is known from its first line, the pulled model is
listed and a request naming it launches it, `delete` removes it; a catalog id in an OpenAI
request launches the repo it stands for."""

from __future__ import annotations

import os
from pathlib import Path

import ollama
import openai
import pytest

from api.api_expected import greedy, user
from hub_standin import HubStandIn
from nodes import start_node, wait_for
from store_support import REPO
from tandem.runner.assemble import create_local_engine
from tandem.store.catalog import find_card

PROMPT = "The quick brown fox"


@pytest.fixture
def node(tmp_path, hf_env):
    node = start_node(tmp_path, "node", [], env=hf_env)
    try:
        wait_for(node.cluster, timeout=60, what="the node to answer")
        yield node
    finally:
        node.stop()


def test_pull_list_launch_by_name_and_delete(node, hub, hf_env, sharded):
    client = ollama.Client(host=node.url)
    hub.rate = 300_000  # bytes per second: a few seconds for the model, so progress is seen moving
    lines = list(client.pull(REPO, stream=True))
    hub.rate = None
    assert lines[0].status == "pulling manifest"
    assert [line.status for line in lines[-3:]] == ["verifying sha256 digest", "writing manifest", "success"]
    moving = lines[1:-3]
    everything = sum(f.stat().st_size for f in sharded.path.iterdir() if f.name != "README.md")
    assert len(moving) >= 3
    assert {line.total for line in moving} == {everything}  # the whole total from the first line on
    completed = [line.completed for line in moving]
    assert completed == sorted(completed) and completed[-1] == everything
    assert all(line.digest == f"sha1:{hub.commits[REPO]}" for line in moving)
    assert client.pull(REPO).status == "success"  # all here: nothing fetched
    assert REPO in [model.model for model in client.list().models]

    # A request naming the repo launches it, and answers as the engine does.
    engine = create_local_engine(sharded.path, device="cpu", dtype="float32", max_context=256)
    expected = greedy(engine, messages=user(PROMPT), max_tokens=8)
    reply = client.chat(
        model=REPO, messages=user(PROMPT), options={"temperature": 0, "num_predict": 8}, stream=False
    )
    assert reply.message.content == expected.text
    (instance,) = node.http.get("/v1/instances").json()
    assert instance["model"] == REPO and instance["status"] == "ready"

    with pytest.raises(ollama.ResponseError) as busy:
        client.delete(REPO)
    assert busy.value.status_code == 400 and "stop it first" in busy.value.error
    assert node.http.delete(f"/v1/instances/{instance['instance_id']}").status_code == 200
    wait_for(lambda: node.http.get("/v1/instances").json() == [], what="the instance to stop")
    assert client.delete(REPO).status == "success"
    assert not (hub_cache(hf_env) / "models--tiny--llama").exists()
    assert REPO not in [model.model for model in client.list().models]
    with pytest.raises(ollama.ResponseError) as gone:
        client.delete(REPO)
    assert gone.value.status_code == 404


def test_unknown_models_are_clear_errors(node):
    client = ollama.Client(host=node.url)
    with pytest.raises(ollama.ResponseError, match="tiny/missing not found"):
        list(client.pull("tiny/missing", stream=True))
    with pytest.raises(ollama.ResponseError) as missing:
        client.chat(model="tiny/missing", messages=user(PROMPT))
    assert missing.value.status_code == 404 and "tiny/missing not found" in missing.value.error
    with pytest.raises(ollama.ResponseError) as nonsense:
        client.pull("not a model name")
    assert nonsense.value.status_code == 400
    with pytest.raises(ollama.ResponseError) as demo:
        client.delete("demo")
    assert demo.value.status_code == 400


def hub_cache(env: dict[str, str]) -> Path:
    return Path(env["HF_HOME"]) / "hub"


def test_a_catalog_id_in_a_request_launches_its_repo(tmp_path, sharded):
    """`qwen2.5-0.5b` stands for its repo: the stand-in serves the tiny model under that repo id."""
    card = find_card("qwen2.5-0.5b")
    assert card is not None
    with HubStandIn({card.repo: sharded.path}) as stand_in:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        env = {**env, "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": stand_in.url}
        node = start_node(tmp_path, "node", [], env=env)
        try:
            wait_for(node.cluster, timeout=60, what="the node to answer")
            engine = create_local_engine(sharded.path, device="cpu", dtype="float32", max_context=256)
            expected = greedy(engine, messages=user(PROMPT), max_tokens=6)
            with openai.OpenAI(base_url=f"{node.url}/v1", api_key="unused", max_retries=0) as client:
                reply = client.chat.completions.create(
                    model=card.id, messages=user(PROMPT), temperature=0, max_tokens=6
                )
            assert reply.choices[0].message.content == expected.text
            (instance,) = node.http.get("/v1/instances").json()
            assert instance["model"] == card.id
            assert (tmp_path / "hf" / "hub" / ("models--" + card.repo.replace("/", "--"))).is_dir()
        finally:
            node.stop()
