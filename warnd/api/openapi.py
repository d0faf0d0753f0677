"""The OpenAPI document, generated from the route table and the pydantic models."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from warnd.api.routes import Route
from warnd.model import CancelIn, UpdateIn, WarningIn

SCHEMAS: dict[str, type[BaseModel]] = {"WarningIn": WarningIn, "UpdateIn": UpdateIn, "CancelIn": CancelIn}

ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "field": {"type": ["string", "null"]},
            },
            "required": ["code", "message", "field"],
        }
    },
}


def openapi(routes: Sequence[Route], version: str) -> dict[str, Any]:
    """An OpenAPI 3.1 document describing exactly the routes that exist."""
    paths: dict[str, Any] = {}
    components: dict[str, Any] = {"Error": ERROR_SCHEMA}
    for r in routes:
        op: dict[str, Any] = {"summary": r.summary, "x-role": r.role, "responses": {}}
        params = re.findall(r"{(\w+)}", r.path)
        if params:
            op["parameters"] = [
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params
            ]
        if r.body:
            schema = SCHEMAS[r.body].model_json_schema(ref_template="#/components/schemas/{model}")
            for name, sub in schema.pop("$defs", {}).items():
                components[name] = sub
            components[r.body] = schema
            op["requestBody"] = {
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{r.body}"}}}
            }
        ok = r.responses or {200: "OK"}
        for status, text in ok.items():
            op["responses"][str(status)] = {"description": text}
        for status, text in ((400, "bad request"), (422, "invalid field")) if r.body else ():
            op["responses"][str(status)] = {
                "description": text,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            }
        if r.role:
            op["security"] = [{"bearer": []}]
            op["responses"]["401"] = {"description": "no or unknown token"}
            op["responses"]["403"] = {"description": f"needs role {r.role}"}
            op["responses"]["429"] = {"description": "too many failed token checks from this address"}
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "warnd", "version": version},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
