"""The OpenAPI document, generated from the route table and the pydantic models."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, cast

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
    "required": ["error"],
}

# Media types whose body is a CAP document (the push route also takes it as bytes).
CAP_MEDIA = ("application/cap+xml", "application/xml", "text/xml", "application/octet-stream")
FORM = "application/x-www-form-urlencoded"
# A provider webhook's form: names and values, all text.
FORM_SCHEMA = {"type": "object", "additionalProperties": {"type": "string"}}
CAP_SCHEMA = {
    "type": "string",
    "description": "A CAP 1.2 (or 1.1, 1.0) <alert>, or an <alerts> wrapper; UTF-8, UTF-16, GB18030 "
    "(GB2312, GBK) or Big5 as its XML declaration says",
}
JSON = "application/json"


def _error(text: str) -> dict[str, Any]:
    """A documented error answer: the JSON error shape."""
    return {"description": text, "content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _common_errors(r: Route, params: list[str], limited: bool) -> dict[int, str]:
    """The errors a route answers by its kind: what the middlewares and the body reader say."""
    errors: dict[int, str] = {413: "request body over [http] max_body_bytes"}
    if r.role:
        errors[401] = "no or unknown token"
        errors[403] = f"needs role {r.role}"
    if "id" in params:
        errors[404] = "no such warning"
    if r.body or any(t in CAP_MEDIA for t in r.body_types):
        errors[400] = "body is not well-formed"
        errors[415] = f"Content-Type is not one of {', '.join(r.body_types)}"
        errors[422] = "a field is invalid (the error names it)"
    if r.query:
        errors[400] = "a query parameter is invalid (the error names it)"
    if r.role:
        errors[429] = "too many failed token checks from this address; see Retry-After"
    if limited:
        errors[429] = "too many requests (or failed token checks) from this address; see Retry-After"
    if r.method == "POST":
        errors[503] = "store_unavailable: the disk is full or read-only, nothing was stored; see Retry-After"
    return errors


def openapi(routes: Sequence[Route], version: str, limited: Sequence[str] = ()) -> dict[str, Any]:
    """An OpenAPI 3.1 document describing exactly the routes that exist.

    `limited` are the path prefixes the rate limiter watches (429 is documented under them).
    """
    paths: dict[str, Any] = {}
    components: dict[str, Any] = {"Error": ERROR_SCHEMA}
    for r in routes:
        op: dict[str, Any] = {"summary": r.summary, "x-role": r.role, "responses": {}}
        params = re.findall(r"{(\w+)}", r.path)
        string = {"type": "string"}
        parameters = [{"name": p, "in": "path", "required": True, "schema": string} for p in params]
        for name, about in r.query.items():
            schema = {"description": about, **string} if isinstance(about, str) else about
            parameters.append({"name": name, "in": "query", "required": False, "schema": schema})
        if parameters:
            op["parameters"] = parameters
        content: dict[str, Any] = {}
        if r.body:
            model = SCHEMAS[r.body] if isinstance(r.body, str) else r.body
            name = model.__name__
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            defs = cast("dict[str, Any]", schema.pop("$defs", {}))
            for sub_name, sub in defs.items():
                components[sub_name] = sub
            components[name] = schema
            content[JSON] = {"schema": {"$ref": f"#/components/schemas/{name}"}}
        for media in r.body_types:
            if media in CAP_MEDIA:
                content[media] = {"schema": CAP_SCHEMA}
            elif media == FORM:
                content[media] = {"schema": FORM_SCHEMA}
        if content:
            op["requestBody"] = {"required": r.body_required, "content": content}
        for status, answer in (r.responses or {200: "OK"}).items():
            if isinstance(answer, dict):
                op["responses"][str(status)] = answer
            else:
                op["responses"][str(status)] = _error(answer) if status >= 400 else {"description": answer}
        for status, text in _common_errors(r, params, r.path.startswith(tuple(limited))).items():
            # A route's own description of a status wins: it says it better, or answers a page.
            op["responses"].setdefault(str(status), _error(text))
        if r.role:
            op["security"] = [{"bearer": []}]
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
