"""A provider outage for the loopback fakes: a period of 500s, 429s, silence or dropped connections.

One `Outage` is shared by a fake's handlers. It starts at the fake's `after`+1-th send (a create
at Twilio, a message at WeCom), so a test can begin it in the middle of a fan-out without racing
it, and lasts `duration_s` of real (monotonic) time. While it lasts, every API request gets:

- ``"500"``: HTTP 500, nothing done;
- ``"429"``: HTTP 429 with ``Retry-After: retry_after_s``, nothing done;
- ``"timeout"``: a send is carried out (the message exists, the phone rings) but its answer is
  held `hold_s`, longer than the client waits; any other request is held the same way;
- ``"close"``: a send is carried out, then the connection is dropped without an answer; any
  other request is dropped unanswered.

"timeout" and "close" are the faults that leave the client in doubt: the provider has the
message, the client has no answer. The fake names who each request is for (`who`: a message's
receiver, None for a request about no one message); every request is kept in `seen` and every
429 in `throttled`, so `too_soon()` tells which messages came back before their Retry-After.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web

Mode = Literal["500", "429", "timeout", "close"]
MODES: tuple[Mode, ...] = ("500", "429", "timeout", "close")


def _plain(status: int) -> web.Response:
    """An error answer with a generic JSON body."""
    return web.json_response({"error": status}, status=status)


@dataclass
class Outage:
    """A period in which a fake misbehaves.

    Args:
        mode: what every request gets while it lasts (see the module docstring).
        duration_s: how long it lasts once started.
        after: sends that go through normally before it starts.
        retry_after_s: the Retry-After of a 429 (whole seconds on the wire).
        hold_s: how long a "timeout" holds an answer.
    """

    mode: Mode
    duration_s: float
    after: int = 0
    retry_after_s: int = 4
    hold_s: float = 60.0
    started_at: float | None = None
    ended_at: float | None = None
    sends: int = 0
    # (time.monotonic() it arrived, who it was for) of every request
    seen: list[tuple[float, str | None]] = field(default_factory=list)
    # (time.monotonic() the 429 left, seconds it asked to wait, who it was for)
    throttled: list[tuple[float, float, str | None]] = field(default_factory=list)

    def arrive(self, who: str | None, *, send: bool) -> None:
        """A request arrived; the outage starts at the send after the first `after` sends."""
        self.seen.append((time.monotonic(), who))
        if send:
            self.sends += 1
            if self.started_at is None and self.sends > self.after:
                self.started_at = time.monotonic()
                self.ended_at = self.started_at + self.duration_s

    def active(self) -> bool:
        """Whether the outage is on now."""
        now = time.monotonic()
        return self.started_at is not None and self.started_at <= now < (self.ended_at or 0)

    def end(self) -> None:
        """End it now (it must have started)."""
        assert self.started_at is not None, "the outage has not started"
        self.ended_at = time.monotonic()

    def over(self) -> bool:
        """Whether it started and has ended."""
        return self.ended_at is not None and time.monotonic() >= self.ended_at

    def refuse(self, who: str | None, error: Callable[[int], web.Response] = _plain) -> web.Response | None:
        """For "500" and "429": the answer to give instead of doing anything (None otherwise).

        `error` makes the vendor's own error answer for a status.
        """
        if self.mode not in ("500", "429"):
            return None
        resp = error(int(self.mode))
        if self.mode == "429":
            resp.headers["Retry-After"] = str(self.retry_after_s)
            self.throttled.append((time.monotonic(), float(self.retry_after_s), who))
        return resp

    def too_soon(self, slack_s: float = 0.05) -> list[str]:
        """Requests for a message that came after a 429 for it had left, before its Retry-After passed.

        slack_s: timer and scheduling jitter forgiven at the end of the wait.
        """
        out = []
        for left, wait_s, who in self.throttled:
            if who is None:
                continue
            early = [at - left for at, w in self.seen if w == who and left < at < left + wait_s - slack_s]
            if early:
                out.append(f"{who}: again {min(early):.2f} s after a 429 asking {wait_s:g} s")
        return out

    async def withhold(self, request: web.Request, answer: web.StreamResponse) -> web.StreamResponse:
        """For "timeout" and "close": hold the answer past the client's patience, or drop the line."""
        if self.mode == "timeout":
            await asyncio.sleep(self.hold_s)
        elif self.mode == "close" and request.transport is not None:
            request.transport.close()
        return answer
