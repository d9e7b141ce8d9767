"""Record validation against the stream's SCHEMA, compiled once per stream with ``fastjsonschema``.

The SDK's default (``jsonschema``, interpreted per record) is the main CPU cost of a target that sends at most a few
requests a second; a compiled validator checks the same things several times faster. Formats are not checked (as
in the SDK's default), and no defaults are written into records.
"""

from __future__ import annotations

import logging
from typing import Any

import fastjsonschema
from singer_sdk.exceptions import InvalidRecord
from singer_sdk.sinks.core import BaseJSONSchemaValidator, JSONSchemaValidator

logger = logging.getLogger(__name__)


def _formats(schema: Any) -> dict[str, Any]:
    """Every format name the schema uses, each accepted without a check (the SDK does not check formats)."""
    found: dict[str, Any] = {}
    if isinstance(schema, dict):
        if isinstance(schema.get("format"), str):
            found[schema["format"]] = _accept
        for value in schema.values():
            found.update(_formats(value))
    elif isinstance(schema, list):
        for value in schema:
            found.update(_formats(value))
    return found


def _accept(_value: Any) -> bool:
    return True


class CompiledValidator(BaseJSONSchemaValidator):
    """``fastjsonschema``-compiled validation raising the SDK's ``InvalidRecord``."""

    def __init__(self, schema: dict[str, Any]) -> None:
        super().__init__(schema)
        self._check = fastjsonschema.compile(schema, formats=_formats(schema), use_default=False)

    def validate(self, record: dict[str, Any]) -> None:
        try:
            self._check(record)
        except fastjsonschema.JsonSchemaValueException as exc:
            raise InvalidRecord(exc.message, record) from exc


def compiled_validator(schema: dict[str, Any], stream: str) -> BaseJSONSchemaValidator:
    """The compiled validator, or the SDK's own when ``fastjsonschema`` cannot compile this schema."""
    try:
        return CompiledValidator(schema)
    except (fastjsonschema.JsonSchemaDefinitionException, TypeError, ValueError) as exc:
        logger.info("Stream %s: schema not compilable (%s); using the SDK's validator", stream, exc)
        return JSONSchemaValidator(schema)
