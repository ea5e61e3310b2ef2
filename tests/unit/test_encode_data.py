"""encode_data writes the same bytes as json.dumps(to_json_value(...)), the encoding events were always
published with, for every kind of value a payload can hold, and fails the same way where that failed."""

from __future__ import annotations

import json
import random
import uuid
from datetime import datetime, time, timedelta, timezone
from decimal import Decimal
from types import MappingProxyType
from typing import Any

import pytest

from bridge.changes import UNKNOWN
from bridge.errors import TranslationError
from bridge.events import encode_data, format_time, to_json_value


def reference(data: Any) -> bytes:
    return json.dumps(to_json_value(data, "data"), separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


TEXTS = ["", "plain", "Grüße, 東京 🍣", 'quote " backslash \\ slash /', "tab\tnewline\ncontrol\x01\x1f", "\u2028\u2029",
         "a" * 300]
DECIMALS = ["0", "-0.00", "12.50", "1E+2", "1e-7", "123456789012345678901234567890.123", "NaN", "-Infinity"]
FLOATS = [0.0, -0.0, 1.5, 1e16, 1e-7, 123456789.123456789, -2.5e-300, 3.0]
INTS = [0, -1, 7, 2**31, -(2**63), 10**40]


def scalar(rng: random.Random) -> Any:
    zone = timezone(timedelta(hours=rng.choice([0, 1, -5, 5.5])))
    moment = datetime(2024, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=rng.randrange(10**8),
                                                                    microseconds=rng.choice([0, 1, 999999]))
    return rng.choice([
        None, True, False, rng.choice(INTS), rng.choice(FLOATS), rng.choice(TEXTS), Decimal(rng.choice(DECIMALS)),
        moment.astimezone(zone), moment.replace(tzinfo=None), moment.date(), time(12, 30, 1, rng.choice([0, 5])),
        uuid.UUID(int=rng.getrandbits(128)), bytes(rng.getrandbits(8) for _ in range(rng.randrange(5))),
    ])


def value(rng: random.Random, depth: int) -> Any:
    kind = rng.random() if depth < 3 else 1.0
    if kind < 0.15:
        return [value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind < 0.2:
        return tuple(value(rng, depth + 1) for _ in range(rng.randrange(3)))
    if kind < 0.3:
        return {rng.choice(TEXTS[:4]) + str(i): value(rng, depth + 1) for i in range(rng.randrange(4))}
    if kind < 0.33:
        return MappingProxyType({"k": value(rng, depth + 1)})
    return scalar(rng)


@pytest.mark.parametrize("seed", range(20))
def test_the_same_bytes_as_the_reference_for_every_kind_of_value(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(200):
        data = {f"field{i}": value(rng, 0) for i in range(rng.randrange(1, 8))}
        assert encode_data(data) == reference(data), data


def test_a_value_that_cannot_be_published_fails_as_before_naming_where_it_is() -> None:
    unknown = {"lines": [{"price": Decimal("1")}, {"price": UNKNOWN}]}
    with pytest.raises(TranslationError, match=r"^data\.lines\[1\]\.price is unknown"):
        encode_data(unknown)
    with pytest.raises(TranslationError, match=r"data\.tags: cannot put a set into an event"):
        encode_data({"tags": {"a"}})
    with pytest.raises(ValueError):
        encode_data({"ratio": float("nan")})
    with pytest.raises(UnicodeEncodeError):
        encode_data({"text": "\ud800"})  # a lone surrogate is no UTF-8, as before


def strftime_time(moment: datetime) -> str:
    """format_time as it was written before: strftime, the reference."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_format_time_spells_every_moment_as_strftime_did() -> None:
    rng = random.Random(7)
    zones = [timezone.utc, timezone(timedelta(0)), timezone(timedelta(hours=2)), timezone(timedelta(hours=-9, minutes=-30))]
    moments = [datetime(year, 6, 15, 3, 4, 5, micro, tzinfo=zone)
               for year in (2, 999, 1000, 1970, 2024, 9998) for micro in (0, 7, 999999) for zone in zones]
    moments += [datetime(1, 1, 1, tzinfo=timezone.utc), datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc)]
    moments += [datetime(2000, 1, 1, tzinfo=rng.choice(zones)) + timedelta(microseconds=rng.getrandbits(50))
                for _ in range(2000)]
    for moment in moments:
        assert format_time(moment) == strftime_time(moment), moment
    with pytest.raises(ValueError, match="must be timezone-aware"):
        format_time(datetime(2024, 1, 1))
