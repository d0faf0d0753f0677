"""The MQTT contract's topics, version 1: every topic warnd and its devices use, with QoS and retain.

This module is the contract's one source (docs/mqtt.md § Topics is its description, checked
against `CONTRACT` by tests/test_mqtt_contract.py): warnd's adapters and device hub, the
simulator and the test terminals build and parse topics here, never with their own f-strings.

| topic | from → to | QoS | retained | payload (docs/schemas/) |
| --- | --- | --- | --- | --- |
| `warnd/v1/village/{village_code}/speaker` | warnd → a village's speakers | 1 | no | command |
| `warnd/v1/device/{device_id}/cmd` | warnd → one device | 1 | no | command |
| `warnd/v1/device/{device_id}/ack` | device → warnd | 1 | no | ack |
| `warnd/v1/device/{device_id}/status` | device → warnd | 1 | yes | status, also the last will |

CAP feeds over MQTT use topics the operator configures (`[[feed]] topic`), on a connection of
their own whose client id is `feeds_client_id(mqtt.client_id)`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The major version is in the topic: a change that breaks a v1 terminal gets `warnd/v2/…`.
ROOT = "warnd/v1"
# QoS 1 everywhere: at-least-once on the wire; msg_id makes it effectively once at the terminal.
QOS = 1
# Commands and acks are events: retained, one would be replayed to every terminal that connects.
COMMAND_RETAIN = False
ACK_RETAIN = False
# A status is a device's state: retained, so whoever subscribes learns it at once.
STATUS_RETAIN = True

# A device's topics end in one of these.
CMD, ACK, STATUS = "cmd", "ack", "status"
# What a village command carries as its `ack_topic`: each speaker puts its own id in the place.
DEVICE_ID_PLACEHOLDER = "{device_id}"
# A feeds connection's client id is warnd's with this suffix: both connect to one broker.
FEEDS_CLIENT_SUFFIX = "-feeds"


@dataclass(frozen=True)
class Topic:
    """One row of the contract's topic table.

    Args:
        pattern: the topic with `{village_code}` or `{device_id}` in place, as docs/mqtt.md writes it.
        publisher: who publishes on it, `warnd` or `device`.
        retain: whether what is published on it is retained.
        schema: the docs/schemas/ file its payloads follow, without `.json`.
        qos: the QoS of its publishes and subscriptions.
    """

    pattern: str
    publisher: str
    retain: bool
    schema: str
    qos: int = QOS

    def filter(self) -> str:
        """The topic filter that matches every topic of this row (each placeholder a `+`)."""
        return "/".join("+" if level.startswith("{") else level for level in self.pattern.split("/"))


VILLAGE_SPEAKERS = Topic(f"{ROOT}/village/{{village_code}}/speaker", "warnd", COMMAND_RETAIN, "command")
DEVICE_CMD = Topic(f"{ROOT}/device/{DEVICE_ID_PLACEHOLDER}/{CMD}", "warnd", COMMAND_RETAIN, "command")
DEVICE_ACK = Topic(f"{ROOT}/device/{DEVICE_ID_PLACEHOLDER}/{ACK}", "device", ACK_RETAIN, "ack")
DEVICE_STATUS = Topic(f"{ROOT}/device/{DEVICE_ID_PLACEHOLDER}/{STATUS}", "device", STATUS_RETAIN, "status")
# The whole table, in docs/mqtt.md's order.
CONTRACT = (VILLAGE_SPEAKERS, DEVICE_CMD, DEVICE_ACK, DEVICE_STATUS)

# What warnd subscribes to (and, with an ACL, may read) and publishes on (may write).
ACK_FILTER = DEVICE_ACK.filter()
STATUS_FILTER = DEVICE_STATUS.filter()
WARND_READS = tuple(t.filter() for t in CONTRACT if t.publisher == "device")
WARND_WRITES = tuple(t.filter() for t in CONTRACT if t.publisher == "warnd")
# A village command's `ack_topic`, literally: the placeholder is for each speaker to fill in.
VILLAGE_ACK_TOPIC = DEVICE_ACK.pattern


def village_speakers(village_code: str) -> str:
    """`warnd/v1/village/{code}/speaker`: every speaker of a village listens here."""
    return VILLAGE_SPEAKERS.pattern.replace("{village_code}", village_code)


def device_cmd(device_id: str) -> str:
    """`warnd/v1/device/{id}/cmd`: commands for one device."""
    return DEVICE_CMD.pattern.replace(DEVICE_ID_PLACEHOLDER, device_id)


def device_ack(device_id: str) -> str:
    """`warnd/v1/device/{id}/ack`: where one device acknowledges (a per-device command's `ack_topic`)."""
    return DEVICE_ACK.pattern.replace(DEVICE_ID_PLACEHOLDER, device_id)


def device_status(device_id: str) -> str:
    """`warnd/v1/device/{id}/status`: one device's retained status and last will."""
    return DEVICE_STATUS.pattern.replace(DEVICE_ID_PLACEHOLDER, device_id)


def ack_topic_for(ack_topic: str | None, device_id: str) -> str:
    """Where a device acks a command: its `ack_topic` with the placeholder filled, else its own."""
    return (ack_topic or VILLAGE_ACK_TOPIC).replace(DEVICE_ID_PLACEHOLDER, device_id)


def parse_village(topic: str) -> str | None:
    """The village code of `warnd/v1/village/{code}/speaker`; None for any other topic."""
    prefix, suffix = f"{ROOT}/village/", "/speaker"
    if not topic.startswith(prefix) or not topic.endswith(suffix):
        return None
    code = topic[len(prefix) : -len(suffix)]
    return code if code and "/" not in code else None


def parse_device(topic: str) -> tuple[str, str] | None:
    """(device id, leaf) of `warnd/v1/device/{id}/{leaf}`; None for any other topic."""
    prefix = f"{ROOT}/device/"
    if not topic.startswith(prefix):
        return None
    device_id, sep, leaf = topic[len(prefix) :].partition("/")
    if not sep or not device_id or leaf not in (CMD, ACK, STATUS):
        return None
    return device_id, leaf


def feeds_client_id(client_id: str) -> str:
    """The client id of the CAP feeds' connection, beside warnd's own `client_id`."""
    return f"{client_id}{FEEDS_CLIENT_SUFFIX}"


def matches(topic: list[str], topic_filter: list[str]) -> bool:
    """Whether topic levels match filter levels (`+` one level, `#` the rest), as a broker judges."""
    for i, level in enumerate(topic_filter):
        if level == "#":
            return True
        if i >= len(topic) or (level != "+" and level != topic[i]):
            return False
    return len(topic) == len(topic_filter)


def filter_pattern(topic_filter: list[str]) -> re.Pattern[str]:
    """A regular expression matching a whole topic exactly when `matches` would (one C call per topic)."""
    levels = ["[^/]*" if level == "+" else re.escape(level) for level in topic_filter]
    if topic_filter[-1:] == ["#"]:
        # `a/#` matches `a` too (the parent level), as `matches` and brokers do.
        head = "/".join(levels[:-1])
        return re.compile(f"{head}(?:/.*)?" if head else ".*", re.DOTALL)
    return re.compile("/".join(levels), re.DOTALL)
