"""Every route in the OpenAPI document enforces the role its `x-role` names: walked with each role.

The list of routes comes from the served `/api/v1/openapi.json`, which is generated from the
route table: a route added anywhere (warnd/api, an adapter's webhooks) is walked without
touching this file.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.support.harness import Harness
from warnd.api.auth import ROLE_RANK, hash_token

ROLES = list(ROLE_RANK)
TOKENS = {role: f"{role}-roles-token" for role in ROLES}
METHODS = ("get", "post", "put", "patch", "delete")


@pytest.fixture
async def walker(tmp_path: Path) -> AsyncIterator[TestClient]:
    """A daemon with a token per role, every configured adapter's routes, and no rate limits."""
    h = await Harness(
        tmp_path,
        settings={
            "auth": {
                "tokens": [{"name": f"{r}-1", "role": r, "hash": hash_token(t)} for r, t in TOKENS.items()]
            },
            "http": {"port": 0, "rate_limit_per_s": 0, "ack_rate_limit_per_s": 0, "auth_failures_per_min": 0},
            "twilio": {"account_sid": "AC" + "0" * 32, "auth_token": "t" * 32, "from_number": "+15005550006"},
        },
    ).start()
    # Adapters whose config is complete serve their webhooks too (constructed, not started).
    client = await h.serve_every_route()
    yield client
    await h.close()


def operations(document: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    """(method, path with its parameters filled, x-role) for every operation in the document."""
    out = []
    for path, item in document["paths"].items():
        concrete = re.sub(r"{(\w+)(:[^}]*)?}", "W20260101-00000000", path)
        for method in METHODS:
            if method in item:
                out.append((method.upper(), concrete, item[method]["x-role"]))
    return out


async def call(client: TestClient, method: str, path: str, token: str | None) -> tuple[int, dict[str, Any]]:
    """One request with an empty JSON object as body; returns status and JSON (or {})."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    kw: dict[str, Any] = {"headers": headers}
    if method != "GET":
        kw["json"] = {}
    resp = await client.request(method, path, **kw)
    body: dict[str, Any] = {}
    if resp.content_type == "application/json":
        body = await resp.json()
    return resp.status, body


def refused_by_role_check(status: int, body: dict[str, Any]) -> bool:
    """Whether the auth middleware (not the handler) turned the request away."""
    error = body.get("error") or {}
    return (status == 401 and error.get("field") == "Authorization") or (
        status == 403 and error.get("code") == "forbidden" and "may not do this" in error.get("message", "")
    )


async def test_every_route_enforces_its_role(walker: TestClient) -> None:
    """No token and an unknown token get 401, lower roles 403, the named role and above get through."""
    document = await (await walker.get("/api/v1/openapi.json")).json()
    ops = operations(document)
    # The document must describe the API, not be empty: these routes exist from the spine on.
    assert ("POST", "/api/v1/warnings", "operator") in ops
    assert ("GET", "/api/v1/audit", "approver") in ops
    assert ("GET", "/metrics", None) in ops
    problems = []
    for method, path, role in ops:
        if role is None:
            status, body = await call(walker, method, path, None)
            if refused_by_role_check(status, body):
                problems.append(f"{method} {path}: x-role none, but refused without a token ({status})")
            continue
        assert role in ROLE_RANK, f"{method} {path}: unknown x-role {role!r}"
        for token in (None, "not-a-configured-token"):
            status, body = await call(walker, method, path, token)
            if status != 401 or body["error"]["code"] != "unauthorized":
                problems.append(f"{method} {path}: token {token!r} got {status}, expected 401")
        for who in ROLES:
            status, body = await call(walker, method, path, TOKENS[who])
            allowed = ROLE_RANK[who] >= ROLE_RANK[role]
            if allowed and refused_by_role_check(status, body):
                problems.append(f"{method} {path}: {who} refused ({status}) though x-role is {role}")
            if not allowed and not (status == 403 and refused_by_role_check(status, body)):
                problems.append(f"{method} {path}: {who} got {status}, expected 403 (x-role {role})")
    assert not problems, "\n".join(problems)


async def test_every_route_is_in_the_document(walker: TestClient) -> None:
    """The router serves nothing the document leaves out (so the walk above sees everything)."""
    document = await (await walker.get("/api/v1/openapi.json")).json()
    described = {(m.upper(), p) for p, item in document["paths"].items() for m in item if m in METHODS}
    served = set()
    for resource in walker.app.router.resources():
        for route in resource:
            if route.method not in ("HEAD", "OPTIONS", "*"):
                served.add((route.method, resource.canonical))
    assert served <= described, served - described
