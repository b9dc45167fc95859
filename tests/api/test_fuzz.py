"""Schemathesis against the node's own OpenAPI document: valid, malformed and hostile input on
every route gets a 2xx or a 4xx in the route's documented format, never a 5xx or a crash, and
the node keeps serving afterwards. Bounded: a few hundred requests in all."""

from __future__ import annotations

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode, checks

from nodes import launch, running_nodes

from .api_expected import user

EXAMPLES_PER_ROUTE = 25  # per operation and mode: about 700 requests in all
# Routes that generate: half their examples name the running model, so hostile settings reach
# the runner instead of stopping at "unknown model".
# (Ollama's `format` and OpenAI's `response_format` are fuzzed: hostile schemas reach the grammar
# compiler; `tools` stop at a 400 here, the demo model's chat template renders none.)
REFUSED_FEATURES = (
    "tools",
    "thinking",
    "images",
    "n",
    "best_of",
    "logit_bias",
    "echo",
    "suffix",
    "template",
)
GENERATING = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/messages",
    "/api/chat",
    "/api/generate",
    "/api/show",
)


@pytest.fixture(scope="module")
def fuzz_node(tmp_path_factory):
    with running_nodes(tmp_path_factory.mktemp("fuzz"), 1) as (node,):
        node.instance = launch(node, model="demo", context=64, sequences=4)
        yield node
        # It keeps serving: the same instance answers, and the process is alive.
        assert node.process.poll() is None
        reply = node.http.post(
            "/v1/chat/completions", json={"model": "demo", "messages": user("hi"), "max_tokens": 3}
        )
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 3
        assert [i["status"] for i in node.http.get("/v1/instances").json()] == ["ready"]
        assert "Traceback" not in node.log_text()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_input_makes_the_node_fail(fuzz_node, mode):
    # Schemathesis' pytest plugin does not run under this pytest, so the loop over the document's
    # operations is written out: one Hypothesis run per operation.
    schema = schemathesis.openapi.from_url(f"{fuzz_node.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {*GENERATING, "/v1/models", "/v1/instances", "/api/tags"}

    for operation in operations:

        @hypothesis.settings(
            max_examples=EXAMPLES_PER_ROUTE,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],  # report what broke as found; no shrinking
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        @hypothesis.given(case=operation.as_strategy(mode))
        def send(case) -> None:
            body = case.body
            model = body.get("model") if isinstance(body, dict) else None
            if case.path in GENERATING and isinstance(model, str) and len(model) % 2 == 0:
                body["model"] = "demo"
                for refused in REFUSED_FEATURES:  # or most such requests stop at a clear 400
                    body.pop(refused, None)
            case.call_and_validate(
                base_url=fuzz_node.url,
                checks=[checks.not_a_server_error, checks.status_code_conformance],
                timeout=60,
            )

        try:
            send()
        except hypothesis.errors.Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE  # nothing to break in a route without input
