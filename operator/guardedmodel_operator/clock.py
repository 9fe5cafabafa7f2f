"""Time as the operator stores it: timezone-aware UTC datetimes in code, RFC 3339 seconds in the status."""

from __future__ import annotations

import datetime as dt


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def format_time(when: dt.datetime) -> str:
    """The status's time format, e.g. 2026-01-31T12:00:00Z (what Kubernetes writes in conditions)."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> dt.datetime | None:
    """A status time back to a datetime; None when absent or unreadable."""
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
