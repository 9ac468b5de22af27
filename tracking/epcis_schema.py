"""GS1's JSON Schema of EPCIS 2.0 documents (EPCIS-JSON-Schema.json beside this module), and checking against it.

The schema is checked with ``jsonschema_rs`` (a compiled validator, some 400 times faster than the pure-Python
one on these documents) with formats on: ``uri`` and ``date-time`` carry much of what the schema asks, e.g.
that every EPC is a URI. Its references are all inside the file, so nothing is fetched.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import jsonschema_rs

SCHEMA_PATH: Final = Path(__file__).with_name("EPCIS-JSON-Schema.json")
MAX_LISTED_ERRORS: Final = 100
"""A document broken throughout has an error per event; beyond this many they are counted, not listed."""
_MAX_MESSAGE: Final = 300


@dataclass(frozen=True, slots=True)
class SchemaError:
    """One place where a document breaks the schema."""

    path: tuple[str | int, ...]
    """Where, from the document's root, e.g. ("epcisBody", "eventList", 3, "childEPCs", 0)."""
    detail: str

    @property
    def pointer(self) -> str:
        """The place as a JSON Pointer (RFC 6901) in a URI fragment, e.g. ``#/epcisBody/eventList/3``."""
        tokens = (str(part).replace("~", "~0").replace("/", "~1") for part in self.path)
        return "#/" + "/".join(tokens) if self.path else "#"


@functools.cache
def _validator() -> jsonschema_rs.Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    return jsonschema_rs.Draft7Validator(schema, validate_formats=True)


def check(document: Any) -> tuple[list[SchemaError], int]:
    """The errors of ``document`` against the schema (at most MAX_LISTED_ERRORS), and how many there are."""
    validator = _validator()
    if validator.is_valid(document):
        return [], 0
    listed: list[SchemaError] = []
    total = 0
    for error in validator.iter_errors(document):
        total += 1
        if len(listed) < MAX_LISTED_ERRORS:
            message = error.message
            if len(message) > _MAX_MESSAGE:
                message = message[: _MAX_MESSAGE - 1] + "…"
            listed.append(SchemaError(tuple(error.instance_path), message))
    return listed, total
