"""A grammar that a request's output must follow (structured output, forced tool calls). Pure
Python: the API builds one, it travels inside the sampling parameters, and the sampler compiles
it against the checkpoint's vocabulary where the tokens are chosen (`engine/grammar.py`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from tandem.errors import InvalidRequestError

ConstraintKind = Literal["json", "json_schema", "structural_tag"]
# Counts a grammar unrolls (a string of at least n characters compiles to n states): above this,
# a schema could keep the sampler compiling for minutes, so it is refused at the door.
MAX_REPEAT = 4096
REPEAT_KEYS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")


def largest_repeat(value: Any) -> float:
    """The largest length or count bound anywhere in a JSON Schema (0 when there is none)."""
    if isinstance(value, list):
        return max((largest_repeat(item) for item in value), default=0)
    if not isinstance(value, dict):
        return 0
    own = [v for k, v in value.items() if k in REPEAT_KEYS and isinstance(v, int | float)]
    return max([0, *own, *(largest_repeat(item) for item in value.values())])


@dataclass(frozen=True)
class OutputConstraint:
    """`json`: a JSON object, any; `json_schema`: JSON valid under `definition` (a JSON Schema);
    `structural_tag`: xgrammar's structural-tag format (fixed text around JSON, as in a forced
    tool call). `definition` is JSON text, empty for `json`."""

    kind: ConstraintKind
    definition: str = ""

    def __post_init__(self) -> None:
        if self.kind == "json":
            return
        try:
            value = json.loads(self.definition)
        except json.JSONDecodeError as error:
            raise InvalidRequestError(f"the {self.kind} is not valid JSON: {error}") from None
        if not isinstance(value, dict | bool):
            raise InvalidRequestError(f"the {self.kind} must be a JSON object")
        if largest_repeat(value) > MAX_REPEAT:
            raise InvalidRequestError(f"the {self.kind} asks for lengths or counts above {MAX_REPEAT}")

    @classmethod
    def any_json(cls) -> OutputConstraint:
        return cls("json")

    @classmethod
    def json_schema(cls, schema: dict[str, Any] | bool) -> OutputConstraint:
        return cls("json_schema", json.dumps(schema))

    @classmethod
    def structural_tag(cls, tag: dict[str, Any]) -> OutputConstraint:
        return cls("structural_tag", json.dumps(tag))
