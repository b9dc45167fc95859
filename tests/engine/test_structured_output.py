"""Output constrained to a grammar: JSON under random schemas validates, any-JSON parses, and a
constrained request leaves the unconstrained ones in its batch exactly as they are alone."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from tandem.errors import InvalidRequestError
from tandem.model.output_constraint import OutputConstraint
from tandem.model.sampling_params import SamplingParams
from tandem.runner.assemble import create_local_engine
from tandem.store.resolve import DEMO_MODEL_DIR

# a test-only dependency the lent GPU machines lack: the rest of tests/engine runs there
jsonschema = pytest.importorskip("jsonschema")

SCHEMAS = 20
MAX_TOKENS = 400


def random_schema(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    """A JSON Schema of bounded size: every string, number and array has limits, so a model that
    is unsure (random sampling from a tiny model) still ends within the token budget."""
    kinds = ["string", "integer", "boolean", "enum", "null"] + (["object", "array"] if depth < 2 else [])
    kind = rng.choice(kinds)
    if kind == "string":
        return {"type": "string", "minLength": rng.randint(0, 2), "maxLength": rng.randint(3, 10)}
    if kind == "integer":
        low = rng.randint(-50, 50)
        return {"type": "integer", "minimum": low, "maximum": low + rng.randint(0, 500)}
    if kind == "boolean":
        return {"type": "boolean"}
    if kind == "null":
        return {"type": "null"}
    if kind == "enum":
        return {"enum": rng.sample(["red", "green", "blue", "thou", "art", 7, True], rng.randint(1, 4))}
    if kind == "array":
        return {"type": "array", "items": random_schema(rng, depth + 1), "minItems": 1, "maxItems": 3}
    return random_object(rng, depth + 1)


def random_object(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    names = rng.sample(["name", "age", "colour", "verse", "count", "ok", "tags", "inner"], rng.randint(1, 4))
    properties = {name: random_schema(rng, depth) for name in names}
    required = [name for name in names if rng.random() < 0.7]
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


@pytest.fixture(scope="module")
def engine():
    return create_local_engine(DEMO_MODEL_DIR, device="cpu", dtype="float32", max_context=1024)


def run_together(engine, requests: list[tuple[list[int], SamplingParams]]) -> list[str]:
    """Generate all `requests` in the same batches; the text of each."""
    ids = [engine.add_request(prompt, params) for prompt, params in requests]
    texts = {seq_id: "" for seq_id in ids}
    finished: set[int] = set()
    while len(finished) < len(ids):
        for event in engine.step():
            texts[event.seq_id] += event.text
            if event.finish_reason is not None:
                finished.add(event.seq_id)
    return [texts[seq_id] for seq_id in ids]


def test_json_schema_output_validates_for_random_schemas(engine):
    rng = random.Random(20)
    prompt = engine.tokenizer.encode_chat([{"role": "user", "content": "Answer in JSON."}])
    schemas = [random_object(rng) for _ in range(SCHEMAS)]
    requests = [
        (
            prompt,
            SamplingParams(max_tokens=MAX_TOKENS, seed=index, constraint=OutputConstraint.json_schema(s)),
        )
        for index, s in enumerate(schemas)
    ]
    for schema, text in zip(schemas, run_together(engine, requests), strict=True):
        jsonschema.validate(json.loads(text), schema)


def test_json_object_output_follows_the_grammar_and_leaves_its_batch_alone(engine):
    """The demo model writes verse inside a JSON string and does not close it within the budget,
    so the check is that every prefix it wrote is one the object grammar allows."""
    prompt = engine.tokenizer.encode_chat([{"role": "user", "content": "Speak, herald."}])
    plain = SamplingParams(max_tokens=40, temperature=0.0)
    alone = run_together(engine, [(prompt, plain)])[0]
    constrained = SamplingParams(max_tokens=60, seed=3, constraint=OutputConstraint.any_json())
    together = run_together(engine, [(prompt, plain), (prompt, constrained), (prompt, plain)])
    assert together[0] == together[2] == alone
    grammars = engine.executor.samplers.grammars
    assert together[1].startswith("{") and grammars.matcher(OutputConstraint.any_json()).accept_string(
        together[1]
    )
    assert not grammars.matcher(OutputConstraint.any_json()).accept_string("[1]")  # the checker can refuse


def test_a_schema_that_does_not_compile_is_refused(engine):
    prompt = engine.tokenizer.encode("Hark")
    broken = OutputConstraint("json_schema", json.dumps({"type": "no-such-type"}))
    with pytest.raises(InvalidRequestError, match="json_schema"):
        engine.add_request(prompt, SamplingParams(constraint=broken))
    assert not engine.has_work() and not engine.sequences


def test_a_constraint_that_is_not_json_or_too_large_to_compile_is_refused():
    with pytest.raises(InvalidRequestError, match="not valid JSON"):
        OutputConstraint("json_schema", "{")
    huge = {
        "type": "object",
        "properties": {"a": {"type": "array", "items": {"type": "string", "minLength": 10**9}}},
    }
    with pytest.raises(InvalidRequestError, match="above 4096"):
        OutputConstraint.json_schema(huge)


def test_a_schema_that_allows_nothing_ends_the_answer(engine):
    prompt = engine.tokenizer.encode("Hark")
    empty = OutputConstraint.json_schema({"oneOf": []})
    events = list(engine.generate(prompt, SamplingParams(max_tokens=5, seed=1, constraint=empty)))
    assert (
        len(events) == 1 and events[0].token_id in engine.eos_token_ids and events[0].finish_reason == "stop"
    )
