"""Parse a model's reply as JSON and check it against the schema it was asked for.

``ChatQLLM.with_structured_output`` asks for JSON in the prompt (the engine has no
constrained decoding); this parser then finds the JSON object in the reply, validates it
(with the pydantic class, or against the JSON schema) and raises
:class:`~qllm_integrations.langchain.errors.StructuredOutputError` when it does not comply.
"""

from __future__ import annotations

import json
import re
from typing import Any

from langchain_core.output_parsers import BaseOutputParser
from pydantic import ValidationError
from pydantic import v1 as pydantic_v1

from qllm_integrations.langchain._call import json_instruction
from qllm_integrations.langchain.errors import StructuredOutputError

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)
_HINT = (
    "small models often cannot follow a JSON schema; try a larger model, a simpler "
    "schema, or include_raw=True to inspect the reply"
)
_JSON_TYPES: dict[str, type | tuple[type, ...]] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "integer": int,
    "number": (int, float),
    "null": type(None),
}


class JsonSchemaOutputParser(BaseOutputParser[Any]):
    """Reply text to a validated object: a pydantic instance, or a dict for JSON schemas."""

    json_schema: dict[str, Any] | None = None
    """The JSON schema to validate against; ``None`` accepts any JSON object."""
    pydantic_class: Any = None
    """A pydantic (v2 or v1) model class to build from the JSON; ``None`` returns a dict."""

    @property
    def _type(self) -> str:
        return "qllm_json_schema"

    def parse(self, text: str) -> Any:
        """Parse ``text``; raise ``StructuredOutputError`` when it does not comply."""
        value = extract_json_object(text)
        if value is None:
            raise StructuredOutputError(
                f"the model's reply holds no JSON object ({_HINT}). The reply began: "
                f"{text[:200]!r}",
                llm_output=text,
            )
        if self.pydantic_class is not None:
            try:
                if issubclass(self.pydantic_class, pydantic_v1.BaseModel):
                    return self.pydantic_class.parse_obj(value)
                return self.pydantic_class.model_validate(value)
            except (ValidationError, pydantic_v1.ValidationError) as error:
                raise StructuredOutputError(
                    f"the model's JSON does not match {self.pydantic_class.__name__} ({_HINT}):"
                    f" {error}",
                    llm_output=text,
                ) from error
        if self.json_schema is not None:
            problems = schema_errors(value, self.json_schema)
            if problems:
                raise StructuredOutputError(
                    f"the model's JSON does not match the schema ({_HINT}): "
                    + "; ".join(problems[:5]),
                    llm_output=text,
                )
        return value

    def get_format_instructions(self) -> str:
        """What the prompt asks for."""
        return json_instruction({"schema": self.json_schema})


def extract_json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in ``text`` (inside a ```json fence if there is one)."""
    decoder = json.JSONDecoder()
    for candidate in [*_FENCE.findall(text), text]:
        for match in re.finditer(r"\{", candidate):
            try:
                value, _ = decoder.raw_decode(candidate, match.start())
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    return None


def schema_errors(
    value: Any, schema: dict[str, Any], root: dict[str, Any] | None = None, path: str = "$"
) -> list[str]:
    """Where ``value`` breaks ``schema``: the common JSON-schema keywords only.

    Checked: ``type``, ``properties``, ``required``, ``items``, ``enum``, ``anyOf``/
    ``oneOf``/``allOf`` and local ``$ref``. Other keywords are accepted unchecked.
    """
    root = root if root is not None else schema
    if "$ref" in schema:
        schema = _resolve(schema["$ref"], root)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [schema_errors(value, s, root, path) for s in schema[key]]
            if all(options):
                return [f"{path} matches none of the {key} alternatives"]
    problems = [p for s in schema.get("allOf", []) for p in schema_errors(value, s, root, path)]
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{path} is {value!r}, not one of {schema['enum']}")
    kinds = schema.get("type")
    if kinds is not None and not any(_is_type(value, k) for k in _as_list(kinds)):
        return [*problems, f"{path} should be {kinds}, got {type(value).__name__}"]
    if isinstance(value, dict):
        problems += [
            f"{path} lacks required key {key!r}"
            for key in schema.get("required", [])
            if key not in value
        ]
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                problems += schema_errors(value[key], sub, root, f"{path}.{key}")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            problems += schema_errors(item, schema["items"], root, f"{path}[{i}]")
    return problems


def _is_type(value: Any, kind: str) -> bool:
    expected = _JSON_TYPES.get(kind)
    if expected is None:
        return True
    if isinstance(value, bool) and kind in ("integer", "number"):
        return False
    return isinstance(value, expected)


def _as_list(kinds: str | list[str]) -> list[str]:
    return [kinds] if isinstance(kinds, str) else list(kinds)


def _resolve(ref: str, root: dict[str, Any]) -> dict[str, Any]:
    node: Any = root
    for part in ref.removeprefix("#/").split("/") if ref.startswith("#/") else []:
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return node if isinstance(node, dict) and ref.startswith("#/") else {}
