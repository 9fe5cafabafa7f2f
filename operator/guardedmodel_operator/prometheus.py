"""The operator's Prometheus client and its settings, shared by canary analysis and the scaler.

Both read series the sidecars export, picked per GuardedModel by two target labels
Prometheus adds at scrape time: its namespace and its name. With the usual Kubernetes
pod scrape config (`labelmap: __meta_kubernetes_pod_label_(.+)`) the pods'
`guardedmodel.io/name` label becomes `guardedmodel_io_name`, and the namespace is
relabelled to `namespace`; both label names are configurable.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from .config import OperatorConfig


class MetricsUnavailable(Exception):
    """Prometheus could not answer; the message says what to check."""


@dataclass(frozen=True)
class PrometheusSettings:
    url: str
    namespace_label: str = "namespace"
    name_label: str = "guardedmodel_io_name"
    timeout_s: float = 10.0
    # increase() needs at least two scrapes inside the window: a window shorter
    # than twice the scrape interval would see no data at all.
    min_window_s: float = 60.0


def settings_from(config: OperatorConfig) -> PrometheusSettings | None:
    """The operator's settings, or None without a prometheusUrl (then nothing reads metrics)."""
    if not config.prometheus_url:
        return None
    return PrometheusSettings(
        url=config.prometheus_url,
        namespace_label=config.prometheus_namespace_label,
        name_label=config.prometheus_name_label,
        timeout_s=config.prometheus_timeout_s,
        min_window_s=config.rollout_min_window_s,
    )


def quote(value: str) -> str:
    """A label value as a PromQL string literal's contents."""
    return value.replace("\\", "\\\\").replace('"', '\\"')


def selector(settings: PrometheusSettings, namespace: str, name: str) -> str:
    """The label matchers that pick one GuardedModel's series."""
    return f'{settings.namespace_label}="{quote(namespace)}",{settings.name_label}="{quote(name)}"'


def model_range(settings: PrometheusSettings, namespace: str, name: str, window_s: float) -> tuple[str, str]:
    """One GuardedModel's label matchers and the range to look back over, in whole seconds rounded up
    (so the window is never shorter than asked), as every query of the controllers needs them."""
    return selector(settings, namespace, name), f"{math.ceil(window_s)}s"


def increase_counting_new(metric: str, sel: str, window: str) -> str:
    """How much a counter rose over `window`, per series. increase() cannot see a series' first
    value, so a series born inside the window (a new pod, an error or a comparison counted for the
    first time, a replay finished between two scrapes) counts whole."""
    return f"({metric}{{{sel}}} unless {metric}{{{sel}}} offset {window}) or increase({metric}{{{sel}}}[{window}])"


class PrometheusSource:
    """Instant queries against one Prometheus; one HTTP session for all models."""

    def __init__(self, settings: PrometheusSettings, session: aiohttp.ClientSession | None = None) -> None:
        self.settings = settings
        self._session = session
        self._owns_session = session is None

    async def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout_s)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
            self._session = None

    def window_s(self, interval_s: float) -> float:
        return max(interval_s, self.settings.min_window_s)

    async def query(self, promql: str) -> list[dict[str, Any]]:
        session = await self._get_session()
        url = self.settings.url.rstrip("/") + "/api/v1/query"
        try:
            async with session.get(url, params={"query": promql}) as response:
                text = await response.text()
                try:
                    body = await response.json(content_type=None)
                except ValueError:
                    body = None
        except (aiohttp.ClientError, TimeoutError) as error:
            raise MetricsUnavailable(
                f"Prometheus at {self.settings.url} did not answer ({type(error).__name__}: {error}); "
                "check the operator's prometheusUrl"
            ) from error
        if not isinstance(body, dict) or body.get("status") != "success":
            detail = body.get("error") if isinstance(body, dict) else text[:200]
            raise MetricsUnavailable(
                f"Prometheus at {self.settings.url} refused {promql!r} (HTTP {response.status}): {detail}"
            )
        problem = vector_problem(body)
        if problem is not None:
            raise MetricsUnavailable(
                f"Prometheus at {self.settings.url} answered {promql!r} with no readable vector "
                f"(HTTP {response.status}): {problem}"
            )
        return list(body["data"]["result"])

    async def query_all(self, promql: Mapping[str, str]) -> dict[str, list[dict[str, Any]]]:
        """Several queries at once, by name. One failure fails them all (a check must not decide on
        part of its figures) and cancels the rest, so they do not hold connections until timed out."""
        tasks = {name: asyncio.ensure_future(self.query(q)) for name, q in promql.items()}
        try:
            await asyncio.gather(*tasks.values())
        except BaseException:
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
            raise
        return {name: task.result() for name, task in tasks.items()}


def vector_problem(body: Mapping[str, Any]) -> str | None:
    """What makes a successful answer unusable as an instant vector (each sample a label set and a
    [time, "number"] pair), or None. A malformed answer must hold a check, not crash it."""
    data = body.get("data")
    result = data.get("result") if isinstance(data, Mapping) else None
    if not isinstance(result, list):
        return f"data.result is {type(result).__name__}, not a list"
    for item in result:
        if not isinstance(item, Mapping) or not isinstance(item.get("metric"), Mapping):
            return f"a sample without labels: {str(item)[:100]}"
        value = item.get("value")
        if not isinstance(value, list) or len(value) != 2:
            return f"a sample without a [time, value] pair: {str(item)[:100]}"
        try:
            float(value[1])
        except (TypeError, ValueError):
            return f"a sample whose value is not a number: {str(item)[:100]}"
    return None
