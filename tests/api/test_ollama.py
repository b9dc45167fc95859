"""The Ollama-compatible API over plain HTTP against a real node: JSON-lines streams and whole
answers equal the engine's greedy output."""

from __future__ import annotations

import json

from .api_expected import PROMPTS, greedy, user

GREEDY = {"temperature": 0}


def stream_lines(node, path: str, body: dict) -> list[dict]:
    with node.http.stream("POST", path, json=body) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("application/x-ndjson")
        return [json.loads(line) for line in response.iter_lines() if line.strip()]


def test_chat_streams_json_lines_equal_to_greedy_output(demo_node, demo_engine):
    messages = [{"role": "system", "content": "You are a herald."}, *user(PROMPTS[0])]
    expected = greedy(demo_engine, messages=messages)
    lines = stream_lines(demo_node, "/api/chat", {"model": "demo", "messages": messages, "options": GREEDY})
    assert all(not line["done"] for line in lines[:-1])
    assert "".join(line["message"]["content"] for line in lines) == expected.text
    last = lines[-1]
    assert last["done"] is True and last["done_reason"] == "stop"
    assert last["prompt_eval_count"] == expected.prompt_tokens
    assert last["eval_count"] == len(expected.token_ids)
    assert last["total_duration"] >= last["eval_duration"] > 0
    assert all(line["model"] == "demo" and line["created_at"].endswith("Z") for line in lines)


def test_chat_without_streaming(demo_node, demo_engine):
    # a prompt whose greedy answer runs past 7 tokens, so the length limit is what ends it
    prompt, expected = next(
        (p, e)
        for p in PROMPTS
        if (e := greedy(demo_engine, messages=user(p), max_tokens=7)).finish_reason == "length"
    )
    response = demo_node.http.post(
        "/api/chat",
        json={
            "model": "demo:latest",
            "messages": user(prompt),
            "stream": False,
            "options": {**GREEDY, "num_predict": 7, "num_ctx": 2048},
            "keep_alive": "5m",
        },
    )
    assert response.status_code == 200
    reply = response.json()
    assert reply["message"] == {"role": "assistant", "content": expected.text}
    assert reply["done"] is True and reply["done_reason"] == "length" and reply["eval_count"] == 7


def test_generate_applies_the_chat_template_unless_raw(demo_node, demo_engine):
    templated = greedy(demo_engine, messages=user(PROMPTS[2]))
    lines = stream_lines(
        demo_node, "/api/generate", {"model": "demo", "prompt": PROMPTS[2], "options": GREEDY}
    )
    assert "".join(line["response"] for line in lines) == templated.text
    assert lines[-1]["done"] is True
    raw = greedy(demo_engine, prompt="The king hath", max_tokens=15)
    response = demo_node.http.post(
        "/api/generate",
        json={
            "model": "demo",
            "prompt": "The king hath",
            "raw": True,
            "stream": False,
            "options": {**GREEDY, "num_predict": 15},
        },
    )
    assert response.json()["response"] == raw.text


def test_stop_option_cuts_the_text(demo_node, demo_engine):
    full = greedy(demo_engine, messages=user(PROMPTS[0])).text
    stop = full.split()[2]
    expected = greedy(demo_engine, messages=user(PROMPTS[0]), stop=(stop,))
    response = demo_node.http.post(
        "/api/chat",
        json={
            "model": "demo",
            "messages": user(PROMPTS[0]),
            "stream": False,
            "options": {**GREEDY, "stop": [stop]},
        },
    )
    assert response.json()["message"]["content"] == expected.text == full[: full.index(stop)]


def test_a_request_with_nothing_to_generate_loads_the_model(demo_node):
    for path, body in (
        ("/api/chat", {"model": "demo", "messages": []}),
        ("/api/generate", {"model": "demo"}),
    ):
        reply = demo_node.http.post(path, json=body).json()
        assert reply["done"] is True and reply["done_reason"] == "load"


def test_model_routes(demo_node):
    tags = demo_node.http.get("/api/tags").json()
    demo = next(model for model in tags["models"] if model["name"] == "demo")
    assert demo["details"]["family"] == "llama" and demo["size"] > 0
    running = demo_node.http.get("/api/ps").json()
    assert "demo" in [model["name"] for model in running["models"]]  # other tests launch beside it
    assert demo_node.http.get("/api/version").json()["version"]
    shown = demo_node.http.post("/api/show", json={"model": "demo"}).json()
    assert "<|assistant|>" in shown["template"]
    assert shown["model_info"]["llama.context_length"] == 1024
    assert demo_node.http.post("/api/show", json={"name": "demo:latest"}).status_code == 200


def test_errors_are_plain_ollama_errors(demo_node):
    unknown = demo_node.http.post("/api/chat", json={"model": "no-such-model", "messages": user("hi")})
    assert unknown.status_code == 404 and "no-such-model" in unknown.json()["error"]
    missing = demo_node.http.post("/api/generate", json={"prompt": "hi"})
    assert missing.status_code == 400 and missing.json() == {"error": "model: Field required"}
    bad = demo_node.http.post(
        "/api/chat", json={"model": "demo", "messages": user("hi"), "options": {"temperature": -1}}
    )
    assert bad.status_code == 400 and "temperature" in bad.json()["error"]
    long = demo_node.http.post("/api/chat", json={"model": "demo", "messages": user("word " * 600)})
    assert long.status_code == 400 and "context" in long.json()["error"]
    unknown_format = demo_node.http.post(
        "/api/chat", json={"model": "demo", "messages": user("hi"), "format": "yaml"}
    )
    assert unknown_format.status_code == 400 and "format" in unknown_format.json()["error"]
    no_tools = demo_node.http.post(
        "/api/chat",
        json={
            "model": "demo",
            "messages": user("hi"),
            "tools": [{"type": "function", "function": {"name": "f"}}],
        },
    )
    assert no_tools.status_code == 400 and "does not render tools" in no_tools.json()["error"]
    assert demo_node.http.post("/api/show", json={"model": "no-such-model"}).status_code == 404
