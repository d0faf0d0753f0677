"""JSON from untrusted bytes with its nesting bounded before it is parsed.

`json.loads` recurses once per level: 100,000 nested brackets raise RecursionError from deep
inside the parser (a 500 in the API, a dead message in the MQTT hub), and a structure a few
hundred levels deep still reaches code that walks it recursively. Every JSON a client or a
device sends goes through `loads`, which measures the nesting first, in linear time and without
recursion, and refuses it as a ValueError like any other bad JSON.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

# warnd's deepest document is a warning's polygon (body/area/polygons/ring/point: 5); device
# statuses and acks are flat. 32 leaves room for vendors' extra fields.
MAX_DEPTH = 32

# A JSON string, or an unterminated one running to the end: either way consumed in one pass,
# so a body of unbalanced quotes costs no rescanning.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


class JsonDepthError(ValueError):
    """JSON nested deeper than the limit."""


def depth(text: str) -> int:
    """How deep brackets nest in a JSON text, counting none inside strings."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def loads(raw: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """`json.loads` that refuses nesting past `max_depth`; ValueError for anything it cannot take."""
    # Decoded as json.loads would (UTF-8, -16 or -32 by the first bytes) so the count sees the text.
    text = raw.decode(json.detect_encoding(raw), "surrogatepass") if isinstance(raw, bytes) else raw
    # Nesting never exceeds the count of opening brackets: a device's flat ack (one or two) skips
    # the scan, which cost as much as the parse itself on 10,000 acks a second.
    if text.count("{") + text.count("[") > max_depth and depth(text) > max_depth:
        raise JsonDepthError(f"JSON nests deeper than {max_depth} levels")
    return json.loads(text)
