"""JSON bodies without a JSON `Content-Type` (the Ollama docs' `curl -d` example) are accepted on
every public API route; a body that is not JSON still gets a clear 400. Raw httpx, a live node."""

from __future__ import annotations

import json

import pytest

from .api_expected import PROMPTS, greedy, user

SHORT = 5
BODIES = {
    "/api/generate": {
        "model": "demo",
        "prompt": PROMPTS[0],
        "stream": False,
        "options": {"temperature": 0, "num_predict": SHORT},
    },
    "/api/chat": {
        "model": "demo",
        "messages": user(PROMPTS[0]),
        "stream": False,
        "options": {"temperature": 0, "num_predict": SHORT},
    },
    "/v1/chat/completions": {
        "model": "demo",
        "messages": user(PROMPTS[0]),
        "temperature": 0,
        "max_tokens": SHORT,
    },
    "/v1/messages": {"model": "demo", "messages": user(PROMPTS[0]), "temperature": 0, "max_tokens": SHORT},
}


def reply_text(path: str, reply: dict) -> str:
    if path == "/api/generate":
        return reply["response"]
    if path == "/api/chat":
        return reply["message"]["content"]
    if path == "/v1/chat/completions":
        return reply["choices"][0]["message"]["content"]
    return reply["content"][0]["text"]


@pytest.mark.parametrize("content_type", [None, "application/x-www-form-urlencoded", "text/plain"])
@pytest.mark.parametrize("path", list(BODIES))
def test_json_body_without_json_content_type(demo_node, demo_engine, path, content_type):
    headers = {"anthropic-version": "2023-06-01"} if path == "/v1/messages" else {}
    if content_type is not None:
        headers["content-type"] = content_type
    request = demo_node.http.build_request("POST", path, content=json.dumps(BODIES[path]), headers=headers)
    assert request.headers.get("content-type") == content_type  # httpx adds none for raw bytes
    response = demo_node.http.send(request)
    assert response.status_code == 200, response.text
    expected = greedy(demo_engine, messages=user(PROMPTS[0]), max_tokens=SHORT)
    assert reply_text(path, response.json()) == expected.text  # /api/generate templates the prompt


def test_a_body_that_is_not_json_is_a_clear_400(demo_node):
    response = demo_node.http.post("/api/generate", content=b"model=demo&prompt=hi")
    assert response.status_code == 400
    assert response.json()["error"].startswith("the request body is not valid JSON")
