"""`response_format` -> a compiled Constraint for the loaded tokenizer (structured/), or an ApiError.

The one place the server meets constrained decoding: json_object and json_schema (OpenAI's shapes); a schema
llguidance cannot compile is a 422 naming it, before the request queues.
"""

from __future__ import annotations

from macllm.errors import MacllmError
from macllm.server.errors import ApiError, bad_request
from macllm.server.requests import wrong_type
from macllm.structured import Constraint, compile_constraint


def response_constraint(tokenizer, response_format: dict | None) -> Constraint | None:
    if response_format is None:
        return None
    kind = response_format["type"]
    try:
        if kind == "json_object":
            return compile_constraint(tokenizer, json_object=True)
        if kind == "json_schema":
            spec = response_format.get("json_schema")
            if not isinstance(spec, dict):
                raise wrong_type("response_format.json_schema", 'an object with a "schema"', spec)
            schema = spec.get("schema")
            if not isinstance(schema, dict):
                raise wrong_type("response_format.json_schema.schema", "a JSON schema object", schema)
            return compile_constraint(tokenizer, json_schema=schema)
    except MacllmError as e:
        raise ApiError(422, str(e), "response_format", "invalid_schema") from None
    raise bad_request(f"'response_format.type' must be text, json_object or json_schema, got {kind!r}",
                      "response_format.type")
