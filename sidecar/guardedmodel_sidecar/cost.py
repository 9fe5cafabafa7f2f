"""What the model's work costs, per version, at the prices of ``spec.cost``.

Two sources of spend, each counted where it happens:

  compute  Triton's compute time of the version (``guardedmodel_triton_compute_seconds_total``, see
           triton_metrics.py for what it measures exactly), charged at ``gpuHourPrice`` per hour;
  review   review items sent to people (spooled for the webhook), charged at ``reviewPrice`` each.
           Items the ``maxFraction`` cap keeps back, that a full spool refuses, or that have no webhook
           to go to reach nobody and cost nothing.

``guardedmodel_cost_total{source}`` accumulates money at the price in force when the work was seen,
so a price edit changes what comes after it, never what was spent before. The compute charge is the
increase of Triton's counter since the previous read; the first read of a process covers Triton's
work since Triton started (in a pod both start together), so with a price that never changed the
compute cost is exactly compute seconds / 3600 x gpuHourPrice. A Triton restart resets its counter:
the new count is charged in full and the cost keeps growing, as a counter must.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from guardedmodel_sidecar.config_values import ConfigError

COMPUTE = "compute"
REVIEW = "review"
DEFAULT_CURRENCY = "USD"


@dataclass(frozen=True)
class Prices:
    currency: str = DEFAULT_CURRENCY
    gpu_hour: float = 0.0  # per hour of Triton compute time
    review: float = 0.0  # per review item sent to people


def parse_cost(value: Any, where: str = "spec.cost") -> Prices | None:
    """``spec.cost`` -> Prices; None when the spec sets no cost. Pure."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"{where}: give a mapping such as {{currency: USD, gpuHourPrice: 2.5, reviewPrice: 0.08}}"
        )
    currency = value.get("currency", DEFAULT_CURRENCY)
    if not isinstance(currency, str) or not currency.strip():
        raise ConfigError(f"{where}.currency: {currency!r} must be a currency code such as USD")
    return Prices(currency.strip(), _price(value, "gpuHourPrice", where), _price(value, "reviewPrice", where))


def _price(value: Mapping[str, Any], key: str, where: str) -> float:
    raw = value.get(key, 0)
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw) or raw < 0:
        raise ConfigError(f"{where}.{key}: {raw!r} must be a non-negative number such as 2.5")
    return float(raw)


class CostLedger:
    """Money spent per (version, source) and review items sent per version, in one process."""

    def __init__(self, prices: Prices | None = None) -> None:
        self.prices = prices
        self.money: dict[tuple[str, str], float] = {}
        self.reviews: dict[str, int] = {}  # version -> review items sent to people
        self._compute_seen: dict[str, float] = {}  # version -> Triton's compute seconds at the last read

    def set_prices(self, prices: Prices | None) -> None:
        self.prices = prices

    def observe_compute(self, compute_seconds: Mapping[str, float]) -> None:
        """Triton's cumulative compute seconds per version, as just read."""
        for version, seconds in compute_seconds.items():
            last = self._compute_seen.get(version, 0.0)
            spent = seconds - last if seconds >= last else seconds  # lower: Triton restarted
            self._compute_seen[version] = seconds
            if self.prices is not None:
                self._add(version, COMPUTE, spent / 3600.0 * self.prices.gpu_hour)

    def count_review(self, version: str) -> None:
        """One review item of ``version`` went to people."""
        self.reviews[version] = self.reviews.get(version, 0) + 1
        if self.prices is not None:
            self._add(version, REVIEW, self.prices.review)

    def _add(self, version: str, source: str, amount: float) -> None:
        key = (version, source)
        self.money[key] = self.money.get(key, 0.0) + amount
        other = (version, REVIEW if source == COMPUTE else COMPUTE)
        self.money.setdefault(other, 0.0)  # both sources of a charged version, so sums never miss one
