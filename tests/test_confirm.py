"""Devices that do not confirm get the same command again, until they do or it is too late.

The pipeline in one process on the fake clock, with a recording loudspeaker channel that
expects confirmations (as the MQTT channels do) and whose broker can go away. Confirmations are
fed to the feedback stage as the device hub would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import Harness, warning_body
from tests.support.recording import RecordingAdapter
from warnd.adapter import AdapterContext, Message
from warnd.store import from_ts

TIMEOUT_S = 30.0
SPEAKERS = ("spk-330502101201-1", "spk-330502101201-2")


class Speakers(RecordingAdapter):
    """Recording loudspeakers that confirm what they play; `up = False` is a broker outage."""

    def __init__(self, ctx: AdapterContext) -> None:
        """A loudspeaker channel, up."""
        super().__init__(ctx, channel="loudspeaker")
        self.up = True

    def ready(self) -> bool:
        """Ready while the broker is up."""
        return self.up and super().ready()

    def confirm_timeout_s(self) -> float | None:
        """Speakers confirm within TIMEOUT_S."""
        return TIMEOUT_S

    def republish_until(self, message: Message, first_sent: datetime) -> datetime:
        """An hour: the commands' not_after."""
        return first_sent + timedelta(hours=1)


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    """The pipeline with the confirming loudspeakers only."""
    harness = await Harness(tmp_path, channels=[], adapters=[Speakers]).start()
    yield harness
    await harness.close()


def speakers(h: Harness) -> Speakers:
    """The loudspeaker channel."""
    return h.daemon.adapters["loudspeaker"]  # type: ignore[return-value]


async def rows(h: Harness, wid: str, kind: str = "warning") -> dict[str, dict[str, Any]]:
    """The warning's loudspeaker deliveries of a kind, by target."""
    return {
        r["target"]: r
        for r in await h.store.deliveries_for(wid)
        if r["channel"] == "loudspeaker" and r["kind"] == kind
    }


async def confirm(h: Harness, wid: str, target: str, status: str = "played", kind: str = "warning") -> None:
    """A speaker reports on its command."""
    row = (await rows(h, wid, kind))[target]
    assert await h.daemon.feedback.ack(source="mqtt", status=status, msg_id=row["msg_id"], target=target)


async def later(h: Harness, seconds: float) -> None:
    """Let fake time pass and the pipeline catch up."""
    h.clock.advance(seconds)
    await h.run_until_idle()


async def pending_confirm_jobs(h: Harness, wid: str) -> list[dict[str, Any]]:
    """The warning's confirmation rounds not yet fired."""
    return [j for j in await h.store.jobs_for(wid) if j["kind"] == "confirm" and j["state"] == "pending"]


async def test_a_speaker_that_does_not_confirm_gets_the_same_command_again(
    h: Harness, log_events: list[dict[str, Any]]
) -> None:
    """Re-published with the same msg_id after the timeout, doubling, until it says `played`.

    A re-publish is not an attempt, keeps `sent_at`, and leaves a `received` delivery delivered.
    """
    wid = await h.issue(warning_body())
    await h.run_until_idle()
    first = await rows(h, wid)
    assert {r["state"] for r in first.values()} == {"sent"}
    (job,) = await pending_confirm_jobs(h, wid)
    wait_s = (from_ts(job["due_at"]) - h.clock.now()).total_seconds()  # type: ignore[operator]
    assert TIMEOUT_S <= wait_s <= TIMEOUT_S * 1.25
    await confirm(h, wid, SPEAKERS[0])

    await later(h, TIMEOUT_S - 1)
    assert len(speakers(h).sent) == 2  # not yet
    await later(h, TIMEOUT_S * 0.25 + 1)
    assert [(r["target"], r["msg_id"]) for r in speakers(h).sent[2:]] == [
        (SPEAKERS[1], first[SPEAKERS[1]]["msg_id"])
    ]
    again = (await rows(h, wid))[SPEAKERS[1]]
    assert (again["state"], again["attempts"], again["sent_at"]) == ("sent", 1, first[SPEAKERS[1]]["sent_at"])
    assert any(e["event"] == "delivery.sent" and e.get("republished") for e in log_events)
    assert any(e["event"] == "delivery.unconfirmed" and e["receivers"] == 1 for e in log_events)

    # It says `received` and then nothing more: the next round (twice the wait) publishes again,
    # and the delivery stays `delivered`.
    await confirm(h, wid, SPEAKERS[1], "received")
    await later(h, 2 * TIMEOUT_S * 1.25 + 1)
    assert len(speakers(h).sent) == 4
    again = (await rows(h, wid))[SPEAKERS[1]]
    assert (again["state"], again["attempts"]) == ("delivered", 1)

    await confirm(h, wid, SPEAKERS[1])
    await later(h, 600)
    assert len(speakers(h).sent) == 4
    assert await pending_confirm_jobs(h, wid) == []
    assert {r["state"] for r in (await rows(h, wid)).values()} == {"acknowledged"}


async def test_rounds_wait_while_the_broker_is_away_and_end_at_not_after(
    h: Harness, log_events: list[dict[str, Any]]
) -> None:
    """Nothing is published or given up while the channel is not ready; past not_after it is over."""

    def issued(h: Harness) -> list[dict[str, str]]:
        """Sends of the issue step (an hour brings a re-broadcast too, with its own msg_id)."""
        return [r for r in speakers(h).sent if r["step"] == "issue"]

    wid = await h.issue(warning_body())
    await h.run_until_idle()
    (job,) = await pending_confirm_jobs(h, wid)
    speakers(h).up = False
    await later(h, TIMEOUT_S * 2)
    assert len(issued(h)) == 2
    assert {r["state"] for r in (await rows(h, wid)).values()} == {"sent"}
    (waiting,) = await pending_confirm_jobs(h, wid)
    assert "@" in waiting["key"]  # the round waits, looking again soon

    speakers(h).up = True
    await later(h, 10)
    assert len(issued(h)) == 4  # back: both published again at once
    speakers(h).up = False
    await later(h, 3600)  # past the commands' not_after while the broker is away
    speakers(h).up = True
    await later(h, 10)
    assert len(issued(h)) == 4
    assert not [
        j for j in await pending_confirm_jobs(h, wid) if j["payload"]["chain"] == job["payload"]["chain"]
    ]
    (gave_up,) = [e for e in log_events if e["event"] == "delivery.never_confirmed"]
    assert sorted(gave_up["targets"]) == list(SPEAKERS)
    assert {r["state"] for r in (await rows(h, wid)).values()} == {"sent"}


async def test_a_cancelled_warning_is_not_published_again_but_its_all_clear_is(h: Harness) -> None:
    """Cancel ends the warning's rounds; the all-clear has its own, until the speakers confirm it."""
    wid = await h.issue(warning_body())
    await h.run_until_idle()
    resp = await h.client.post(f"/api/v1/warnings/{wid}/cancel", json={}, headers=h.headers())
    assert resp.status == 202
    await h.run_until_idle()
    assert [r["kind"] for r in speakers(h).sent] == ["warning", "warning", "cancel", "cancel"]
    await confirm(h, wid, SPEAKERS[0], kind="cancel")
    await later(h, TIMEOUT_S * 1.25 + 1)
    assert [(r["kind"], r["target"]) for r in speakers(h).sent[4:]] == [("cancel", SPEAKERS[1])]
