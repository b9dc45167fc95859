"""The MLX engine shares the sampler, so JSON under a schema validates there too."""

from __future__ import annotations

import json

import jsonschema
from mlx_support import require_mlx

require_mlx()

from tandem.model.output_constraint import OutputConstraint  # noqa: E402
from tandem.model.sampling_params import SamplingParams  # noqa: E402
from tandem.runner.assemble import create_local_engine  # noqa: E402
from tandem.store.resolve import DEMO_MODEL_DIR  # noqa: E402

SCHEMA = {
    "type": "object",
    "properties": {
        "king": {"type": "string", "maxLength": 10},
        "year": {"type": "integer", "minimum": 1400, "maximum": 1600},
    },
    "required": ["king", "year"],
    "additionalProperties": False,
}


def test_json_schema_output_validates_on_mlx():
    engine = create_local_engine(DEMO_MODEL_DIR, engine="mlx", device="cpu", max_context=256)
    assert engine.tokenizer is not None
    prompt = engine.tokenizer.encode_chat([{"role": "user", "content": "Name thy king."}])
    params = SamplingParams(max_tokens=100, seed=4, constraint=OutputConstraint.json_schema(SCHEMA))
    text = "".join(event.text for event in engine.generate(prompt, params))
    jsonschema.validate(json.loads(text), SCHEMA)
