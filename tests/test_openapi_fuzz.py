"""schemathesis against a live warnd's own `/api/v1/openapi.json`: no 5xx, answers as documented.

The daemon (the harness's, with a push feed, Twilio and a hydro station configured and every
adapter's routes served) runs in a thread of its own behind aiohttp's AppRunner, as `warnd run`
serves it; schemathesis loads the document from it over HTTP and sends each operation generated
requests, schema-valid and schema-violating, with every role's token, the push feed's token and
none. Operations on a warning are also called with the id of a real one.

Every response must be no 5xx and match the document: a documented status, its content type,
its headers and its body schema. (positive_data_acceptance is not checked: a schema-valid warning
can still be refused for reaching no village of the directory, or for an expiry in the past.)

Runs are derandomized: the same cases on every run and in CI. The cases each token ran are
written to the terminal, and a floor on them catches a run that silently tests nothing.
`SCHEMATHESIS_EXAMPLES` raises the examples per operation for a longer local hunt.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.feeds import PUSH_TOKEN, feed
from tests.support.harness import TOKENS, Harness, warning_body

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Each operation is fuzzed (both modes, this many examples each) with its own caller's token: the
# least role it names, the push feed's token, or none. Every other token sends it one schema-valid
# request: past the door a handler does not care who called, and at the door the answer (401,
# 403, or the same as the own caller's) is all there is to check. Generating a case costs
# schemathesis ~10 ms here: 15 examples keep the six runs near 40 s on two busy cores.
EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "15"))
WHO = [*TOKENS, "feed", "nobody"]
STATION = {
    "id": "st-1",
    "name": "塘甸站",
    "villages": ["330502101201"],
    "warning_stage": 3.0,
    "guarantee_stage": 4.0,
}


class LiveWarnd:
    """The harness daemon served from a thread of its own, for schemathesis' synchronous client.

    Args:
        tmp_path: the daemon's directory.
    """

    def __init__(self, tmp_path: Path) -> None:
        """Prepare; `start()` serves."""
        self.tmp_path = tmp_path
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="live-warnd", daemon=True)
        self.url = ""
        self.warning_ids: list[str] = []

    def run(self, coro: Any) -> Any:
        """Run a coroutine on the daemon's loop and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def start(self) -> LiveWarnd:
        """Start the daemon, serve it on a free loopback port, issue two warnings to address."""
        self.thread.start()
        self.run(self._start())
        return self

    async def _start(self) -> None:
        """The async part of start()."""
        settings = {
            "http": {"port": 0, "rate_limit_per_s": 0, "ack_rate_limit_per_s": 0},
            "feed": [feed("cma", "push")],
            "twilio": {"account_sid": "AC" + "0" * 32, "auth_token": "t" * 32, "from_number": "+15005550006"},
            "hydro": {"station": [STATION]},
        }
        self.harness = await Harness(self.tmp_path, settings=settings).start()
        self.runner = web.AppRunner(self.harness.every_route_app(), access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        for level in ("red", "blue"):
            self.warning_ids.append(await self.harness.issue(warning_body(level=level)))

    def stop(self) -> None:
        """Stop serving, close the daemon, end the thread."""
        self.run(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()

    async def _stop(self) -> None:
        """The async part of stop()."""
        await self.runner.cleanup()
        await self.harness.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveWarnd]:
    """One live daemon for every token's run."""
    warnd = LiveWarnd(tmp_path_factory.mktemp("live")).start()
    yield warnd
    warnd.stop()


def headers_of(who: str) -> dict[str, str]:
    """The Authorization header a caller sends."""
    token = {**TOKENS, "feed": PUSH_TOKEN}.get(who)
    return {"Authorization": f"Bearer {token}"} if token else {}


def own_caller(operation: Any) -> str:
    """Who an operation is for: its x-role, the push feed, or nobody (no token)."""
    if operation.path == "/api/v1/feeds/{feed}/cap":
        return "feed"
    return operation.definition.raw.get("x-role") or "nobody"


def run_operation(
    live: LiveWarnd, operation: Any, who: str, mode: GenerationMode, path: dict[str, str], examples: int
) -> int:
    """Run up to `examples` generated cases of one operation for a caller; returns how many ran."""
    count = 0

    @settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=path or None))
    def test(case: Any) -> None:
        """Call and check one case."""
        nonlocal count
        count += 1
        headers = headers_of(who)
        if not headers:
            # The schema's security scheme makes schemathesis send a bearer of its own: drop it.
            case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
        response = case.call(base_url=live.url, headers=headers, timeout=30)
        case.validate_response(response, checks=CHECKS, headers=headers)

    try:
        test()
    except Unsatisfiable:
        # Nothing to negate: an operation without parameters or body has no invalid request.
        assert mode is GenerationMode.NEGATIVE, operation.label
    return count


@pytest.mark.timeout(300)
@pytest.mark.parametrize("who", WHO)
def test_live_api_matches_its_openapi_document(
    live: LiveWarnd, who: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every operation, schema-valid and -violating input, this caller's token: no 5xx, as documented."""
    schema = schemathesis.openapi.from_url(f"{live.url}/api/v1/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 25, [op.label for op in operations]
    cases = fuzzed = 0
    for operation in operations:
        if who != own_caller(operation):
            cases += run_operation(live, operation, who, GenerationMode.POSITIVE, {}, 1)
            continue
        fuzzed += 1
        ids = [{}]
        if "{id}" in operation.path:
            # Random ids find nothing: real ones reach the handlers (an active and, once
            # cancelled, a closed warning).
            ids += [{"id": wid} for wid in live.warning_ids]
        for path in ids:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                cases += run_operation(live, operation, who, mode, path, EXAMPLES)
    line = f"schemathesis: {cases} cases for {who} over {len(operations)} operations ({fuzzed} fuzzed)"
    with capsys.disabled():
        print(f"\n{line}")
    # Every operation ran, and the fuzzed ones more than once (hypothesis stops early on a small
    # input space, like a route without parameters, so no exact count is promised).
    assert cases >= len(operations) + fuzzed, line


def test_every_served_route_is_in_the_document(live: LiveWarnd) -> None:
    """What the live daemon routes (feeds, hydro, ack links, Twilio, audio) is all documented."""
    document = requests.get(f"{live.url}/api/v1/openapi.json", timeout=30).json()
    documented = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    served = {
        (route.method, resource.canonical)
        for resource in live.runner.app.router.resources()
        for route in resource
        if route.method not in ("HEAD", "OPTIONS", "*") or (route.method, resource.canonical) in documented
    }
    assert served, "the live daemon routes nothing"
    assert served <= documented, served - documented
