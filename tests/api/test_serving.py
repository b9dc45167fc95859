"""How the node serves API requests: launching a model a request names, the queue limit (429 in
each API's error shape), and a client that goes away mid-request (its request is aborted and its
slot comes back, as the runner's own counts show)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import psutil
import pytest

from nodes import launch, running_nodes, start_node, wait_for

from .api_expected import PROMPTS, greedy, user
from .metrics_support import scrape, total

LONG = {"max_tokens": 900, "extra_body": {"ignore_eos": True}}  # ~900 tokens: seconds of work
WHOLE = {"max_tokens": 300, "extra_body": {"ignore_eos": True}}  # a third of that, run to the end


def openai_client(node) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{node.url}/v1", api_key="unused", max_retries=0)


def test_a_request_for_a_model_not_running_launches_it_once(tmp_path, demo_engine):
    with running_nodes(tmp_path, 1) as (node,), openai_client(node) as client:
        assert node.http.get("/v1/instances").json() == []
        expected = greedy(demo_engine, messages=user(PROMPTS[0]), max_tokens=12)

        def ask(_: int) -> str:
            reply = client.chat.completions.create(
                model="demo", messages=user(PROMPTS[0]), temperature=0, max_tokens=12
            )
            return reply.choices[0].message.content

        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(ask, range(3)))
        assert answers == [expected.text] * 3
        instances = node.http.get("/v1/instances").json()
        assert [(i["model"], i["status"]) for i in instances] == [("demo", "ready")]
        fits = node.http.get("/v1/placements").json()
        assert fits[0]["model"] == "demo" and fits[0]["fits"] is True
        assert fits[0]["instances"] == [instances[0]["instance_id"]]


@pytest.fixture(scope="module")
def one_slot_node(tmp_path_factory):
    """A node whose instances queue one request, serving the demo with one slot: one request
    running and one waiting."""
    with running_nodes(tmp_path_factory.mktemp("one-slot"), 1, extra_args=("--queue-limit", "1")) as (node,):
        node.instance = launch(node, model="demo", sequences=1, context=1024)
        yield node


def load_of(node, instance_id: str) -> dict:
    response = node.http.get(f"/v1/instances/{instance_id}/load")
    assert response.status_code == 200, response.text
    return response.json()


def idle(node, instance_id: str) -> bool:
    load = load_of(node, instance_id)
    return load["requests"] == 0 and load["waiting"] == 0


def test_requests_beyond_the_queue_limit_get_429_with_retry_after(one_slot_node):
    node = one_slot_node
    instance_id = node.instance["instance_id"]
    before = scrape(node)
    with openai_client(node) as client:
        streams = [
            client.chat.completions.create(model="demo", messages=user(p), stream=True, **LONG)
            for p in PROMPTS[:2]
        ]
        try:
            wait_for(lambda: load_of(node, instance_id)["waiting"] == 1, what="the second request to wait")
            assert load_of(node, instance_id) == {"requests": 2, "waiting": 1, "slots": 1, "queue_limit": 1}
            with pytest.raises(openai.RateLimitError) as refused:
                client.chat.completions.create(model="demo", messages=user("hi"), max_tokens=3)
            assert refused.value.response.headers["retry-after"] == "1"
            assert refused.value.code == "rate_limit_exceeded"
            assert "queue is full" in refused.value.message
            anthropic_style = node.http.post(
                "/v1/messages", json={"model": "demo", "max_tokens": 3, "messages": user("hi")}
            )
            assert anthropic_style.status_code == 429
            assert anthropic_style.json()["error"]["type"] == "rate_limit_error"
            assert anthropic_style.headers["retry-after"] == "1"
            ollama_style = node.http.post("/api/chat", json={"model": "demo", "messages": user("hi")})
            assert ollama_style.status_code == 429 and "queue is full" in ollama_style.json()["error"]
            busy = scrape(node)  # /metrics sees the two in flight, and the three turned away
            assert total(busy, "tandem_requests_in_flight", model="demo") == 2
            # Waiting for a first token: the second, unless the paged cache let it start beside the
            # first (its blocks share one sequence's worth; the newer is preempted when they run out).
            assert total(busy, "tandem_requests_waiting", model="demo") <= 1
            refused = total(busy, "tandem_requests_total", outcome="refused")
            assert refused - total(before, "tandem_requests_total", outcome="refused") == 3
        finally:
            for stream in streams:
                stream.close()
        wait_for(
            lambda: (
                total(scrape(node), "tandem_requests_total", outcome="aborted")
                - total(before, "tandem_requests_total", outcome="aborted")
                == 2
            ),
            what="the two streams closed mid-answer to count as aborted",
        )

        def served() -> bool:
            try:
                client.chat.completions.create(model="demo", messages=user("hi"), max_tokens=3)
            except openai.RateLimitError:
                return False
            return True

        wait_for(served, timeout=20, what="the limit to admit requests again")
    wait_for(lambda: idle(node, instance_id), what="the runner to hold no request")


def test_a_client_leaving_mid_request_aborts_it_and_frees_its_slot(one_slot_node):
    """With one slot, a request that kept running after its client left would hold up the next
    one for its whole length (900 tokens); so leaving five of them in turn must take less than
    running two requests of 300 tokens. The runner's counts come back to zero."""
    node = one_slot_node
    instance_id = node.instance["instance_id"]
    with openai_client(node) as client:
        started = time.monotonic()
        whole = client.chat.completions.create(model="demo", messages=user(PROMPTS[0]), **WHOLE)
        full_seconds = time.monotonic() - started
        assert whole.usage.completion_tokens == 300

        started = time.monotonic()
        for prompt in PROMPTS[:5]:
            stream = client.chat.completions.create(model="demo", messages=user(prompt), stream=True, **LONG)
            received = [chunk for chunk, _ in zip(stream, range(4), strict=False)]
            assert len(received) == 4
            assert load_of(node, instance_id)["requests"] == 1
            stream.close()  # the client leaves after three tokens
            wait_for(lambda: idle(node, instance_id), timeout=5, what="the abort to reach the runner")
        with pytest.raises(httpx.ReadTimeout):  # and one that is not streamed leaves too
            node.http.post(
                "/v1/chat/completions",
                json={"model": "demo", "messages": user("hi"), "max_tokens": 900, "ignore_eos": True},
                timeout=httpx.Timeout(30.0, read=0.5),
            )
        reply = client.chat.completions.create(
            model="demo", messages=user(PROMPTS[1]), max_tokens=5, extra_body={"ignore_eos": True}
        )
        assert reply.choices[0].finish_reason == "length"
        left_seconds = time.monotonic() - started
    assert left_seconds < 2 * full_seconds, (left_seconds, full_seconds)
    wait_for(lambda: node.log_text().count("the client left") >= 6, what="six aborts in the node's log")
    assert node.http.get("/v1/instances").json()[0]["status"] == "ready"
    wait_for(lambda: idle(node, instance_id), what="the runner to hold no request")


