"""What /docs shows for webhook routes, which read their body themselves.

Webhook routes read the raw body (to bound its size and check signatures
before parsing), so FastAPI can't infer the body schema. :func:`json_body`
describes it for OpenAPI from the source's pydantic model, with the shipped
samples as examples.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel

SAMPLES_DIR: Final = Path(__file__).resolve().parent / "samples"


def sample(name: str) -> Any:
    """A shipped sample body (``services/ingest/samples/<name>``)."""
    return json.loads((SAMPLES_DIR / name).read_text(encoding="utf-8"))


def json_body(model: type[BaseModel], *samples: str) -> dict[str, Any]:
    """An ``openapi_extra`` describing a JSON request body of ``model``."""
    schema = _inline(model.model_json_schema(by_alias=True))
    examples = {name.removesuffix(".json"): {"value": sample(name)} for name in samples}
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema, "examples": examples}},
        }
    }


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its local ``$defs`` references replaced by the definitions."""
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved
