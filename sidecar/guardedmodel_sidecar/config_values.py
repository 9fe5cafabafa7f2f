"""Reading single values of the sidecar config: the error type, durations, fractions, sections."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any


class ConfigError(ValueError):
    """The sidecar configuration is invalid; the message names the key and what to change."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def parse_duration(value: Any, key: str) -> float:
    """Seconds from 30, "30s", "5m", "1h", "500ms"."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ConfigError(f"{key}: {value!r} is not a duration (examples: 30s, 5m, 1h)")
    number = float(match.group(1))
    return number * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}[match.group(2)]


def section(data: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = data.get(key) or {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}{key}: must be a mapping, got {type(value).__name__}")
    return value


def optional_float(data: Mapping[str, Any], key: str, where: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}{key}: {value!r} is not a number") from None


def fraction(value: Any, key: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: {value!r} is not a number") from None
    if not 0.0 <= number <= 1.0:
        raise ConfigError(f"{key}: {number} must be between 0 and 1")
    return number