def test_an_api_key_guards_every_api_route_but_not_the_cluster(tmp_path):
    key = "sk-test-0123456789"
    with running_nodes(tmp_path, 1, api_key=key) as (first,):
        second = None
        try:
            # The second node takes its key from the environment; the nodes still join each other
            # over the signed /internal routes.
            second = start_node(tmp_path, "second", [first.address], env={"TANDEM_API_KEY": key})
            second.http.headers["Authorization"] = f"Bearer {key}"
            wait_for(lambda: len(first.cluster()["nodes"]) == 2 and len(second.cluster()["nodes"]) == 2)
            for node in (first, second):
                bare = httpx.Client(base_url=node.url)
                response = bare.get("/v1/models")
                assert response.status_code == 401
                assert response.json()["error"]["code"] == "invalid_api_key"
                assert bare.get("/api/tags").status_code == 401
                assert "error" in bare.get("/api/tags").json()
                anthropic_style = bare.post("/v1/messages", json={}, headers={"x-api-key": "wrong"})
                assert anthropic_style.status_code == 401
                assert anthropic_style.json()["error"]["type"] == "authentication_error"
                assert bare.get("/v1/cluster").status_code == 401
                document = bare.get("/openapi.json")
                assert document.status_code == 200 and "securitySchemes" in document.json()["components"]
                assert bare.get("/api/tags", headers={"Authorization": f"Bearer {key}"}).status_code == 200
                assert bare.get("/v1/models", headers={"x-api-key": key}).status_code == 200
                bare.close()
            wrong = openai.OpenAI(base_url=f"{second.url}/v1", api_key="wrong", max_retries=0)
            with wrong, pytest.raises(openai.AuthenticationError):
                wrong.models.list()
            with openai.OpenAI(base_url=f"{second.url}/v1", api_key=key, max_retries=0) as right:
                assert "demo" in [model.id for model in right.models.list()]
        finally:
            if second is not None:
                second.stop()


