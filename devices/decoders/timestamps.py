"""Device timestamps to UTC: epoch seconds, milliseconds or microseconds, and ISO 8601 with or without offset."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo

from devices.decoders.errors import DecodeError

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Epoch values are told apart by magnitude: seconds stay below 1e11 until the year 5138, milliseconds below
# 1e14 and microseconds below 1e17 for as long.
_MS_FROM = 1e11
_US_FROM = 1e14
_NS_FROM = 1e17


def from_epoch(value: float) -> datetime:
    """An epoch number in s, ms, µs or ns (told apart by magnitude) as a UTC datetime."""
    if value != value or value < 0 or value >= 1e20:  # NaN, negative or absurd
        raise DecodeError(f"timestamp {value!r} is not a plausible epoch time")
    if value < _MS_FROM:
        return datetime.fromtimestamp(value, UTC)  # the common case, done in C
    if value >= _NS_FROM:
        seconds = value / 1e9
    elif value >= _US_FROM:
        seconds = value / 1e6
    elif value >= _MS_FROM:
        seconds = value / 1e3
    else:
        seconds = value
    return _EPOCH + timedelta(seconds=seconds)


def from_iso(text: str, local_zone: tzinfo = UTC) -> datetime:
    """An ISO 8601 time as UTC; a time without offset is read in ``local_zone`` (UTC unless the device says)."""
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise DecodeError(f"timestamp {text[:64]!r} is not ISO 8601") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=local_zone)
    return parsed.astimezone(UTC)


def parse_time(value: object, local_zone: tzinfo = UTC) -> datetime:
    """A timestamp as a device sent it (number or string) as a UTC datetime."""
    if isinstance(value, bool):
        raise DecodeError("timestamp must be a number or an ISO 8601 string, not a boolean")
    if isinstance(value, int | float):
        return from_epoch(float(value))
    if isinstance(value, str):
        stripped = value.strip()
        try:
            return from_epoch(float(stripped))
        except ValueError:
            return from_iso(stripped, local_zone)
    raise DecodeError(f"timestamp must be a number or an ISO 8601 string, not {type(value).__name__}")