def test_every_node_serves_every_instance_and_aborts_across_nodes(tmp_path, demo_engine):
    with running_nodes(tmp_path, 2) as nodes:
        wait_for(lambda: all(len(n.cluster()["nodes"]) == 2 for n in nodes), what="two nodes to meet")
        coordinator = nodes[0].cluster()["coordinator"]
        follower = next(n for n in nodes if n.node_id != coordinator)
        expected = greedy(demo_engine, messages=user(PROMPTS[0]), max_tokens=12)

        # Requests at both nodes at once name a model nobody runs: the coordinator launches it
        # once, and every request is served by that one instance.
        def ask(node) -> str:
            with openai_client(node) as client:
                reply = client.chat.completions.create(
                    model="demo", messages=user(PROMPTS[0]), temperature=0, max_tokens=12
                )
                return reply.choices[0].message.content

        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(ask, [follower, *nodes, follower]))
        assert answers == [expected.text] * 4
        assert len(follower.http.get("/v1/instances").json()) == 1

        # One slot on one node, requests at the other: leaving clients still free the slot.
        driver, taker = nodes
        single = launch(driver, model="demo", sequences=1, context=1024, devices=[f"{driver.node_id}/cpu"])
        with openai_client(taker) as client:
            started = time.monotonic()
            client.chat.completions.create(model=single["instance_id"], messages=user(PROMPTS[1]), **WHOLE)
            full_seconds = time.monotonic() - started
            started = time.monotonic()
            for prompt in PROMPTS[:3]:
                stream = client.chat.completions.create(
                    model=single["instance_id"], messages=user(prompt), stream=True, **LONG
                )
                assert len([chunk for chunk, _ in zip(stream, range(4), strict=False)]) == 4
                stream.close()
            client.chat.completions.create(model=single["instance_id"], messages=user("hi"), max_tokens=5)
            assert time.monotonic() - started < 1.5 * full_seconds
        # The taker asks the driver's node for the counts: nothing is left running there.
        wait_for(lambda: idle(taker, single["instance_id"]), what="the runner to hold no request")


def test_an_instance_whose_runner_died_is_a_503_in_each_api_shape(tmp_path):
    with running_nodes(tmp_path, 1) as (node,):
        instance_id = launch(node, model="demo", context=256)["instance_id"]
        runners = [
            child
            for child in psutil.Process(node.process.pid).children(recursive=True)
            if "tandem.runner" in child.cmdline() and instance_id in " ".join(child.cmdline())
        ]
        assert len(runners) == 1
        runners[0].kill()  # the runner this test's node started
        wait_for(lambda: node.http.get(f"/v1/instances/{instance_id}").json()["status"] == "failed")
        with openai_client(node) as client, pytest.raises(openai.InternalServerError) as failed:
            client.chat.completions.create(model=instance_id, messages=user("hi"), max_tokens=3)
        assert failed.value.status_code == 503 and "runner exited" in failed.value.message
        assert failed.value.body["type"] == "service_unavailable_error"  # type: ignore[index]
        anthropic_style = node.http.post(
            "/v1/messages", json={"model": instance_id, "max_tokens": 3, "messages": user("hi")}
        )
        assert anthropic_style.status_code == 503
        assert anthropic_style.json()["error"]["type"] == "api_error"
        ollama_style = node.http.post("/api/chat", json={"model": instance_id, "messages": user("hi")})
        assert ollama_style.status_code == 503 and "runner exited" in ollama_style.json()["error"]
        load = node.http.get(f"/v1/instances/{instance_id}/load")
        assert load.status_code == 400 and "failed" in load.json()["error"]
